"""Summary statistics of an EventLog, as one JSON-serialisable dict (``onepiece data stats``).

The numbers are the ones a reader of a paper table checks first (users, items, events, funnel
counts, sequence lengths), so a wrong reader shows up here before it reaches a model.
"""

from __future__ import annotations

import numpy as np

from onepiece_jax.data.events import EventLog

QUANTILES = (0, 25, 50, 75, 90, 99, 100)


def dataset_stats(log: EventLog) -> dict:
    """Counts, funnel, per-user sequence-length quantiles and feature vocabularies of ``log``.

    ``seq_len_quantiles`` covers users with at least one event (catalogue-only users, e.g. a
    user file row nobody rated for, would only add zeros); quantiles use linear interpolation.
    """
    per_user = np.bincount(log.user, minlength=log.num_users + 1)[1:]
    per_user = per_user[per_user > 0]
    levels = np.bincount(log.behavior.astype(np.int64), minlength=len(log.behaviors) + 1)[1:]
    stats: dict = {
        "dataset": log.dataset,
        "users": log.num_users,
        "items": log.num_items,
        "events": log.num_events,
        "behaviors": {name: int(n) for name, n in zip(log.behaviors, levels, strict=True)},
        "raw_behaviors": dict(log.raw_behavior_counts),
        "has_timestamps": bool(log.has_timestamps),
        "time_range": [int(log.time.min()), int(log.time.max())] if log.num_events else None,
        "seq_len_quantiles": {
            f"p{q}": float(v) for q, v in zip(
                QUANTILES, np.percentile(per_user, QUANTILES) if per_user.size
                else [0.0] * len(QUANTILES), strict=True)},
        "queries": log.num_queries,
        "events_with_query": int((log.query > 0).sum()),
        "requests": 0 if log.requests is None else len(log.requests),
        "skipped": dict(log.skipped),
        "features": {kind: {name: {"vocab_size": t.vocab_size, "width": t.width}
                            for name, t in tables.items()}
                     for kind, tables in (("item", log.item_features),
                                          ("user", log.user_features),
                                          ("query", log.query_features))},
    }
    if log.requests is not None:
        labels = np.bincount(log.requests.cand_label.astype(np.int64),
                             minlength=len(log.behaviors) + 1)
        stats["candidates"] = int(log.requests.cand_item.size)
        stats["candidate_labels"] = {name: int(n) for name, n in
                                     zip(("impression", *log.behaviors), labels, strict=False)}
    return stats
