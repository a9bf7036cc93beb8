"""Training objectives: OnePiece retrieval / ranking step losses and softmax baselines.

Conventions shared by every loss here (SPEC §4, PAPER_NOTES §5, §9 #12):

* Scores are raw inner products or logits in float32; temperatures divide scores only inside the
  contrastive terms (BCE never sees a temperature).
* Every term is **summed over the items of an example** and the per-example sums are **averaged
  over valid examples**: ``loss = Σ_b example_mask[b] · loss_b / max(Σ_b example_mask[b], 1)``.
  A batch with no valid example therefore has loss 0 (and zero gradients), not NaN.
* Padded entries (``valid`` False) and padded examples (``example_mask`` False) contribute exactly
  nothing, to the value and to the gradient: their inputs are replaced by zeros with ``jnp.where``
  *before* any arithmetic, so even non-finite garbage there cannot leak a NaN into the gradient.
* A pool entry is a positive when ``valid & (label > 0.5)`` and a negative when
  ``valid & (label <= 0.5)``; BCE uses the float label as given (soft labels allowed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from onepiece_jax.train.negatives import catalogue_mask

# Stand-in for -inf in masked log-sum-exps: finite, so fully masked rows stay NaN-free in both the
# value and the gradient, and far below any realistic score / temperature.
_MASKED_LOGIT = -1e9

STRATEGIES = ("progressive", "last_step", "single")
# The named terms each OnePiece step loss returns (``config.loss.weights`` weighs them).
TERMS = {"retrieval": ("bce", "u2i", "i2u"), "ranking": ("bce", "scl")}


def _masked_mean_over_examples(per_example: jax.Array, example_mask: jax.Array) -> jax.Array:
    """Mean of ``per_example: f32[B]`` over the examples where ``example_mask: bool[B]``."""
    count = jnp.maximum(jnp.sum(example_mask.astype(jnp.float32)), 1.0)
    return jnp.sum(jnp.where(example_mask, per_example, 0.0)) / count


def _masked_logsumexp(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Log-sum-exp of ``x`` over ``axis`` restricted to ``mask``; ≈ -1e9 where nothing is valid."""
    return jax.nn.logsumexp(jnp.where(mask, x, _MASKED_LOGIT), axis=axis)


def _bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Element-wise binary cross-entropy on logits, stable for large |logits|."""
    return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


def _split_pool(
    label: jax.Array, valid: jax.Array, example_mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (valid, positive, negative) masks, all bool[B, P], with padded examples removed."""
    valid = valid & example_mask[:, None]
    positive = valid & (label > 0.5)
    return valid, positive, valid & ~positive


def retrieval_step_loss(
    user_vec: jax.Array,
    item_vec: jax.Array,
    label: jax.Array,
    valid: jax.Array,
    example_mask: jax.Array,
    eta: float,
    positive_slots: int | None = None,
    shared_vec: jax.Array | None = None,
    bce_on_shared: bool = True,
) -> dict[str, jax.Array]:
    """OnePiece retrieval loss for one reasoning step and one task (SPEC §4, paper Eq. 13-17).

    Args:
      user_vec: f32[B, d], the step-k user representation ``r_k`` of each example.
      item_vec: f32[B, P, d], item-tower vectors ``z_v`` of each example's candidate pool.
      label: f32[B, P + S], this task's label per pool item (1 positive, 0 negative).
      valid: bool[B, P + S], False for padded pool entries.
      example_mask: bool[B], False for padded examples.
      eta: contrastive temperature η (> 0).
      positive_slots: static; when set, only the first ``positive_slots`` pool entries can be
        positive (the example's own pool, before sampled negatives), so the B×P×B I2U scores are
        computed for those columns only — the same value at a fraction of the cost.
      shared_vec: f32[S, d] (S = 0 when None), negatives common to every example (in-batch
        targets, the whole catalogue): pool columns P..P+S, never positive. Scored with one
        B×S matmul rather than broadcast to B×S×d, which on MovieLens' 1,682-item catalogue
        was more than half of a training step.
      bce_on_shared: static; False keeps the shared columns out of BCE (they stay in U2I), so
        BCE's Ω⁻ is the example's own pool and sampled negatives, the paper's scale (~25 per
        example), rather than every catalogue item.

    Terms, each summed over the example's items and then averaged over valid examples:
      * ``bce``: Σ_{valid v} BCE(⟨r, z_v⟩, y_v) (v < P only when ``bce_on_shared`` is False).
      * ``u2i``: Σ_{v+} −log softmax of ⟨r, z_{v+}⟩/η against the example's **own negatives only**
        (other positives are not in the denominator; no negatives → 0).
      * ``i2u``: Σ_{v+} −log softmax of ⟨r_b, z_{v+}⟩/η over the B valid users' vectors at this step
        (CLIP-style: every other valid user is a negative, even one that also likes v+).

    Returns:
      ``{"bce", "u2i", "i2u"}``, scalars, each already averaged over examples; the step's loss
      is their weighted sum (``Objective.weighted``, weight 1 each by default).
    """
    valid, positive, negative = _split_pool(label, valid, example_mask)
    own = item_vec.shape[1]
    user_vec = jnp.where(example_mask[:, None], user_vec, 0.0)
    item_vec = jnp.where(valid[:, :own, None], item_vec, 0.0)
    label = jnp.where(valid, label, 0.0)

    scores = jnp.einsum("bd,bpd->bp", user_vec, item_vec)
    if shared_vec is not None:
        scores = jnp.concatenate([scores, user_vec @ shared_vec.T], axis=1)
    scores = jnp.where(valid, scores, 0.0)
    n = scores.shape[1] if bce_on_shared else own  # BCE's columns
    bce = jnp.sum(jnp.where(valid[:, :n], _bce_with_logits(scores[:, :n], label[:, :n]), 0.0),
                  axis=-1)

    tempered = scores / eta
    negatives_lse = _masked_logsumexp(tempered, negative, axis=-1)
    u2i_terms = jnp.logaddexp(tempered, negatives_lse[:, None]) - tempered
    u2i = jnp.sum(jnp.where(positive, u2i_terms, 0.0), axis=-1)

    # all_scores[b, p, b'] = ⟨r_b', z_{b,p}⟩ / η: item (b, p) looks for its own user b among all b'.
    k = own if positive_slots is None else positive_slots
    all_scores = jnp.einsum("cd,bpd->bpc", user_vec, item_vec[:, :k]) / eta
    users_lse = _masked_logsumexp(all_scores, example_mask[None, None, :], axis=-1)
    i2u = jnp.sum(jnp.where(positive[:, :k], users_lse - tempered[:, :k], 0.0), axis=-1)

    parts = {
        name: _masked_mean_over_examples(value, example_mask)
        for name, value in (("bce", bce), ("u2i", u2i), ("i2u", i2u))
    }
    return parts


