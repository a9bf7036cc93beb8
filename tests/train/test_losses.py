"""Losses against plain NumPy reference loops, padding invariance and the task curriculum."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.train.losses import (
    next_item_softmax_loss,
    ranking_step_loss,
    retrieval_step_loss,
    sampled_softmax_loss,
    task_assignment,
)

ETA = 0.5


def total(parts: dict) -> jax.Array:
    """A step's loss with every term weighed 1 (``Objective.weighted``'s default)."""
    return sum(parts.values())


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _bce(s: float, y: float) -> float:
    return -(y * _log_sigmoid(s) + (1 - y) * _log_sigmoid(-s))


def _retrieval_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    batch, pool, dim = 4, 5, 3
    user = rng.normal(size=(batch, dim)).astype(np.float32)
    items = rng.normal(size=(batch, pool, dim)).astype(np.float32)
    label = np.array([[1, 0, 0, 1, 0],
                      [1, 1, 0, 0, 0],
                      [1, 1, 0, 0, 0],   # valid mask below leaves this example no negative
                      [0, 1, 0, 1, 1]], np.float32)
    valid = np.array([[1, 1, 1, 1, 0],
                      [1, 1, 1, 0, 0],
                      [1, 1, 0, 0, 0],
                      [1, 1, 1, 1, 1]], bool)
    example_mask = np.array([True, True, True, False])
    return user, items, label, valid, example_mask


def _retrieval_reference(user, items, label, valid, example_mask, eta):
    users = [b for b in range(len(user)) if example_mask[b]]
    total = {"bce": 0.0, "u2i": 0.0, "i2u": 0.0}
    for b in users:
        r = user[b].astype(np.float64)
        scores = {p: float(r @ items[b, p]) for p in range(items.shape[1]) if valid[b, p]}
        negatives = [s for p, s in scores.items() if label[b, p] <= 0.5]
        for p, s in scores.items():
            total["bce"] += _bce(s, float(label[b, p]))
            if label[b, p] > 0.5:
                denominator = math.exp(s / eta) + sum(math.exp(n / eta) for n in negatives)
                total["u2i"] += -math.log(math.exp(s / eta) / denominator)
                all_users = sum(math.exp(float(user[c] @ items[b, p]) / eta) for c in users)
                total["i2u"] += -math.log(math.exp(s / eta) / all_users)
    return {name: value / len(users) for name, value in total.items()}


def test_retrieval_step_loss_matches_numpy_reference_loops():
    batch = _retrieval_batch()
    parts = jax.jit(retrieval_step_loss, static_argnames="eta")(*batch, eta=ETA)
    reference = _retrieval_reference(*batch, ETA)
    for name in ("bce", "u2i", "i2u"):
        np.testing.assert_allclose(float(parts[name]), reference[name], rtol=1e-5)


def test_retrieval_u2i_ignores_other_positives_and_is_zero_without_negatives():
    user, items, label, valid, example_mask = _retrieval_batch()
    only_third = np.array([False, False, True, False])
    parts = retrieval_step_loss(user, items, label, valid, only_third, ETA)
    # The third example has two positives and no valid negative: the U2I term is exactly 0
    # (positives do not compete with each other), and with one valid user I2U is 0 too.
    assert float(parts["u2i"]) == 0.0
    assert float(parts["i2u"]) == pytest.approx(0.0, abs=1e-6)


def _perturbed_padding(user, items, label, valid, example_mask, rng):
    user, items, label = user.copy(), items.copy(), label.copy()
    pad = ~valid | ~example_mask[:, None]
    items[pad] = rng.normal(size=items[pad].shape) * 1e3
    items[0, 4, 0] = np.nan
    label[pad] = 1.0 - label[pad]
    user[~example_mask] = np.inf
    return user, items, label, valid, example_mask


def test_retrieval_padding_changes_neither_loss_nor_gradients():
    batch = _retrieval_batch()
    perturbed = _perturbed_padding(*batch, np.random.default_rng(1))
    grad_fn = jax.value_and_grad(
        lambda u, z, *rest: total(retrieval_step_loss(u, z, *rest, eta=ETA)), argnums=(0, 1))
    (loss, (grad_u, grad_z)) = grad_fn(*batch)
    (loss_p, (grad_u_p, grad_z_p)) = grad_fn(*perturbed)
    assert float(loss) == float(loss_p)
    np.testing.assert_array_equal(grad_u, grad_u_p)
    np.testing.assert_array_equal(grad_z, grad_z_p)
    _, _, _, valid, example_mask = batch
    assert np.all(np.asarray(grad_z)[~valid | ~example_mask[:, None]] == 0)
    assert np.all(np.asarray(grad_u)[~example_mask] == 0)


def _ranking_batch():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4)).astype(np.float32) * 2
    label = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]], np.float32)
    valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], bool)
    example_mask = np.array([True, True, False])
    return logits, label, valid, example_mask


def test_ranking_step_loss_matches_numpy_reference_loops():
    logits, label, valid, example_mask = _ranking_batch()
    parts = jax.jit(ranking_step_loss, static_argnames="eta")(
        logits, label, valid, example_mask, eta=ETA)
    bce = scl = 0.0
    examples = [b for b in range(3) if example_mask[b]]
    for b in examples:
        group = [i for i in range(4) if valid[b, i]]
        denominator = sum(math.exp(logits[b, j] / ETA) for j in group)
        for i in group:
            bce += _bce(float(logits[b, i]), float(label[b, i]))
            if label[b, i] > 0.5:
                scl += -math.log(math.exp(logits[b, i] / ETA) / denominator)
    np.testing.assert_allclose(float(parts["bce"]), bce / len(examples), rtol=1e-5)
    np.testing.assert_allclose(float(parts["scl"]), scl / len(examples), rtol=1e-5)


def test_ranking_scl_is_zero_for_single_candidate_groups():
    logits = np.array([[3.0], [-1.0]], np.float32)
    parts = ranking_step_loss(logits, np.ones((2, 1), np.float32), np.ones((2, 1), bool),
                                 np.ones(2, bool), ETA)
    assert float(parts["scl"]) == pytest.approx(0.0, abs=1e-7)


def test_ranking_padding_changes_neither_loss_nor_gradients():
    logits, label, valid, example_mask = _ranking_batch()
    pad = ~valid | ~example_mask[:, None]
    logits_p, label_p = logits.copy(), label.copy()
    logits_p[pad] = 1e4
    logits_p[2, 0] = np.nan
    label_p[pad] = 1.0 - label_p[pad]
    grad_fn = jax.value_and_grad(
        lambda s, y: total(ranking_step_loss(s, y, valid, example_mask, ETA)))
    loss, grad = grad_fn(logits, label)
    loss_p, grad_p = grad_fn(logits_p, label_p)
    assert float(loss) == float(loss_p)
    np.testing.assert_array_equal(grad, grad_p)
    assert np.all(np.asarray(grad)[pad] == 0)


def test_losses_are_zero_not_nan_when_no_example_is_valid():
    user, items, label, valid, _ = _retrieval_batch()
    parts = retrieval_step_loss(user, items, label, valid, np.zeros(4, bool), ETA)
    assert all(float(v) == 0.0 for v in parts.values())


@pytest.mark.parametrize(
    ("strategy", "steps", "tasks", "expected"),
    [
        ("progressive", 2, 2, ((1, 0), (2, 1))),
        ("progressive", 3, 3, ((1, 0), (2, 1), (3, 2))),
        ("last_step", 2, 2, ((2, 0), (2, 1))),
        ("last_step", 3, 2, ((3, 0), (3, 1))),
        ("single", 3, 3, ((3, 2),)),
        ("progressive", 0, 2, ((0, 0), (0, 1))),
        ("last_step", 0, 3, ((0, 0), (0, 1), (0, 2))),
        ("single", 0, 2, ((0, 1),)),
    ],
)
def test_task_assignment_per_strategy(strategy, steps, tasks, expected):
    assert task_assignment(strategy, steps, tasks) == expected


def test_task_assignment_progressive_mismatch_names_both_keys():
    with pytest.raises(ValueError, match=r"num_steps \(K=2\).*num_tasks \(T=3\)"):
        task_assignment("progressive", 2, 3)
    with pytest.raises(ValueError, match="unknown strategy"):
        task_assignment("curriculum", 2, 2)


def test_next_item_softmax_matches_reference_and_never_ranks_padding_row():
    rng = np.random.default_rng(3)
    user = rng.normal(size=(3, 4)).astype(np.float32)
    table = rng.normal(size=(6, 4)).astype(np.float32)
    target = np.array([2, 5, 1], np.int32)
    example_mask = np.array([True, True, False])
    loss = float(next_item_softmax_loss(user, table, target, example_mask))
    reference = 0.0
    for b in range(2):
        logits = [float(user[b] @ table[v]) for v in range(1, 6)]
        reference += -logits[target[b] - 1] + math.log(sum(math.exp(x) for x in logits))
    np.testing.assert_allclose(loss, reference / 2, rtol=1e-5)
    table[0] = 1e3  # a huge padding row must not enter the softmax
    assert float(next_item_softmax_loss(user, table, target, example_mask)) == pytest.approx(loss)


def test_next_item_softmax_leaves_excluded_items_out_but_always_keeps_the_target():
    rng = np.random.default_rng(5)
    user = rng.normal(size=(2, 4)).astype(np.float32)
    table = rng.normal(size=(7, 4)).astype(np.float32)
    target = np.array([3, 6], np.int32)
    exclude = np.array([[1, 3, 0], [2, 4, 5]], np.int32)  # example 0's target is in its history
    loss = float(next_item_softmax_loss(user, table, target, np.ones(2, bool), exclude=exclude))
    reference = 0.0
    for b, kept in enumerate(([2, 3, 4, 5, 6], [1, 3, 6])):
        logits = {v: float(user[b] @ table[v]) for v in kept}
        reference += -logits[target[b]] + math.log(sum(math.exp(x) for x in logits.values()))
    np.testing.assert_allclose(loss, reference / 2, rtol=1e-5)
    plain = float(next_item_softmax_loss(user, table, target, np.ones(2, bool)))
    assert loss < plain


def test_sampled_softmax_with_logq_and_dropped_negatives_matches_reference():
    rng = np.random.default_rng(4)
    user = rng.normal(size=(2, 3)).astype(np.float32)
    pos = rng.normal(size=(2, 3)).astype(np.float32)
    neg = rng.normal(size=(2, 4, 3)).astype(np.float32)
    neg_mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)
    log_q = np.log(rng.uniform(0.01, 0.5, size=(2, 5))).astype(np.float32)
    temperature = 0.7
    loss = sampled_softmax_loss(user, pos, neg, neg_mask, np.ones(2, bool),
                                temperature=temperature, log_q=log_q)
    reference = 0.0
    for b in range(2):
        pos_logit = float(user[b] @ pos[b]) / temperature - log_q[b, 0]
        kept = [float(user[b] @ neg[b, n]) / temperature - log_q[b, n + 1]
                for n in range(4) if neg_mask[b, n]]
        reference += -pos_logit + math.log(math.exp(pos_logit) + sum(math.exp(x) for x in kept))
    np.testing.assert_allclose(float(loss), reference / 2, rtol=1e-5)
    without = sampled_softmax_loss(user, pos, neg, neg_mask, np.ones(2, bool),
                                   temperature=temperature)
    assert float(without) != pytest.approx(float(loss))


def test_sampled_softmax_padding_invariance():
    rng = np.random.default_rng(5)
    user = rng.normal(size=(2, 3)).astype(np.float32)
    pos = rng.normal(size=(2, 3)).astype(np.float32)
    neg = rng.normal(size=(2, 3, 3)).astype(np.float32)
    neg_mask = np.array([[1, 0, 1], [1, 1, 1]], bool)
    example_mask = np.array([True, False])
    grad_fn = jax.value_and_grad(
        lambda u, p, n: sampled_softmax_loss(u, p, n, neg_mask, example_mask), argnums=(0, 1, 2))
    loss, grads = grad_fn(user, pos, neg)
    neg_p, user_p = neg.copy(), user.copy()
    neg_p[0, 1] = 1e4
    neg_p[1] = np.nan
    user_p[1] = np.nan
    loss_p, grads_p = grad_fn(user_p, pos, neg_p)
    assert float(loss) == float(loss_p)
    for g, g_p in zip(grads, grads_p, strict=True):
        np.testing.assert_array_equal(g, g_p)
    assert jnp.all(grads[2][0, 1] == 0)


def test_positive_slots_only_skips_work_not_value():
    """I2U restricted to the pool columns equals the full computation when positives live there."""
    rng = np.random.default_rng(7)
    b, pool, extra, d = 4, 3, 5, 8
    user = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
    items = jnp.asarray(rng.normal(size=(b, pool + extra, d)), jnp.float32)
    label = np.zeros((b, pool + extra), np.float32)
    label[:, 0] = 1.0
    label[1, 2] = 1.0
    valid = jnp.ones((b, pool + extra), bool)
    mask = jnp.array([True, True, False, True])
    full = retrieval_step_loss(user, items, jnp.asarray(label), valid, mask, 0.1)
    fast = retrieval_step_loss(user, items, jnp.asarray(label), valid, mask, 0.1,
                                  positive_slots=pool)
    for name in full:
        np.testing.assert_allclose(float(fast[name]), float(full[name]), rtol=1e-6)


def _own_and_shared_vectors(rng, b: int, pool: int, shared: int, d: int):
    """Random user vectors f32[b, d], own-pool item vectors f32[b, pool, d] and shared negatives
    f32[shared, d]."""
    return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32)
                 for shape in ((b, d), (b, pool, d), (shared, d)))


def test_shared_negatives_scored_by_matmul_equal_broadcast_columns():
    """Common negatives passed once (``shared_vec``) give the loss and gradients of the same
    vectors broadcast into every example's pool, including invalid columns and padded rows."""
    rng = np.random.default_rng(3)
    b, pool, shared, d = 5, 4, 6, 8
    user, own, common = _own_and_shared_vectors(rng, b, pool, shared, d)
    label = np.zeros((b, pool + shared), np.float32)
    label[:, 0] = 1.0
    label[2, 1] = 1.0
    valid = rng.random((b, pool + shared)) > 0.2
    valid[:, 0] = True
    mask = jnp.array([True, True, True, False, True])
    args = (jnp.asarray(label), jnp.asarray(valid), mask, 0.1)

    def broadcast(u, z, c):
        items = jnp.concatenate([z, jnp.broadcast_to(c[None], (b, shared, d))], axis=1)
        return total(retrieval_step_loss(u, items, *args, positive_slots=pool))

    def apart(u, z, c):
        return total(retrieval_step_loss(u, z, *args, positive_slots=pool, shared_vec=c))

    want = jax.value_and_grad(broadcast, argnums=(0, 1, 2))(user, own, common)
    got = jax.value_and_grad(apart, argnums=(0, 1, 2))(user, own, common)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


