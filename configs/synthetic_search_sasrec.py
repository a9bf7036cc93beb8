"""SASRec baseline on the synthetic search logs, in-framework (causal item-id history, full-softmax
next-item cross-entropy), on the leave-one-out splits of ``synthetic_search_retrieval.py``.

    onepiece data synth --out data/synthetic_search --users 100000 --items 100000
    onepiece train --config configs/synthetic_search_sasrec.py \
        --workdir runs/synthetic_search_sasrec --config.dataset.path=data/synthetic_search
"""

from pathlib import Path

from onepiece_jax.config import load_config, use_baseline


def get_config():
    c = load_config(Path(__file__).with_name("synthetic_search_retrieval.py"))
    return use_baseline(c, "sasrec")