def ranking_step_loss(
    logits: jax.Array,
    label: jax.Array,
    valid: jax.Array,
    example_mask: jax.Array,
    eta: float,
) -> dict[str, jax.Array]:
    """OnePiece ranking loss for one reasoning step and one task (SPEC §4, paper Eq. 18-20).

    Args:
      logits: f32[B, C], the task head's logit per candidate of the group.
      label: f32[B, C], this task's label per candidate.
      valid: bool[B, C], False for padded (dummy) candidates.
      example_mask: bool[B], False for padded examples.
      eta: set-wise softmax temperature η (> 0).

    Terms, summed over the group's candidates and averaged over valid examples:
      * ``bce``: Σ_{valid i} BCE(s_i, y_i).
      * ``scl``: Σ_{positive i} −log softmax of s_i/η over **all** valid candidates of the group
        (other positives included in the denominator); identically 0 when C = 1.

    Returns:
      ``{"bce", "scl"}``; the step's loss is their weighted sum, as for retrieval.
    """
    valid, positive, _ = _split_pool(label, valid, example_mask)
    logits = jnp.where(valid, logits, 0.0)
    label = jnp.where(valid, label, 0.0)

    bce = jnp.sum(jnp.where(valid, _bce_with_logits(logits, label), 0.0), axis=-1)
    tempered = logits / eta
    group_lse = _masked_logsumexp(tempered, valid, axis=-1)
    scl = jnp.sum(jnp.where(positive, group_lse[:, None] - tempered, 0.0), axis=-1)

    parts = {
        "bce": _masked_mean_over_examples(bce, example_mask),
        "scl": _masked_mean_over_examples(scl, example_mask),
    }
    return parts


