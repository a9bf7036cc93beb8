"""Attention masks: hand-written cases for every flag combination, and the block-causal rules."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from onepiece_jax.model import masks

# Three prefix tokens (p0 is padding) then two candidates c0, c1.
IS_CIS = np.array([False, False, False, True, True])
VALID = jnp.array([[False, True, True, True, True]])
START = 3  # the block is read from the 2 candidate rows

# Expected base masks, rows = queries, columns = keys (p0 p1 p2 c0 c1), by (causal, cis_visible,
# prefix_sees_cis). A padded row only sees itself; causal prefixes never see the later candidates.
EXPECTED_BASE = {
    (False, True, True): ["11111", "01111", "01111", "01111", "01111"],
    (False, True, False): ["11100", "01100", "01100", "01111", "01111"],
    (False, False, True): ["11111", "01111", "01111", "01110", "01101"],
    (False, False, False): ["11100", "01100", "01100", "01110", "01101"],
    (True, True, True): ["10000", "01000", "01100", "01111", "01111"],
    (True, True, False): ["10000", "01000", "01100", "01111", "01111"],
    (True, False, True): ["10000", "01000", "01100", "01110", "01101"],
    (True, False, False): ["10000", "01000", "01100", "01110", "01101"],
}


def _bits(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows])


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_base_mask_matches_hand_written_case_for_every_flag_combination(flags):
    causal, cis_visible, prefix_sees_cis = flags
    mask = masks.base_mask(VALID, IS_CIS, causal, cis_visible, prefix_sees_cis)
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(mask[0, 0]), _bits(EXPECTED_BASE[flags]))


def test_key_padding_mask_hides_padded_keys_from_every_query():
    mask = masks.key_padding_mask(VALID)
    assert mask.shape == (1, 1, 1, 5)
    np.testing.assert_array_equal(np.asarray(mask[0, 0, 0]), np.asarray(VALID[0]))


# Reasoning step 2 over blocks read from the two candidates (M = 2): keys = base(5) ⊕ B1(2) ⊕ B2(2).
EXPECTED_STEP2 = {
    # inter-visible: every valid base key and every row of blocks 1..2
    (False, True): ["011111111", "011111111"],
    # isolated rows (invisible candidates): prefix + own candidate + own row of each block
    (True, True): ["011101010", "011010101"],
    # candidate c1 padded: its base token and block rows are hidden from c0; c1's row sees itself
    (False, False): ["011101010", "011101011"],
    (True, False): ["011101010", "011000001"],
}


@pytest.mark.parametrize("isolate,c1_valid", list(itertools.product([False, True], repeat=2)))
def test_reasoning_step_mask_matches_hand_written_case(isolate, c1_valid):
    valid = VALID.at[0, 4].set(c1_valid)
    mask = masks.reasoning_mask(valid, IS_CIS, rows=2, start=START, step=2,
                                isolate_rows=isolate)
    assert mask.shape == (1, 1, 2, 9)
    expected = _bits(EXPECTED_STEP2[(isolate, c1_valid)])
    np.testing.assert_array_equal(np.asarray(mask[0, 0]), expected)


@pytest.mark.parametrize("isolate", [False, True])
def test_block_causal_mask_base_never_sees_blocks_and_blocks_never_see_the_future(isolate):
    steps, rows, n = 3, 2, 5
    mask = np.asarray(masks.block_causal_mask(VALID, IS_CIS, rows, START, steps, causal=False,
                                              cis_visible=not isolate, prefix_sees_cis=True,
                                              isolate_rows=isolate))[0, 0]
    assert mask.shape == (n + steps * rows,) * 2
    assert not mask[:n, n:].any(), "base tokens must not attend to reasoning blocks"
    for k in range(1, steps + 1):
        rows_k = slice(n + (k - 1) * rows, n + k * rows)
        assert not mask[rows_k, n + k * rows:].any(), f"block {k} sees a later block"
        step = np.asarray(masks.reasoning_mask(VALID, IS_CIS, rows, START, k, isolate))[0, 0]
        np.testing.assert_array_equal(mask[rows_k, : n + k * rows], step)
    base = np.asarray(masks.base_mask(VALID, IS_CIS, False, not isolate, True))[0, 0]
    np.testing.assert_array_equal(mask[:n, :n], base)


def test_retrieval_block_rows_are_fully_visible_inside_a_block():
    is_cis = np.zeros(4, bool)
    valid = jnp.ones((1, 4), bool)
    mask = np.asarray(masks.reasoning_mask(valid, is_cis, rows=2, start=2, step=1,
                                              isolate_rows=False))
    assert mask.all()


def test_every_query_row_of_a_fully_padded_example_keeps_one_visible_key():
    valid = jnp.zeros((1, 5), bool)
    for causal, visible, sees in itertools.product([False, True], repeat=3):
        mask = masks.base_mask(valid, IS_CIS, causal, visible, sees)
        assert np.asarray(mask).any(-1).all()
    full = masks.block_causal_mask(valid, IS_CIS, 2, START, 2, False, True, True, False)
    assert np.asarray(full).any(-1).all()
