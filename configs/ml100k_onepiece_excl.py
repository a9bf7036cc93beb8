"""OnePiece on MovieLens-100K trained for the history-excluded protocol (HSTU's, our default).

``ml100k_onepiece.py`` with ``loss.negatives.exclude_history=True``: the items of an example's
history are not negatives, since the history-excluded evaluation never ranks them. Selected on
validation (best NDCG@10 higher in every seed, 0.1323 ± 0.0043 against 0.1216 ± 0.0010); test
NDCG@10 0.1219 ± 0.0051 excl. against 0.1099 ± 0.0027, but 0.0594 ± 0.0041 incl. against
0.0612 ± 0.0028, since the model no longer learns to push down what the user has seen
(seeds 0-2, 5 epochs; docs/results/movielens.md, "History items as negatives").

    onepiece train --config configs/ml100k_onepiece_excl.py \
        --workdir runs/ml100k_onepiece_excl --config.dataset.path=data/ml-100k
"""

from pathlib import Path

from onepiece_jax.config import load_config


def get_config():
    return load_config(Path(__file__).with_name("ml100k_onepiece.py"),
                       ["--config.loss.negatives.exclude_history=True"])
