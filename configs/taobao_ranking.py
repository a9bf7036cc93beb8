"""OnePiece ranking on Taobao UserBehavior (pv → cart/fav → buy), one request per user-day.

Taobao logs have no impressions: each user-day session after the first becomes a request whose
candidates are the items the user touched that day (labelled with the strongest behaviour) plus
uniformly drawn untouched items (label 0), grouped at random into groups of C=12. Anchors: the
global top items per behaviour over the 7 days before the request's day. Time split by request.

    onepiece train --config configs/taobao_ranking.py --workdir runs/taobao_ranking \
        --config.dataset.path=PATH/UserBehavior.csv
"""

from onepiece_jax.config import base_config


def get_config():
    c = base_config()
    c.dataset.name = "taobao"
    c.dataset.session_seconds = 86400
    c.dataset.session_negatives = 24
    c.mode = "ranking"
    c.tasks = ("pv", "cart/fav", "buy")
    c.context.ih_max_len = 50
    c.context.pa_groups = ("buy", "cart/fav", "pv")
    c.context.pa_group_size = 10
    c.context.num_candidates = 12
    c.context.max_candidates = 240
    c.model.reasoning_steps = 3
    # dense_init stays normal_0.02: on the 43-user slice lecun_normal (which the synthetic ranking
    # config uses) lowered every ranking_strategy variant's mean best validation buy AUC
    # (0.52-0.59 against 0.61-0.73; docs/results). Try it on a larger Taobao sample.
    c.train.batch_size = 64
    c.train.early_stop_metric = "buy/AUC"
    c.eval.batch_size = 128
    return c
