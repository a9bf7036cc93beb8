"""OnePiece ranking on JDsearch personalized product search (real queries; click → cart → order).

Each line's test search is a request: its real query is the query token, its candidate list with
labels 0-3 is the CIS, grouped at random into groups of C=12; anchors are the query's top items
per behaviour level before the request. Split by request time.

    onepiece train --config configs/jdsearch_ranking.py --workdir runs/jdsearch_ranking \
        --config.dataset.path=PATH/jdsearch
"""

from onepiece_jax.config import base_config


def get_config():
    c = base_config()
    c.dataset.name = "jdsearch"
    c.mode = "ranking"
    c.tasks = ("click", "cart", "order")
    c.context.ih_max_len = 50
    c.context.pa_key = "query"
    c.context.pa_groups = ("order", "cart", "click")
    c.context.pa_group_size = 10
    c.context.pa_window_seconds = 30 * 86400
    c.context.num_candidates = 12
    c.context.max_candidates = 240
    c.model.reasoning_steps = 3
    # lecun_normal dense kernels: at N(0, 0.02²) an adapter shrinks an item's features to ~2% of
    # their scale, below the position rows added to them, and the ranker learns little beyond
    # brand and shop quality within its few hundred steps (docs/results, "Initialisation")
    c.model.dense_init = "lecun_normal"
    c.train.batch_size = 64
    c.train.early_stop_metric = "click/AUC"
    c.eval.batch_size = 128
    return c
