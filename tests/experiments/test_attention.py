"""Segment-averaged attention maps: segment ids follow the token layout, masses are exact means
over valid query tokens, and malformed captures are refused."""

import numpy as np
import pytest

from onepiece_jax.experiments.attention import (
    assemble,
    segment_layout,
    segment_maps,
    sought_out,
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


def test_sought_out_ranks_cells_by_mass_over_uniform_share_and_skips_small_masses():
    uniform = np.array([[0.8, 0.2], [0.5, 0.5]])
    maps = np.tile(uniform, (1, 2, 1, 1))  # 1 layer, 2 heads, both uniform ...
    maps[0, 1, 0] = [0.4, 0.6]  # ... but for head 2's segment-0 row: 3x on segment 1
    maps[0, 0, 1] = [0.95, 0.05]  # 1.9x on segment 0; its 0.05 on segment 1 is too small
    top = sought_out(maps, uniform, ["A", "B"], count=2)
    assert [(li, hi, q, k) for li, hi, q, k, _, _ in top] == [(0, 1, 0, 1), (0, 0, 1, 0)]
    assert top[0][4:] == (0.6, 0.2)
    assert all(mass >= 0.1 for *_, mass, _ in sought_out(maps, uniform, ["A", "B"], count=9))
