"""ReaRec baseline on MovieLens-100K: SASRec-style id history with single-token (M=1) latent
reasoning over K=2 steps with reasoning position embeddings, one next-item task on the last step.

    onepiece train --config configs/ml100k_rearec.py --workdir runs/ml100k_rearec \
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
    c.model.reasoning_steps = 2
    c.model.num_heads = 2
    c.model.dropout = 0.5
    c.loss.kind = "next_item_softmax"
    c.loss.strategy = "single"
    c.train.epochs = 40
    return c
