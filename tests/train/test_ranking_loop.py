"""Ranking mode end to end: request → random candidate groups → per-task AUC/GAUC on test."""

from onepiece_jax.train.loop import ensure_built, train_and_evaluate
from tests.train.conftest import planted_ranking_log, tiny_ranking_config


def test_ranking_learns_the_planted_click_signal(tmp_path):
    cfg = tiny_ranking_config(str(tmp_path / "build"))
    ensure_built(cfg, tmp_path, log=planted_ranking_log())
    out = train_and_evaluate(cfg, tmp_path / "run", progress=False)
    metrics = out["results"]["metrics"]
    assert "random candidate groups of C=6" in out["results"]["protocol"]
    assert metrics["view/count"] == 24 * 24  # 24 test requests × 24 candidates, none dropped
    assert metrics["view/AUC"] > 0.75, metrics
    assert metrics["view/GAUC"] > 0.75, metrics
