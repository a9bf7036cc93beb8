"""The quickstart's report: a side-by-side table with the protocol, and a legible PNG."""

from onepiece_jax.experiments.quickstart import METRICS, comparison_table, plot_validation


def _run(scale):
    metrics = {m: scale * (i + 1) / 10 for i, m in enumerate(METRICS)}
    history = [{"epoch": e, "metrics": {"NDCG@10": scale * e / 10}} for e in (1, 2, 3)]
    results = {"protocol": "ml100k | test | proto", "metrics": metrics}
    return {"history": history, "results": results}


def test_table_puts_models_side_by_side_with_the_protocol():
    table = comparison_table({"SASRec": _run(0.1), "OnePiece": _run(0.2)})
    lines = table.splitlines()
    assert lines[0] == "protocol: ml100k | test | proto"
    assert "| metric | SASRec | OnePiece |" in lines
    row = next(line for line in lines if line.startswith("| NDCG@10 |"))
    assert row == "| NDCG@10 | 0.0100 | 0.0200 |"


def test_plot_is_written(tmp_path):
    path = tmp_path / "v.png"
    plot_validation({"SASRec": _run(0.1), "OnePiece": _run(0.2)}, path)
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
