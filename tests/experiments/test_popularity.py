"""The time-aware popularity ranker: exact windowed counts, the evaluator's ranking rules, no
leakage from the example's hour or later, and results shaped like the models'."""

import numpy as np
import pytest

from onepiece_jax.experiments.popularity import (
    BUCKET_SECONDS,
    evaluate_popularity,
    popularity_candidate_scores,
    popularity_ranks,
    popularity_scores,
    windowed_counts,
)
from tests.train.conftest import planted_log, planted_ranking_log, tiny_config, tiny_ranking_config

HOUR = BUCKET_SECONDS


def _brute_scores(times, items, num_items, t, window):
    hour = (t // HOUR) * HOUR
    before = np.bincount(items[times < hour], minlength=num_items + 1)
    recent = np.bincount(items[(times < hour) & (times >= hour - window)],
                         minlength=num_items + 1) if window > 0 else before
    return recent * (before.max() + 1) + before


def _random_events(seed, n=400, num_items=25):
    rng = np.random.default_rng(seed)
    times = rng.integers(0, 50 * HOUR, n).astype(np.int64)
    items = rng.integers(1, num_items + 1, n).astype(np.int32)
    return times, items, num_items


@pytest.mark.parametrize("window", [0, 5 * HOUR])
def test_windowed_counts_equal_brute_force(window):
    times, items, n = _random_events(0)
    bounds = np.array([0, 3 * HOUR, 3 * HOUR + 1, 20 * HOUR, 49 * HOUR])
    for index, recent, before in windowed_counts(times, items, n, bounds, window):
        b = bounds[index]
        assert np.array_equal(before, np.bincount(items[times < b], minlength=n + 1))
        lo = b - window if window > 0 else np.iinfo(np.int64).min
        assert np.array_equal(recent,
                              np.bincount(items[(times < b) & (times >= lo)], minlength=n + 1))


def test_score_orders_by_window_then_all_time():
    recent, before = np.array([0, 2, 2, 1]), np.array([0, 5, 9, 50])
    assert np.argsort(-popularity_scores(recent, before)).tolist() == [2, 1, 3, 0]


@pytest.mark.parametrize("exclude_history", [True, False])
def test_ranks_follow_the_evaluator_rules(exclude_history):
    """Pessimistic ties, history removed except the target itself, items 1..N only."""
    times, items, n = _random_events(1)
    rng = np.random.default_rng(2)
    b = 30
    t = rng.integers(0, 50 * HOUR, b).astype(np.int64)
    target = rng.integers(1, n + 1, b).astype(np.int32)
    exclude = np.zeros((b, 6), np.int32)
    for i in range(b):
        picks = rng.choice(np.arange(1, n + 1), size=rng.integers(0, 6), replace=False)
        exclude[i, :picks.size] = picks
    exclude[0, 0] = target[0]  # a re-consumed target is still ranked
    ranks = popularity_ranks(times, items, n, example_time=t, target=target, exclude=exclude,
                             window=4 * HOUR, timed=True, exclude_history=exclude_history)
    for i in range(b):
        s = _brute_scores(times, items, n, t[i], 4 * HOUR)
        others = [v for v in range(1, n + 1) if v != target[i]
                  and not (exclude_history and v in exclude[i])]
        assert ranks[i] == sum(s[v] >= s[target[i]] for v in others), i


def test_no_event_at_or_after_the_example_hour_counts():
    """An item that only becomes popular from the example's hour on gets no credit."""
    times = np.array([0, HOUR, 10 * HOUR, 10 * HOUR + 5, 11 * HOUR] * 3, np.int64)
    items = np.array([1, 1, 2, 2, 2] * 3, np.int32)
    t = np.array([10 * HOUR + 30], np.int64)
    ranks = {tgt: int(popularity_ranks(times, items, 3, example_time=t,
                                       target=np.array([tgt], np.int32),
                                       exclude=np.zeros((1, 1), np.int32), window=0,
                                       timed=True, exclude_history=True)[0]) for tgt in (1, 2)}
    assert ranks == {1: 0, 2: 2}  # item 2 ties with the never-seen item 3, pessimistically


def test_untimed_logs_count_every_training_event():
    times = np.array([5, 0, 1, 0], np.int64)  # positions in each user's sequence, not a clock
    items = np.array([2, 2, 1, 3], np.int32)
    ranks = popularity_ranks(times, items, 3, example_time=np.array([0, 0], np.int64),
                             target=np.array([2, 1], np.int32), exclude=np.zeros((2, 1), np.int32),
                             window=86_400, timed=False, exclude_history=True)
    assert ranks.tolist() == [0, 2]


def test_candidate_scores_use_the_task_behaviour_level():
    times = np.zeros(6, np.int64)
    items = np.array([1, 1, 1, 2, 2, 3], np.int32)
    levels = np.array([1, 1, 1, 3, 3, 2], np.int32)
    scores = popularity_candidate_scores(times, items, levels, 3,
                                         example_time=np.array([HOUR], np.int64),
                                         candidates=np.array([[1, 2, 3]], np.int32),
                                         task_levels=(1, 3), window=0, timed=True)
    assert np.argmax(scores[0, :, 0]) == 0 and np.argmax(scores[0, :, 1]) == 1


def test_evaluate_retrieval_on_a_build(planted_build):
    config = tiny_config(str(planted_build))
    result = evaluate_popularity(config, planted_build, 7 * 86_400, log=planted_log())
    assert result["split"] == "test" and "popularity ranker" in result["protocol"]
    assert "history excluded" in result["protocol"]
    assert result["metrics"]["count"] == 120 and 0.0 <= result["metrics"]["HR@10"] <= 1.0


def test_evaluate_ranking_on_a_build(tmp_path):
    from onepiece_jax.train.loop import ensure_built

    config = tiny_ranking_config(str(tmp_path))
    log = planted_ranking_log()
    build = ensure_built(config, tmp_path, log=log)
    result = evaluate_popularity(config, build, 0, log=log)
    assert set(result["metrics"]) >= {"view/AUC", "view/GAUC", "like/AUC", "like/GAUC"}
    assert "popularity ranker" in result["protocol"]
