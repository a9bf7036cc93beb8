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

from pathlib import Path

from onepiece_jax.config import load_config


def get_config():
    # Same format and recipe as real JDsearch; only the candidate padding and batch sizes differ.
    c = load_config(Path(__file__).with_name("jdsearch_ranking.py"))
    c.context.max_candidates = 24  # the generator shows at most 20 distinct candidates
    c.train.batch_size = 256
    c.eval.batch_size = 512
    return c