def task_assignment(
    strategy: str, num_steps: int, num_tasks: int
) -> tuple[tuple[int, int], ...]:
    """Which (step, task) pairs are supervised: the training curriculum (SPEC §4, paper Table 4/5).

    Steps are 1..K (reasoning outputs O_1..O_K); step 0 is the base readout O_0 and is supervised
    only when K = 0 (PAPER_NOTES §9 #3). Tasks are 0-based indices into the label's task axis,
    ordered weak → strong.

    * ``progressive``: step k ← task k-1 (one task per step); requires ``num_steps == num_tasks``.
    * ``last_step``: every task on step K (multi-task without a curriculum).
    * ``single``: only the strongest task (T-1), on step K.

    With K = 0 there is a single readout, so ``progressive`` and ``last_step`` both put every task
    on step 0 and ``single`` puts task T-1 there.

    Raises:
      ValueError: unknown strategy, non-positive ``num_tasks``, negative ``num_steps``, or
        ``progressive`` with ``num_steps != num_tasks``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"task_assignment: unknown strategy {strategy!r}; expected one of "
                         f"{STRATEGIES}")
    if num_tasks < 1 or num_steps < 0:
        raise ValueError(f"task_assignment: need num_tasks >= 1 and num_steps >= 0, got "
                         f"num_tasks={num_tasks}, num_steps={num_steps}")
    if strategy == "single":
        return ((num_steps, num_tasks - 1),)
    if strategy == "progressive" and num_steps > 0:
        if num_steps != num_tasks:
            raise ValueError(
                "task_assignment: strategy 'progressive' supervises step k with task k, so "
                f"num_steps (K={num_steps}) must equal num_tasks (T={num_tasks}); change the "
                "number of reasoning steps or the task list, or use 'last_step' / 'single'"
            )
        return tuple((task + 1, task) for task in range(num_tasks))
    return tuple((num_steps, task) for task in range(num_tasks))


def next_item_softmax_loss(
    user_vec: jax.Array,
    item_table: jax.Array,
    target: jax.Array,
    example_mask: jax.Array,
    exclude: jax.Array | None = None,
) -> jax.Array:
    """Full-softmax next-item cross-entropy (the SASRec / RecBole "CE" baseline).

    Args:
      user_vec: f32[B, d], the sequence representation.
      item_table: f32[N+1, d], all item vectors; row 0 is the padding item and is excluded from the
        softmax (it is never a candidate).
      target: int32[B], the next item in 1..N.
      example_mask: bool[B], False for padded examples.
      exclude: optional int32[B, E], items left out of example b's softmax (its history, with
        ``loss.negatives.exclude_history``; 0 = padding); the target always stays in.

    Returns:
      scalar, mean over valid examples of ``logsumexp_{v} ⟨u, z_v⟩ − ⟨u, z_target⟩`` over
      v = 1..N, less ``exclude``'s items other than the target.
    """
    user_vec = jnp.where(example_mask[:, None], user_vec, 0.0)
    logits = user_vec @ item_table.T
    candidate = (jnp.arange(item_table.shape[0]) > 0)[None, :]
    if exclude is not None:
        kept = jnp.pad(catalogue_mask(exclude, item_table.shape[0] - 1), ((0, 0), (1, 0)))
        candidate = kept.at[jnp.arange(logits.shape[0]), target].set(True)
    lse = _masked_logsumexp(logits, candidate, axis=-1)
    target_logit = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    return _masked_mean_over_examples(lse - target_logit, example_mask)


def sampled_softmax_loss(
    user_vec: jax.Array,
    pos_vec: jax.Array,
    neg_vec: jax.Array,
    neg_mask: jax.Array,
    example_mask: jax.Array,
    *,
    temperature: float = 1.0,
    log_q: jax.Array | None = None,
) -> jax.Array:
    """Sampled-softmax cross-entropy: the positive against sampled negatives, with optional logQ.

    Args:
      user_vec: f32[B, d].
      pos_vec: f32[B, d], the positive (target) item vector of each example.
      neg_vec: f32[B, N_neg, d], sampled negative item vectors (per example; in-batch negatives are
        a gather of the other examples' positives).
      neg_mask: bool[B, N_neg], False for negatives to drop (padding, collisions with positives —
        see ``negatives.negative_mask``).
      example_mask: bool[B].
      temperature: logits are ⟨u, z⟩ / temperature.
      log_q: optional f32[B, 1 + N_neg], log sampling probability of the positive (column 0) and of
        each negative. The logQ correction (Yi et al., RecSys 2019) subtracts it from the logits so
        popular items, over-represented as negatives, are not over-penalised and the sampled loss
        estimates the full softmax.

    Returns:
      scalar, mean over valid examples of ``−log softmax(column 0)``.
    """
    user_vec = jnp.where(example_mask[:, None], user_vec, 0.0)
    pos_vec = jnp.where(example_mask[:, None], pos_vec, 0.0)
    neg_mask = neg_mask & example_mask[:, None]
    neg_vec = jnp.where(neg_mask[..., None], neg_vec, 0.0)

    pos_logit = jnp.einsum("bd,bd->b", user_vec, pos_vec)[:, None]
    neg_logits = jnp.einsum("bd,bnd->bn", user_vec, neg_vec)
    logits = jnp.concatenate([pos_logit, neg_logits], axis=-1) / temperature
    keep = jnp.concatenate([example_mask[:, None], neg_mask], axis=-1)
    if log_q is not None:
        logits = logits - jnp.where(keep, log_q, 0.0)
    loss = _masked_logsumexp(logits, keep, axis=-1) - logits[:, 0]
    return _masked_mean_over_examples(loss, example_mask)

