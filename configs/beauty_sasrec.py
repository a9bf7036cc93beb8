"""SASRec baseline on Amazon Beauty, in-framework (full-softmax next-item cross-entropy).

    onepiece train --config configs/beauty_sasrec.py --workdir runs/beauty_sasrec \
        --config.dataset.path=PATH/Beauty.txt
"""

from onepiece_jax.config import base_config
from onepiece_jax.model.config import baseline_overrides


def get_config():
    c = base_config()
    c.dataset.name = "amazon"
    c.mode = "retrieval"
    c.tasks = ("next",)
    c.model.update(baseline_overrides("sasrec"))
    c.model.num_heads = 2
    c.model.dropout = 0.5
    c.loss.kind = "next_item_softmax"
    c.loss.strategy = "single"
    c.train.epochs = 20
    return c
