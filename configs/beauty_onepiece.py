"""OnePiece retrieval on Amazon Beauty (S3-Rec files: order, no timestamps; 5-core).

Leave-one-out with full-catalogue ranking excluding history. Without timestamps the anchors are
the global top items of the training events (every user's events but the last two). Negatives
are MovieLens-100K's: the whole catalogue (12,101 items), temperature 1 — every Beauty result in
docs/results/beauty.md was measured with them.

    onepiece train --config configs/beauty_onepiece.py --workdir runs/beauty_onepiece \
        --config.dataset.path=PATH/Beauty.txt
"""

from onepiece_jax.config import base_config


def get_config():
    c = base_config()
    c.dataset.name = "amazon"
    c.mode = "retrieval"
    c.tasks = ("window", "next")
    c.context.ih_max_len = 50
    c.context.pa_groups = ("interact",)
    c.context.pa_group_size = 30
    c.context.pool_window = 3
    c.model.reasoning_steps = 2
    c.model.dropout = 0.3
    c.loss.eta = 1.0
    c.loss.negatives.update(uniform=0, popular=0, same_category=0, in_batch=False, catalogue=True)
    c.train.epochs = 20
    return c
