"""SASRec baseline on MovieLens-100K, in-framework: causal item-id history, last-position readout,
full-softmax next-item cross-entropy (RecBole's SASRec recipe: d=64, 2 layers, 2 heads, dropout
0.5, max length 50).

    onepiece train --config configs/ml100k_sasrec.py --workdir runs/ml100k_sasrec \
        --config.dataset.path=data/ml-100k
"""

from onepiece_jax.config import base_config
from onepiece_jax.model.config import baseline_overrides


def get_config():
    c = base_config()
    c.dataset.name = "ml100k"
    c.mode = "retrieval"
    c.tasks = ("next",)
    c.model.update(baseline_overrides("sasrec"))
    c.model.num_heads = 2
    c.model.dropout = 0.5
    c.loss.kind = "next_item_softmax"
    c.loss.strategy = "single"
    c.train.epochs = 40
    c.train.early_stop_patience = 5
    return c
