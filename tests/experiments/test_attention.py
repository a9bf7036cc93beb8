"""Segment-averaged attention maps: segment ids follow the token layout, masses are exact means
over valid query tokens, and malformed captures are refused."""

import numpy as np
import pytest

from onepiece_jax.experiments.attention import (
    assemble,
    segment_layout,
    segment_maps,
    strongest_heads,
    uniform_weights,
)
from onepiece_jax.model.config import ModelConfig


def test_segments_follow_the_layout_with_one_block_per_step():
    layout = ModelConfig(mode="ranking", ih_len=4, pa_groups=1, pa_size=2,
                         pa_behaviors=(1,), num_candidates=3).layout()
    names, ids = segment_layout(layout, steps=2)
    assert names == ["IH", "PA", "SD", "CIS", "R1", "R2"]
    assert ids.tolist() == [0] * 4 + [1] * 4 + [2] * 2 + [3] * 3 + [4] * 3 + [5] * 3


def test_masses_are_means_over_valid_query_tokens():
    # 2 segments of 2 tokens; example 0's second token is padding (its row must not count)
    w = np.zeros((2, 1, 4, 4), np.float32)
    w[0, 0] = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 1, 0]]
    w[1, 0] = [[0, 0, 1, 0], [0.5, 0, 0.5, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    valid = np.array([[True, False, True, True], [True, True, True, True]])
    maps = segment_maps(w, np.array([0, 0, 1, 1]), valid, 2)
    # segment 0 rows: ex0 t0 (1, 0), ex1 t0 (0, 1), ex1 t1 (.5, .5) -> (0.5, 0.5)
    np.testing.assert_allclose(maps[0], [[0.5, 0.5], [0.5, 0.5]])


def test_assemble_refuses_captures_of_the_recompute_path():
    base = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="KV-cached steps"):
        assemble([base, np.ones((1, 1, 5, 5))], base_len=3, rows=2)


def test_uniform_shares_spread_each_row_over_its_visible_keys():
    # causal over 3 tokens, segments [0, 1, 1]: the first row sees only itself
    visible = np.tril(np.ones((1, 3, 3), bool))
    maps = segment_maps(uniform_weights(visible), np.array([0, 1, 1]), np.ones((1, 3), bool), 2)
    # segment 1 rows: (1/2, 1/2) and (1/3, 2/3) -> (5/12, 7/12)
    np.testing.assert_allclose(maps[0], [[1.0, 0.0], [5 / 12, 7 / 12]])


def test_strongest_heads_are_found_per_seed_whatever_head_holds_the_role():
    uniform = np.array([[0.8, 0.2], [0.5, 0.5]])
    seed0 = np.tile(uniform, (1, 2, 1, 1))  # 1 layer, 2 heads, uniform ...
    seed1 = seed0.copy()
    seed0[0, 1, 0] = [0.4, 0.6]  # ... but one head puts 0.6 (3x) of segment 0's mass on 1:
    seed1[0, 0, 0] = [0.4, 0.6]  # head 2 in seed 0, head 1 in seed 1
    seed0[0, 0, 1] = [0.95, 0.05]  # 1.9x on segment 0 (seed 0 only)
    top = strongest_heads([seed0, seed1], uniform, count=2)
    assert [(q, k) for q, k, _, _ in top] == [(0, 1), (1, 0)]
    assert top[0][2] == [(0.6, 0, 1), (0.6, 0, 0)] and abs(top[0][3] - 3.0) < 1e-9
    assert abs(top[1][3] - (0.95 + 0.5) / 2 / 0.5) < 1e-9
    # a pair whose strongest head holds under MIN_MASS on average is left out
    low = np.tile(np.array([[0.95, 0.05], [0.5, 0.5]]), (1, 1, 1, 1))
    assert (0, 1) not in [(q, k) for q, k, _, _ in strongest_heads([low], uniform, count=9)]
