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
    # lecun_normal dense kernels: at N(0, 0.02) the adapters shrink each item token to ~0.1 of
    # its features' scale and the ranker learns little beyond brand and shop quality within its
    # few hundred steps (docs/results, "Initialisation")
    c.model.dense_init = "lecun_normal"
    c.train.batch_size = 64
    c.train.early_stop_metric = "buy/AUC"
    c.eval.batch_size = 128
    return c
