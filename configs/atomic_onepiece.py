"""OnePiece retrieval on any dataset in RecBole's atomic files (``NAME.inter`` [+ ``.item``,
``.user``]; data/readers/atomic.py): the MovieLens-100K recipe (``ml100k_onepiece.py``) with one
behaviour level, so the preference anchors are the 30 items most interacted with over the 7 days
before the example's day. Whole-catalogue U2I/BCE negatives suit catalogues up to some tens of
thousands of items; beyond that switch to sampled ones (``--config.loss.negatives.catalogue=False
--config.loss.negatives.uniform=100 --config.loss.negatives.in_batch=True``). Without timestamps
(file order only) the anchors are the same for every example: add ``--config.model.use_pa=False``.

    onepiece train --config configs/atomic_onepiece.py --workdir runs/mydata \
        --config.dataset.path=PATH/NAME.inter

Columns named otherwise than ``user_id``, ``item_id``, ``timestamp`` (Yelp's items, say):
``--config.dataset.item_field=business_id``, likewise ``user_field`` and ``time_field``.

A funnel from a numeric column (levels ``interact`` → ``rating>=4`` → ``rating>=5``), with
anchors per level as MovieLens' config has them::

    --config.dataset.level_field=rating --config.dataset.level_thresholds=4,5 \
    --config.context.pa_groups=rating>=5,rating>=4,interact --config.context.pa_group_size=10

or from a behaviour column, weak to strong (a level may merge tokens with ``/``)::

    --config.dataset.level_field=behavior --config.dataset.level_tokens=pv,cart/fav,buy \
    --config.context.pa_groups=buy,cart/fav,pv --config.context.pa_group_size=10
"""

from pathlib import Path

from onepiece_jax.config import load_config


def get_config():
    c = load_config(Path(__file__).with_name("ml100k_onepiece.py"))
    c.dataset.name = "atomic"
    c.dataset.user_field = "user_id"  # the id and time columns, as RecBole's *_FIELD settings
    c.dataset.item_field = "item_id"
    c.dataset.time_field = "timestamp"
    c.dataset.level_field = ""  # one behaviour level; see the docstring for a funnel
    c.dataset.level_thresholds = ()
    c.dataset.level_tokens = ()
    c.context.pa_groups = ("interact",)
    c.context.pa_group_size = 30
    return c