def test_bce_without_shared_columns_sums_only_the_examples_own_pool_and_u2i_keeps_them():
    """``bce_on_shared=False`` (``loss.bce_negatives='sampled'``): BCE is the sum over columns
    < P alone, while U2I and I2U still see every shared negative."""
    rng = np.random.default_rng(4)
    b, pool, shared, d = 3, 4, 5, 6
    user, own, common = _own_and_shared_vectors(rng, b, pool, shared, d)
    label = np.zeros((b, pool + shared), np.float32)
    label[:, 0] = 1.0
    valid = np.ones((b, pool + shared), bool)
    valid[1, 2] = False
    mask = jnp.array([True, True, True])
    args = (jnp.asarray(label), jnp.asarray(valid), mask, 0.5)
    full = retrieval_step_loss(user, own, *args, positive_slots=pool, shared_vec=common)
    own_only = retrieval_step_loss(user, own, *args, positive_slots=pool, shared_vec=common,
                                   bce_on_shared=False)
    scores = np.einsum("bd,bpd->bp", np.asarray(user, np.float64), np.asarray(own, np.float64))
    want = np.mean([sum(_bce(scores[i, p], label[i, p]) for p in range(pool) if valid[i, p])
                    for i in range(b)])
    np.testing.assert_allclose(float(own_only["bce"]), want, rtol=1e-5)
    assert float(full["bce"]) > float(own_only["bce"])
    for name in ("u2i", "i2u"):
        assert float(own_only[name]) == float(full[name])
