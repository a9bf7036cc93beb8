"""The report: mean ± std tables per dataset, findings paired by seed with sign-consistency
verdicts, protocols and commands, incomplete suites flagged, legible plots."""

import dataclasses
from pathlib import Path

import pytest

from onepiece_jax.experiments.report import RunRecord, evaluate_finding, render_report, stat
from onepiece_jax.experiments.suites import Finding, Suite, Variant

PROTOCOL = "synthetic | test | leave-one-out | proto"


def _record(variant: Variant, seed: int, value: float | None, tmp_path: Path) -> RunRecord:
    result = None if value is None else {
        "protocol": PROTOCOL, "split": "test", "checkpoint": {"which": "best", "step": 9},
        "metrics": {"HR@10": value / 2, "NDCG@10": value, "Recall@10": value / 2, "MRR": value,
                    "count": 10.0}}
    return RunRecord(variant=variant, seed=seed, mode="retrieval", headline="NDCG@10",
                     command=f"onepiece train --config configs/x.py --config.seed={seed}",
                     digest=f"d{seed}", workdir=tmp_path, result=result,
                     history=[{"epoch": 1, "value": 0.1}, {"epoch": 2, "value": 0.2}],
                     record={"status": "done" if value is not None else "running",
                             "seconds": 60.0})


VARIANTS = (Variant("a", "Model A", "synthetic", "x.py", series="s", x=1),
            Variant("b", "Model B", "synthetic", "x.py", series="s", x=2))


def _records(tmp_path, values_a, values_b):
    return ([_record(VARIANTS[0], s, v, tmp_path) for s, v in enumerate(values_a)]
            + [_record(VARIANTS[1], s, v, tmp_path) for s, v in enumerate(values_b)])


def test_stat_is_mean_and_sample_std():
    s = stat([0.1, 0.2, 0.3])
    assert s.n == 3 and s.mean == pytest.approx(0.2) and s.std == pytest.approx(0.1)
    assert s.text() == "0.2000 ± 0.1000" and stat([0.5]).text() == "0.5000"
    assert stat([]).text() == "–"


@pytest.mark.parametrize("b_values, verdict", [
    ([0.2, 0.3, 0.4], "reproduced"),
    ([0.05, 0.05, 0.05], "reversed"),
    ([0.2, 0.05, 0.4], "not reproduced (mixed signs)"),
])
def test_finding_verdict_needs_every_seed_to_agree(tmp_path, b_values, verdict):
    records = _records(tmp_path, [0.1, 0.1, 0.1], b_values)
    result = evaluate_finding(Finding("B > A", ("b",), ("a",)), records)
    assert result.verdict == verdict and result.metric == "NDCG@10"
    assert result.deltas == pytest.approx({s: b - 0.1 for s, b in enumerate(b_values)})


def test_control_finding_expects_no_consistent_gain(tmp_path):
    records = _records(tmp_path, [0.1, 0.1], [0.2, 0.05])
    control = Finding("no gain", ("b",), ("a",), expect="none")
    assert evaluate_finding(control, records).verdict == "no consistent gain, as expected"
    records = _records(tmp_path, [0.1, 0.1], [0.2, 0.3])
    assert evaluate_finding(control, records).verdict == "gain persists: control failed"


def test_findings_pair_seeds_and_skip_unfinished_ones(tmp_path):
    records = _records(tmp_path, [0.1, 0.1, None], [0.2, 0.3, 0.4])
    result = evaluate_finding(Finding("B > A", ("b",), ("a",)), records)
    assert sorted(result.deltas) == [0, 1] and result.verdict == "reproduced"


def test_report_has_tables_findings_protocol_commands_and_plots(tmp_path):
    suite = Suite("demo", "Demo suite", "Table 9", VARIANTS,
                  findings=(Finding("B > A", ("b",), ("a",), paper="0.1 → 0.2"),),
                  x_label="swept value")
    records = _records(tmp_path, [0.10, 0.12, None], [0.20, 0.22, 0.24])
    text, summary = render_report(suite, records, budget="small", seeds=3,
                                  command="onepiece experiment --suite demo", out_dir=tmp_path)
    assert "runs finished: 5 of 6 — INCOMPLETE" in text
    assert "| Model A | 0.0550 ± 0.0071 | 0.1100 ± 0.0141 | 0.1100 ± 0.0141 | 2 |" in text
    assert "| Model B | **0.1100 ± 0.0100** | **0.2200 ± 0.0200** | **0.2200 ± 0.0200** | 3 |" \
        in text
    assert f"- protocol (every row): `{PROTOCOL}`" in text
    assert "`onepiece experiment --suite demo`" in text
    assert "| B > A | 0.1 → 0.2 | gain | NDCG@10 | +0.1000 ± 0.0000 |" in text
    assert "onepiece train --config configs/x.py --config.seed=2" in text
    for name in ("synthetic_retrieval.png", "synthetic_retrieval_curve.png"):
        png = tmp_path / name
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert summary["variants"]["b"]["NDCG@10"]["n"] == 3
    assert summary["findings"][0]["verdict"] == "reproduced"


