"""Ranking mode end to end: request → random candidate groups → per-task AUC/GAUC on test."""

import json

from onepiece_jax.data.context import ContextConfig
from onepiece_jax.data.tfds_builder import build
from onepiece_jax.train.loop import _build_key, train_and_evaluate
from tests.train.conftest import planted_ranking_log, tiny_ranking_config


def test_ranking_learns_the_planted_click_signal(tmp_path):
    cfg = tiny_ranking_config(str(tmp_path / "build"))
    build(planted_ranking_log(), ContextConfig.from_config(cfg), tmp_path / "build")
    (tmp_path / "build" / "build_key.json").write_text(json.dumps(_build_key(cfg)))
    out = train_and_evaluate(cfg, tmp_path / "run", progress=False)
    metrics = out["results"]["metrics"]
    assert "random candidate groups of C=6" in out["results"]["protocol"]
    assert metrics["view/count"] == 24 * 24  # 24 test requests × 24 candidates, none dropped
    assert metrics["view/AUC"] > 0.75, metrics
    assert metrics["view/GAUC"] > 0.75, metrics
