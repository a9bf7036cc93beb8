"""SASRec baseline on Amazon Beauty, in-framework (full-softmax next-item cross-entropy).

    onepiece train --config configs/beauty_sasrec.py --workdir runs/beauty_sasrec \
        --config.dataset.path=PATH/Beauty.txt
"""

from onepiece_jax.config import base_config, use_baseline


def get_config():
    c = base_config()
    c.dataset.name = "amazon"
    c.train.epochs = 20
    return use_baseline(c, "sasrec")
