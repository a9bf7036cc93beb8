"""OnePiece retrieval on the synthetic search logs (JDsearch format), leave-one-out over history.

The logs come from ``onepiece data synth`` and are read by the ``jdsearch`` reader. Every history
behaviour (click, cart, order) is a sequential event; per user the last event is the test target,
the second-to-last the validation target and every earlier one a training target. The query of
the target's session (0 for feed sessions) is the query token; anchors are that query's top items
per behaviour level over the 30 days before the example's day.

Curriculum, broad → precise (K=3 progressive, one task per step): step 1 "items clicked in the
next W=5 interactions" (every history event is at least a click), step 2 "items carted or ordered
in the next W" (intent), step 3 "the exact next item" (served, full-catalogue ranking).

    onepiece data synth --out data/synthetic_search --users 100000 --items 100000
    onepiece train --config configs/synthetic_search_retrieval.py \
        --workdir runs/synthetic_search_retrieval --config.dataset.path=data/synthetic_search
"""

from onepiece_jax.config import base_config


def get_config():
    c = base_config()
    c.dataset.name = "jdsearch"
    c.mode = "retrieval"
    c.tasks = ("click", "cart", "next")
    c.context.ih_max_len = 50
    c.context.pa_key = "query"
    c.context.pa_groups = ("order", "cart", "click")
    c.context.pa_group_size = 10
    c.context.pa_window_seconds = 30 * 86400
    c.context.pool_window = 5
    c.context.train_fraction = 1.0  # < 1: a nested user subset trains (data-scaling curves)
    c.model.reasoning_steps = 3
    c.train.batch_size = 256
    c.train.early_stop_metric = "NDCG@10"
    c.eval.batch_size = 512
    return c
