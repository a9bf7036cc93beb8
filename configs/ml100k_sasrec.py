"""SASRec baseline on MovieLens-100K, in-framework: causal item-id history, last-position readout,
full-softmax next-item cross-entropy (RecBole's SASRec recipe: d=64, 2 layers, 2 heads, dropout
0.5, max length 50). It trains up to 40 epochs with early stopping (patience 5, the cosine
schedule over all 40); the README's figures train 10, ``--config.train.epochs=10``.

    onepiece train --config configs/ml100k_sasrec.py --workdir runs/ml100k_sasrec \
        --config.dataset.path=data/ml-100k
"""

from onepiece_jax.config import base_config, use_baseline


def get_config():
    c = base_config()
    c.dataset.name = "ml100k"
    c.train.epochs = 40
    return use_baseline(c, "sasrec")