def test_the_runs_table_tells_a_running_run_from_one_that_was_killed(tmp_path):
    """Both are recorded as running; the run's lock says which is live and where."""
    records = _records(tmp_path, [0.1, None], [0.2, None])
    records[3] = dataclasses.replace(records[3], holder="pid 7 on node-2 since 2026-12-07")
    text, _ = render_report(Suite("demo", "Demo suite", "Table 9", VARIANTS), records,
                            budget="small", seeds=2, command="c", out_dir=tmp_path)
    assert "| a | 1 | interrupted: resumes when the suite runs again |" in text
    assert "| b | 1 | running: pid 7 on node-2 since 2026-12-07 |" in text
    assert "| b | 0 | done | 2 | 2 | 9 | NDCG@10 0.2000 | 60 | d0 |" in text  # each run's figure
    assert "| a | 1 | interrupted: resumes when the suite runs again | 2 | 2 | – | – |" in text


def test_rows_on_other_protocols_are_named_apart_even_when_labels_hold_commas(tmp_path):
    variants = (Variant("a", "SASRec, 10% of users", "synthetic", "x.py"),
                Variant("b", "HSTU, 10% of users", "synthetic", "x.py"),
                Variant("c", "OnePiece, 10% of users", "synthetic", "x.py"))
    records = [_record(v, 0, 0.1, tmp_path) for v in variants]
    records[2].result["protocol"] = "other protocol"
    text, _ = render_report(Suite("demo", "Demo suite", "Table 9", variants), records,
                            budget="small", seeds=1, command="c", out_dir=tmp_path)
    assert (f"- protocol (SASRec, 10% of users; HSTU, 10% of users): `{PROTOCOL}`" in text)
    assert "- protocol (OnePiece, 10% of users): `other protocol`" in text


def test_a_reference_row_is_tabled_and_drawn_but_never_the_best(tmp_path, monkeypatch):
    from onepiece_jax.experiments import report

    ceiling = Variant("ceil", "reference: ceiling", "synthetic", "x.py", reference="oracle")
    suite = Suite("demo", "Demo suite", "Table 9", (*VARIANTS, ceiling), x_label="swept value")
    records = _records(tmp_path, [0.10, 0.12], [0.20, 0.22]) + [
        _record(ceiling, s, 0.9, tmp_path) for s in range(2)]
    drawn = {}
    monkeypatch.setattr(report, "plot_lines", lambda *a, **k: drawn.update(refs=a[5]))
    monkeypatch.setattr(report, "plot_bars", lambda *a, **k: drawn.update(muted=a[5]))
    text, _ = render_report(suite, records, budget="small", seeds=2,
                            command="onepiece experiment --suite demo", out_dir=tmp_path)
    assert "| reference: ceiling | 0.4500 ± 0.0000 | 0.9000 ± 0.0000 |" in text
    assert "| Model B | **0.1050 ± 0.0071** | **0.2100 ± 0.0141** |" in text
    assert "bold = best mean in the column among the models (reference rows are not)" in text
    assert {k: v.mean for k, v in drawn["refs"].items()} == {"reference: ceiling": 0.9}
    assert drawn["muted"] == [False, False, True]  # the reference bar is grey


def test_rewriting_a_report_deletes_the_plots_it_no_longer_shows(tmp_path, monkeypatch):
    """A report of other rows in the same folder must not leave an earlier report's plot behind:
    the folder is committed as it is."""
    from onepiece_jax.experiments import report

    suite = Suite("demo", "Demo suite", "Table 9", VARIANTS, x_label="swept value")
    out = tmp_path / "reports"
    out.mkdir()
    (out / "notes.txt").write_text("not a plot")
    monkeypatch.setattr(report, "load_records", lambda runs: runs)
    report.write_report(suite, _records(tmp_path, [0.1], [0.2]), budget="small", seeds=1,
                        command="c", out_dir=out)
    assert (out / "synthetic_retrieval.png").is_file()
    report.write_report(suite, _records(tmp_path, [None], [None]), budget="small", seeds=1,
                        command="c", out_dir=out)
    assert "synthetic_retrieval.png" not in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md", "runs.json",
                                                  "summary.json"]
