"""Boolean attention masks, ``True`` = the query may attend to the key.

Every mask is ``bool[B, 1, Q, K]`` (broadcast over heads): a static structural part (numpy,
decided by the config flags and the token layout) and-ed with key padding (``ids > 0``, per
example). Every query row additionally sees its own position, so a row whose keys are all
padding (a padded history slot, a padded example) still has one finite softmax term and cannot
produce NaN; valid rows never see padded keys, so padded tokens cannot reach valid outputs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def key_padding_mask(valid: jnp.ndarray) -> jnp.ndarray:
    """valid: bool[B, K] → bool[B, 1, 1, K]: every query may see exactly the valid keys."""
    return valid[:, None, None, :]


def _combine(structure: np.ndarray, key_valid: jnp.ndarray, self_cols: np.ndarray) -> jnp.ndarray:
    """structure: bool[Q, K] & key_valid: bool[B, K], plus each row's own key self_cols: int[Q]."""
    own = np.zeros_like(structure)
    own[np.arange(structure.shape[0]), self_cols] = True
    mask = jnp.asarray(structure)[None, None] & key_padding_mask(key_valid)
    return mask | jnp.asarray(own)[None, None]


def base_structure(is_cis: np.ndarray, causal: bool, cis_visible: bool,
                   prefix_sees_cis: bool) -> np.ndarray:
    """The structural base mask bool[N, N] over one sequence, from the CIS marker is_cis: bool[N].

    Prefix (non-CIS) tokens see each other bidirectionally or causally. Candidates see the whole
    prefix; each other only when ``cis_visible`` (else each sees the prefix and itself). The
    prefix sees candidates only when ``prefix_sees_cis`` and not causal: candidates come last, so
    a causal prefix never sees them.
    """
    n = is_cis.shape[0]
    q_idx, k_idx = np.arange(n)[:, None], np.arange(n)[None, :]
    q_cis, k_cis = is_cis[:, None], is_cis[None, :]
    order = (k_idx <= q_idx) if causal else np.ones((n, n), bool)
    prefix_prefix = ~q_cis & ~k_cis & order
    prefix_cis = ~q_cis & k_cis & (prefix_sees_cis and not causal)
    cis_prefix = q_cis & ~k_cis
    cis_cis = q_cis & k_cis & (cis_visible | (q_idx == k_idx))
    return prefix_prefix | prefix_cis | cis_prefix | cis_cis


def base_mask(valid: jnp.ndarray, is_cis: np.ndarray, causal: bool, cis_visible: bool,
              prefix_sees_cis: bool) -> jnp.ndarray:
    """valid: bool[B, N] → bool[B, 1, N, N], the mask of the base pass (see base_structure)."""
    n = is_cis.shape[0]
    return _combine(base_structure(is_cis, causal, cis_visible, prefix_sees_cis), valid,
                    np.arange(n))


def _step_structure(is_cis: np.ndarray, rows: int, start: int, step: int,
                    isolate_rows: bool) -> np.ndarray:
    """bool[M, N + step·M]: what the M rows of reasoning block ``step`` see (block-causal).

    Block ``step`` sees the base and blocks 1..step, fully inside a block. With ``isolate_rows``
    (ranking with invisible candidates: ReaRec-style per-candidate streams) row i sees only the
    non-CIS prefix, its own candidate token and row i of each block.
    """
    n = is_cis.shape[0]
    if not isolate_rows:
        return np.ones((rows, n + step * rows), bool)
    row = np.arange(rows)[:, None]
    own_cis = np.arange(n)[None, :] == (start + row)
    base_part = ~is_cis[None, :] | own_cis
    block_part = np.tile(np.eye(rows, dtype=bool), (1, step))
    return np.concatenate([base_part, block_part], axis=1)


def reasoning_mask(valid: jnp.ndarray, is_cis: np.ndarray, rows: int, start: int, step: int,
                   isolate_rows: bool) -> jnp.ndarray:
    """The KV-cached step mask bool[B, 1, M, N + step·M] for block ``step`` (1-based) queries.

    valid: bool[B, N] is base-token validity; block row i is as valid as the base row it was read
    from (``valid[:, start+i]``, ``Layout.block_start``), so a padded candidate's reasoning rows
    are hidden from the others.
    """
    n = is_cis.shape[0]
    block_valid = jnp.tile(valid[:, start:start + rows], (1, step))
    key_valid = jnp.concatenate([valid, block_valid], axis=1)
    self_cols = n + (step - 1) * rows + np.arange(rows)
    return _combine(_step_structure(is_cis, rows, start, step, isolate_rows), key_valid,
                    self_cols)


def block_causal_mask(valid: jnp.ndarray, is_cis: np.ndarray, rows: int, start: int, steps: int,
                      causal: bool, cis_visible: bool, prefix_sees_cis: bool,
                      isolate_rows: bool) -> jnp.ndarray:
    """bool[B, 1, N + S·M, N + S·M] for one pass over [base ; block 1 ; … ; block S].

    The base rows are the base mask (base never sees blocks); block k's rows are exactly the
    KV-cached ``reasoning_mask`` of step k followed by ``False`` for later blocks — the same
    function, so the full-recompute and cached paths cannot drift apart.
    """
    total = is_cis.shape[0] + steps * rows
    parts = [base_mask(valid, is_cis, causal, cis_visible, prefix_sees_cis)]
    parts += [reasoning_mask(valid, is_cis, rows, start, k, isolate_rows)
              for k in range(1, steps + 1)]
    padded = [jnp.pad(p, ((0, 0), (0, 0), (0, 0), (0, total - p.shape[-1]))) for p in parts]
    return jnp.concatenate(padded, axis=2)
