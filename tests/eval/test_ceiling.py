"""The synthetic ranking ceiling scores the very requests the generator writes with the
generator's funnel probabilities; the feature floor learns from features a model can see."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onepiece_jax import cli
from onepiece_jax.data.readers import read_dataset
from onepiece_jax.data.readers.synthetic import (
    FunnelOdds,
    SynthConfig,
    generate_synthetic,
    simulate_requests,
)
from onepiece_jax.eval.ceiling import (
    FLOOR_ROW,
    _events_before,
    feature_ranker,
    ranking_ceiling,
    reference_row,
    task_log_prob,
    world_ceiling,
)


@pytest.mark.parametrize("chunk_users", [20_000, 128])
def test_simulated_requests_are_the_written_requests(tmp_path, chunk_users):
    folder = generate_synthetic(tmp_path, num_users=300, num_items=2000, seed=7,
                                chunk_users=chunk_users)
    log = read_dataset("jdsearch", folder)
    parts = list(simulate_requests(300, 2000, seed=7, chunk_users=chunk_users))
    label = np.concatenate([p["label"] for p in parts])
    request = np.concatenate([p["request"] for p in parts])
    np.testing.assert_array_equal(label, log.requests.cand_label)
    np.testing.assert_array_equal(np.bincount(request), np.diff(log.requests.offsets))
    np.testing.assert_array_equal(  # candidate by candidate, the same request
        request, np.repeat(np.arange(len(log.requests)), np.diff(log.requests.offsets)))


def test_task_log_prob_is_the_funnel_probability():
    cfg = SynthConfig()
    odds = FunnelOdds(liked=np.array([True, False]), on_query=np.array([True, True]),
                      side_quality=np.array([0.3, -1.0]), item_quality=np.array([0.1, 0.2]))
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    quality = np.array([0.4, -0.8])
    click = sig(logit(cfg.click_rate) + cfg.pref_boost * odds.liked + cfg.query_boost + quality)
    cart = click * sig(logit(cfg.cart_rate) + 0.5 * quality)
    order = cart * sig(logit(cfg.order_rate) + 0.5 * quality)
    for task, want in (("click", click), ("cart", cart), ("order", order)):
        np.testing.assert_allclose(np.exp(task_log_prob(odds, cfg, task)), want, rtol=1e-6)


@pytest.fixture(scope="module")
def ceiling():
    return ranking_ceiling(1000, 2000, seed=1)


def test_oracle_is_far_above_chance_and_above_quality_alone(ceiling):
    for name in ("all requests", "latest 10% (test split)"):
        rows = ceiling[name]
        assert rows["oracle"]["click/AUC"] > 0.75
        assert rows["oracle"]["click/AUC"] > rows["quality only"]["click/AUC"] + 0.05


def test_feature_floor_learns_but_stays_below_the_oracle(ceiling):
    floor = ceiling["floor"]["feature logistic regression (test split)"]
    oracle = ceiling["latest 10% (test split)"]["oracle"]
    for task in ("click", "cart", "order"):
        assert 0.65 < floor[f"{task}/AUC"] < oracle[f"{task}/AUC"]


def test_events_before_counts_strictly_earlier_events_of_the_same_user_and_key():
    ev_user, ev_key, ev_time = np.array([1, 1, 1, 2]), np.array([2, 2, 3, 2]), np.array([5, 10,
                                                                                         1, 3])
    got = _events_before(ev_user, ev_key, ev_time, user=np.array([1, 1, 1, 2, 3]),
                         key=np.array([2, 2, 3, 2, 2]), time=np.array([10, 11, 2, 3, 99]))
    np.testing.assert_array_equal(got, [1, 2, 1, 0, 0])


def test_feature_ranker_names_a_missing_feature(synthetic_dir):
    log = read_dataset("jdsearch", synthetic_dir)
    with pytest.raises(ValueError, match="'genre'"):
        feature_ranker(log, leaf="genre")


def test_a_written_world_replays_to_the_same_ceiling_and_names_its_rows(tmp_path, ceiling):
    world = generate_synthetic(tmp_path, num_users=1000, num_items=2000, seed=1)
    assert world_ceiling(world) == ceiling
    assert reference_row(ceiling, "feature_floor", 0.1) == ceiling["floor"][FLOOR_ROW]
    assert reference_row(ceiling, "oracle", 0.1) == ceiling["latest 10% (test split)"]["oracle"]
    with pytest.raises(ValueError, match="'best'"):
        reference_row(ceiling, "best", 0.1)


def test_cli_scores_a_generated_world_and_refuses_mixed_arguments(tmp_path, capsys):
    world = generate_synthetic(tmp_path, num_users=200, num_items=2000, seed=3,
                               config=SynthConfig(query_boost=2.0))
    assert cli.main(["data", "ceiling", "--world", str(world), "--test-fraction", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == ranking_ceiling(200, 2000, seed=3, config=SynthConfig(query_boost=2.0),
                                  test_fraction=0.2)
    assert cli.main(["data", "ceiling", "--world", str(world), "--seed", "3"]) == 2
    assert "drop --seed" in capsys.readouterr().err
    assert cli.main(["data", "ceiling", "--users", "200"]) == 2
    assert "--users and --items" in capsys.readouterr().err
    assert cli.main(["data", "ceiling", "--world", str(tmp_path / "none")]) == 2
    assert "synth.json not found" in capsys.readouterr().err


def test_cli_prints_the_ceiling_as_json(capsys):
    assert cli.main(["data", "ceiling", "--users", "200", "--items", "2000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"all requests", "latest 10% (test split)", "floor"}
    assert 0.5 < out["all requests"]["oracle"]["order/AUC"] <= 1.0
