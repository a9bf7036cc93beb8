"""OnePiece ranking on the synthetic search logs (JDsearch format; click → cart → order).

The logs come from ``onepiece data synth`` and are read by the ``jdsearch`` reader. Each user's
last search is a request: its query is the query token, its candidate list (at most
``SynthConfig.candidates`` = 20 distinct items, padded to 24) with labels 0-3 is the CIS,
grouped at random into groups of C=12; anchors are the query's top items per behaviour level over
the 30 days before the request's day. Split by request time; K=3 progressive steps, one task each
(click → cart → order).

    onepiece data synth --out data/synthetic_search --users 100000 --items 100000
    onepiece train --config configs/synthetic_search_ranking.py \
        --workdir runs/synthetic_search_ranking --config.dataset.path=data/synthetic_search
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
    c.context.max_candidates = 24  # the generator shows at most 20 distinct candidates
    c.model.reasoning_steps = 3
    c.train.batch_size = 256
    c.train.early_stop_metric = "click/AUC"
    c.eval.batch_size = 512
    return c
