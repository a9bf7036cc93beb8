"""OnePiece retrieval on any dataset in RecBole's atomic files (``NAME.inter`` [+ ``.item``,
``.user``]; data/readers/atomic.py): the MovieLens-100K recipe (``ml100k_onepiece.py``) with one
behaviour level, so the preference anchors are the 30 items most interacted with over the 7 days
before the example's day. Whole-catalogue U2I/BCE negatives suit catalogues up to some tens of
thousands of items; beyond that switch to sampled ones (``--config.loss.negatives.catalogue=False
--config.loss.negatives.uniform=100 --config.loss.negatives.in_batch=True``). Without timestamps
(file order only) the anchors are the same for every example: add ``--config.model.use_pa=False``.

    onepiece train --config configs/atomic_onepiece.py --workdir runs/mydata \
        --config.dataset.path=PATH/NAME.inter
"""

from pathlib import Path

from onepiece_jax.config import load_config


def get_config():
    c = load_config(Path(__file__).with_name("ml100k_onepiece.py"))
    c.dataset.name = "atomic"
    c.context.pa_groups = ("interact",)
    c.context.pa_group_size = 30
    return c
