"""``model.ih_positions``: which history slot a position row belongs to (SASRec vs RecBole)."""

from __future__ import annotations

import numpy as np
import pytest


def test_from_oldest_gives_the_oldest_item_position_zero_whatever_the_padding(tiny):
    """Example 0 fills all L slots (both options agree); example 1 is half padded, so RecBole's
    right-padded numbering puts row 0 on its oldest item where the SASRec numbering uses
    slot L/2."""
    batch, catalog = tiny.batch("retrieval"), tiny.catalog()
    tokens = {}
    for option in ("from_newest", "from_oldest"):
        model, variables = tiny.init(tiny.config(ih_positions=option, use_pa=False,
                                                 use_sd=False, readout="last_token"),
                                     batch, catalog)
        tokens[option] = np.asarray(model.apply(variables, batch, catalog, method="embed")[0])
    pos = np.asarray(variables["params"]["embedder"]["ih_pos"])
    np.testing.assert_allclose(tokens["from_oldest"][0], tokens["from_newest"][0], atol=1e-6)
    length = batch["ih_item"].shape[1]
    n = int(np.count_nonzero(np.asarray(batch["ih_item"][1])))
    shift = tokens["from_oldest"][1, length - n:] - tokens["from_newest"][1, length - n:]
    np.testing.assert_allclose(shift, pos[:n] - pos[length - n:], atol=1e-5)


def test_unknown_ih_positions_is_refused_naming_the_field(tiny):
    with pytest.raises(ValueError, match="ih_positions"):
        tiny.config(ih_positions="from_middle")
