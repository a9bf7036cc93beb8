"""Evaluation subsets (config.eval.max_examples): fixed, in split order, and labelled."""

import numpy as np

from onepiece_jax.eval.runner import eval_subset


def test_eval_subset_is_a_fixed_sorted_sample_and_names_its_size():
    arrays = {"user": np.arange(100, 200), "target": np.arange(100) * 2}
    sub, note = eval_subset(arrays, 30)
    again, _ = eval_subset(arrays, 30)
    assert note == "30 of 100 examples (fixed random subset)"
    assert sub["user"].shape == (30,) and np.array_equal(sub["user"], again["user"])
    assert np.all(np.diff(sub["user"]) > 0)  # split order kept, no duplicates
    assert np.array_equal(sub["target"], (sub["user"] - 100) * 2)  # rows stay aligned
    assert len(set(sub["user"]) - set(arrays["user"])) == 0
    assert not np.array_equal(sub["user"], arrays["user"][:30])  # a sample, not the head


def test_eval_subset_keeps_the_whole_split_when_it_is_off_or_covers_it():
    arrays = {"user": np.arange(10)}
    for n in (0, 10, 50):
        whole, note = eval_subset(arrays, n)
        assert whole is arrays and note == ""
