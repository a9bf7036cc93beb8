"""Exact metrics against hand-computed cases (ties, one-class groups) and the ranking evaluator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from onepiece_jax.eval.metrics import (
    RankingMetrics,
    RetrievalMetrics,
    auc,
    gauc,
    grouped_auc,
    per_example_retrieval_metrics,
)
from onepiece_jax.eval.ranking import RankingEvaluator, task_readouts, task_scores


def test_single_target_hr_ndcg_mrr_hand_computed():
    ranks = np.array([0, 3, 12])
    metrics = RetrievalMetrics(ks=(10,))
    metrics.update(ranks, np.ones(3, bool))
    result = metrics.result()
    assert result["HR@10"] == pytest.approx(2 / 3)
    assert result["Recall@10"] == pytest.approx(2 / 3)
    assert result["NDCG@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert result["MRR"] == pytest.approx((1.0 + 1 / 4 + 1 / 13) / 3)
    assert result["count"] == 3


def test_multi_target_recall_and_ndcg_use_the_ideal_dcg_of_the_valid_targets():
    ranks = np.array([[0, 5, 20], [3, 0, 99]])
    valid = np.array([[True, True, True], [True, False, False]])
    values, counted = per_example_retrieval_metrics(ranks, valid, ks=(10,))
    assert counted.tolist() == [True, True]
    ideal_three = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert values["Recall@10"].tolist() == pytest.approx([2 / 3, 1.0])
    assert values["HR@10"].tolist() == [1.0, 1.0]
    assert values["NDCG@10"].tolist() == pytest.approx(
        [(1 + 1 / math.log2(7)) / ideal_three, 1 / math.log2(5)])
    assert values["MRR"].tolist() == pytest.approx([1.0, 1 / 4])
    # K smaller than the number of targets: the ideal list is truncated at K.
    values, _ = per_example_retrieval_metrics(np.array([[0, 1, 2]]), None, ks=(2,))
    assert values["NDCG@2"][0] == pytest.approx(1.0)
    assert values["Recall@2"][0] == pytest.approx(2 / 3)


def test_streaming_accumulator_equals_one_shot_and_skips_padded_examples():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 300, size=50)
    valid = rng.random(50) > 0.2
    one_shot = RetrievalMetrics(ks=(10, 50, 200))
    one_shot.update(ranks[valid])
    streamed = RetrievalMetrics(ks=(10, 50, 200))
    for start in range(0, 50, 16):
        streamed.update(ranks[start:start + 16], valid[start:start + 16])
    assert set(streamed.result()) >= {"HR@10", "NDCG@50", "Recall@200", "MRR", "count"}
    for name, value in one_shot.result().items():
        assert streamed.result()[name] == pytest.approx(value)
    assert math.isnan(RetrievalMetrics().result()["HR@10"])


def _pairwise_auc(scores, labels):
    """Plain O(n²) reference: a positive beating a negative scores 1, a tie 1/2."""
    wins = total = 0.0
    for i, j in itertools.product(range(len(scores)), repeat=2):
        if labels[i] == 1 and labels[j] == 0:
            total += 1
            wins += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return wins / total


def test_auc_with_ties_hand_computed():
    # positives 0.4 and 0.8; negatives 0.1 and 0.4: pairs 1 + 1/2 + 1 + 1 over 4.
    assert auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert auc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)


def test_auc_matches_pairwise_reference_with_many_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=60).astype(float)
    labels = (rng.random(60) > 0.6).astype(int)
    assert auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))


def test_auc_is_nan_for_a_single_class_and_rejects_nan_scores():
    assert math.isnan(auc([0.1, 0.9], [1, 1]))
    with pytest.raises(ValueError, match="finite"):
        auc([0.1, np.nan], [0, 1])


def test_gauc_skips_one_class_groups_and_weights_by_group_size():
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.3, 0.4, 0.8, 0.7, 0.6])
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1])
    groups = np.array([7, 7, 3, 3, 3, 3, 5, 5, 5])
    # group 7: AUC 1 (size 2); group 3: positives 0.2, 0.3 vs negatives 0.5, 0.4 → 0 (size 4);
    # group 5 has only positives → skipped.
    values, sizes, both = grouped_auc(scores, labels, groups)
    assert both.tolist() == [True, False, True]  # groups sorted: 3, 5, 7
    assert sizes.tolist() == [4, 3, 2]
    assert gauc(scores, labels, groups) == pytest.approx((1.0 * 2 + 0.0 * 4) / 6)
    assert math.isnan(gauc(scores, np.ones(9), groups))


def test_ranking_metrics_are_exact_over_batches_not_batch_averages():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(40,))
    labels = (rng.random(40) > 0.5).astype(float)
    groups = rng.integers(0, 6, size=40)
    mask = rng.random(40) > 0.1
    metric = RankingMetrics()
    for start in range(0, 40, 7):
        part = slice(start, start + 7)
        metric.update(scores[part], labels[part], groups[part], mask[part])
    result = metric.result()
    assert result["AUC"] == pytest.approx(auc(scores[mask], labels[mask]))
    assert result["GAUC"] == pytest.approx(gauc(scores[mask], labels[mask], groups[mask]))
    assert result["count"] == mask.sum()


def test_task_readouts_follow_the_curriculum():
    assert task_readouts(((1, 0), (2, 1), (3, 2)), 3) == ((1, 0), (2, 1), (3, 2))
    assert task_readouts(((3, 0), (3, 1), (3, 2)), 3) == ((3, 0), (3, 1), (3, 2))
    # single: the weak tasks' own heads are untrained, so they read the strongest task's head.
    assert task_readouts(((2, 1),), 2) == ((2, 1), (2, 1))
    assert task_readouts(((0, 0),), 2) == ((0, 0), (0, 0))


def test_ranking_evaluator_reads_each_task_from_its_step_and_masks_padding():
    rng = np.random.default_rng(3)
    steps, batch, group_size = 3, 4, 3
    logits = rng.normal(size=(steps, batch, group_size, 2)).astype(np.float32)
    labels = (rng.random((batch, group_size, 2)) > 0.5).astype(np.float32)
    valid = np.ones((batch, group_size), bool)
    valid[1, 2] = False
    example_mask = np.array([True, True, True, False])
    request = np.array([10, 10, 11, 12])
    scores = np.asarray(task_scores(logits, ((1, 0), (2, 1))))
    np.testing.assert_array_equal(scores[..., 0], logits[1, ..., 0])
    np.testing.assert_array_equal(scores[..., 1], logits[2, ..., 1])

    evaluator = RankingEvaluator(("click", "order"))
    evaluator.update(scores, labels, valid, example_mask, request)
    result = evaluator.result()
    keep = valid & example_mask[:, None]
    groups = np.broadcast_to(request[:, None], keep.shape)
    for index, name in enumerate(("click", "order")):
        assert result[f"{name}/AUC"] == pytest.approx(
            auc(scores[..., index][keep], labels[..., index][keep]))
        assert result[f"{name}/GAUC"] == pytest.approx(
            gauc(scores[..., index][keep], labels[..., index][keep], groups[keep]),
            nan_ok=True)
        assert result[f"{name}/count"] == keep.sum()
