"""SASRec baseline on Amazon Beauty, in-framework (full-softmax next-item cross-entropy). It
trains up to 20 epochs with early stopping (patience 5, the cosine schedule over all 20); the
README's figures train 10, ``--config.train.epochs=10``.

    onepiece train --config configs/beauty_sasrec.py --workdir runs/beauty_sasrec \
        --config.dataset.path=PATH/Beauty.txt
"""

from onepiece_jax.config import base_config, use_baseline


def get_config():
    c = base_config()
    c.dataset.name = "amazon"
    c.train.epochs = 20
    return use_baseline(c, "sasrec")
