"""A suite's report: ``report.md`` (tables with mean ± std, findings, protocols, commands), PNG
plots and ``summary.json``, generated from the runs' workdirs — never edited by hand.

Everything here is a pure function of the finished runs (``RunRecord``s read from the
workdirs), so a report can be regenerated at any time, and tested without training.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onepiece_jax.experiments.suites import BUDGETS, DATASETS, Finding, Suite, Variant
from onepiece_jax.files import read_json


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a report needs of one run; ``result`` is None until the run has finished."""

    variant: Variant
    seed: int
    mode: str
    headline: str
    command: str
    digest: str
    workdir: Path
    result: dict | None
    history: list
    record: dict
    status: str = "done"  # runner.run_status: only a "done" run's result counts
    data_id: str | None = None  # runner.data_identity of the run's data
    holder: str | None = None  # runner.run_holder: who is running it now, if anyone

    @property
    def done(self) -> bool:
        return self.result is not None and self.status == "done"


@dataclasses.dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std (ddof=1); NaN with one seed
    n: int

    def text(self) -> str:
        if self.n == 0:
            return "–"
        return f"{self.mean:.4f}" if self.n == 1 else f"{self.mean:.4f} ± {self.std:.4f}"


def stat(values: Sequence[float]) -> Stat:
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        return Stat(float("nan"), float("nan"), 0)
    return Stat(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
                int(arr.size))


def load_records(runs: Sequence) -> list[RunRecord]:
    """``runner.Run``s → records, reading ``results.json`` / ``history.json`` where present; a
    run made with another config or on other data (or whose data is missing, so that it cannot
    be checked) is listed but not counted."""
    from onepiece_jax.experiments.runner import run_holder, run_status

    out = []
    for run in runs:
        results, history = run.workdir / "results.json", run.workdir / "history.json"
        record = run.workdir / "experiment.json"
        out.append(RunRecord(
            variant=run.variant, seed=run.seed, mode=str(run.config.mode),
            headline=str(run.config.train.early_stop_metric), command=run.command,
            digest=run.digest, workdir=run.workdir,
            result=read_json(results, "results") if results.is_file() else None,
            history=read_json(history, "history") if history.is_file() else [],
            record=read_json(record, "run record") if record.is_file() else {},
            status=run_status(run), data_id=run.data_id, holder=run_holder(run)))
    return out


# --------------------------------------------------------------------------- aggregation
def metric_values(records: Sequence[RunRecord], variant: str, metric: str) -> dict[int, float]:
    """{seed: value} of one variant's finished runs."""
    return {r.seed: float(r.result["metrics"][metric]) for r in records
            if r.variant.name == variant and r.done and metric in r.result["metrics"]}


def table_columns(records: Sequence[RunRecord]) -> list[str]:
    """The metrics shown: HR/NDCG@K and MRR (retrieval), every task's AUC and GAUC (ranking)."""
    for r in records:
        if r.done:
            names = list(r.result["metrics"])
            if r.mode == "retrieval":
                return [m for m in names if m.split("@")[0] in ("HR", "NDCG") or m == "MRR"]
            return [m for m in names if m.endswith("/AUC") or m.endswith("/GAUC")]
    return []


@dataclasses.dataclass(frozen=True)
class FindingResult:
    finding: Finding
    metric: str
    deltas: dict[int, float]  # per seed: Σ plus − Σ minus

    @property
    def stat(self) -> Stat:
        return stat(list(self.deltas.values()))

    @property
    def verdict(self) -> str:
        """Sign consistency over seeds: every seed agrees, or the finding is not established."""
        d = np.array(list(self.deltas.values()))
        if d.size == 0:
            return "not run"
        suffix = " (1 seed)" if d.size == 1 else ""
        positive, negative = bool((d > 0).all()), bool((d < 0).all())
        if self.finding.expect == "none":
            return ("gain persists: control failed" if positive
                    else "no consistent gain, as expected") + suffix
        if positive:
            return "reproduced" + suffix
        return ("reversed" if negative else "not reproduced (mixed signs)") + suffix


def evaluate_finding(finding: Finding, records: Sequence[RunRecord]) -> FindingResult:
    """Per-seed differences on the headline metric of the finding's variants (one metric: a
    finding compares like with like); seeds missing any of its runs are left out."""
    names = (*finding.plus, *finding.minus)
    metrics = {r.headline for r in records if r.variant.name in names}
    if len(metrics) > 1:
        raise ValueError(f"finding {finding.claim!r} mixes headline metrics {sorted(metrics)}")
    metric = metrics.pop() if metrics else ""
    values = {name: metric_values(records, name, metric) for name in names}
    seeds = set.intersection(*(set(v) for v in values.values())) if values else set()
    deltas = {s: sum(values[n][s] for n in finding.plus) - sum(values[n][s] for n in finding.minus)
              for s in sorted(seeds)}
    return FindingResult(finding, metric, deltas)


def groups(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[Variant]]:
    """Variants by (dataset, mode), in suite order: one table and one plot each."""
    out: dict[tuple[str, str], list[Variant]] = {}
    for r in records:
        variants = out.setdefault((r.variant.data, r.mode), [])
        if r.variant not in variants:
            variants.append(r.variant)
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# --------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(labels: Sequence[str], stats: Sequence[Stat], metric: str, title: str,
              path: Path, muted: Sequence[bool] | None = None) -> None:
    """Horizontal bars (long labels stay legible), mean with a ±std error bar; ``muted`` bars
    (reference rows, not models) are grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.42 * len(labels)))
    y = np.arange(len(labels))
    means = [s.mean if s.n else 0.0 for s in stats]
    errors = [s.std if s.n > 1 else 0.0 for s in stats]
    colors = ["0.6" if g else "tab:blue" for g in (muted or [False] * len(labels))]
    ax.barh(y, means, xerr=errors, color=colors, alpha=0.8, capsize=3)
    seeds = max((s.n for s in stats), default=0)
    for yi, mean, err, s in zip(y, means, errors, stats, strict=True):
        if s.n:  # the value right of its error bar, and its seeds where fewer than the rest
            fewer = f" ({s.n} seed{'s' * (s.n != 1)})" if s.n < seeds else ""
            ax.text(mean + err, yi, f"  {mean:.4f}{fewer}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    low = 0.0
    if metric.endswith("AUC"):  # 0.5 is chance: start there unless a bar is below it
        low = max(0.0, min([m - e for m, e in zip(means, errors, strict=True)] + [0.5]) - 0.02)
    high = max(m + e for m, e in zip(means, errors, strict=True))
    ax.set_xlim(low, high + 0.25 * max(high - low, 1e-6))
    upto = "" if len({s.n for s in stats if s.n}) <= 1 else "up to "
    ax.set_xlabel(f"test {metric} (mean ± std over {upto}{seeds} seed{'s' * (seeds != 1)})")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lines(series: dict[str, list[tuple[float, Stat]]], metric: str, x_label: str,
               title: str, path: Path, references: Mapping[str, Stat] | None = None) -> None:
    """One line per series (x = the swept value), ±std error bars; each reference row (not a
    model: a floor, a ceiling) a dashed horizontal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in series.items():
        points = sorted((x, s) for x, s in points if s.n)
        if not points:
            continue
        xs = [x for x, _ in points]
        ax.errorbar(xs, [s.mean for _, s in points],
                    yerr=[s.std if s.n > 1 else 0.0 for _, s in points],
                    marker="o", capsize=3, label=name)
        ax.set_xticks(xs)
    for (name, ref), color in zip((references or {}).items(), ("0.45", "0.2"), strict=False):
        if ref.n:
            ax.axhline(ref.mean, linestyle="--", linewidth=1, color=color, label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- markdown
def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _group_section(suite: Suite, key: tuple[str, str], variants: list[Variant],
                   records: Sequence[RunRecord], out_dir: Path) -> tuple[list[str], dict]:
    data, mode = key
    mine = [r for r in records if r.variant in variants]
    columns = table_columns(mine)
    stats = {v.name: {m: stat(list(metric_values(mine, v.name, m).values())) for m in columns}
             for v in variants}
    models = [stats[v.name] for v in variants if not v.reference]  # a ceiling is not a winner
    best = {m: max((s[m].mean for s in models if s[m].n), default=None) for m in columns}
    rows = []
    for v in variants:
        cells = [f"**{c}**" if not v.reference and stats[v.name][m].n
                 and stats[v.name][m].mean == best[m] else c
                 for m, c in ((m, stats[v.name][m].text()) for m in columns)]
        n = max((s.n for s in stats[v.name].values()), default=0)
        rows.append([v.label, *cells, str(n)])
    title = f"{DATASETS[data].title} — {mode}"
    lines = [f"### {title}", ""] + _md_table(["variant", *columns, "seeds"], rows) + [""]
    protocols: dict[str, list[str]] = {}
    for r in mine:
        if r.done:
            labels = protocols.setdefault(r.result["protocol"], [])
            if r.variant.label not in labels:
                labels.append(r.variant.label)
    for protocol, labels in protocols.items():  # labels may hold commas: "SASRec, 10% of users"
        rows_named = "every row" if len(protocols) == 1 else "; ".join(labels)
        lines.append(f"- protocol ({rows_named}): `{protocol}`")
    among = (" among the models (reference rows are not)" if any(v.reference for v in variants)
             else "")
    lines += ["- cells: mean ± sample std over seeds (test split, best-validation checkpoint); "
              f"bold = best mean in the column{among}", ""]
    headline = next((r.headline for r in mine), "")
    name = f"{slug(data)}_{mode}"
    if headline in columns and any(stats[v.name][headline].n for v in variants):
        plot_bars([v.label for v in variants], [stats[v.name][headline] for v in variants],
                  headline, f"{suite.name}: {title}", out_dir / f"{name}.png",
                  [bool(v.reference) for v in variants])
        lines += [f"![{title}]({name}.png)", ""]
        series: dict[str, list[tuple[float, Stat]]] = {}
        for v in variants:
            if v.series and v.x is not None:
                series.setdefault(v.series, []).append((float(v.x), stats[v.name][headline]))
        if series:
            plot_lines(series, headline, suite.x_label, f"{suite.name}: {title}",
                       out_dir / f"{name}_curve.png",
                       {v.label: stats[v.name][headline] for v in variants if v.reference})
            lines += [f"![{title}, curve]({name}_curve.png)", ""]
    summary = {v.name: {m: dataclasses.asdict(s) for m, s in stats[v.name].items()}
               for v in variants}
    return lines, summary


def _findings_section(results: Sequence[FindingResult]) -> list[str]:
    rows = []
    for fr in results:
        per_seed = ", ".join(f"{d:+.4f}" for d in fr.deltas.values()) or "–"
        s = fr.stat
        effect = "–" if s.n == 0 else (f"{s.mean:+.4f}" if s.n == 1
                                       else f"{s.mean:+.4f} ± {s.std:.4f}")
        expect = "no gain (control)" if fr.finding.expect == "none" else "gain"
        rows.append([fr.finding.claim, fr.finding.paper or "–", expect, fr.metric, effect,
                     per_seed, fr.verdict])
    return (["## Findings", "",
             "Δ = Σ metric(plus variants) − Σ metric(minus variants), paired by seed; a finding "
             "is *reproduced* when Δ > 0 in every seed, *reversed* when Δ < 0 in every seed. "
             "A control expects no consistent gain.", ""]
            + _md_table(["finding", "paper", "expected", "metric", "Δ mean ± std",
                         "Δ per seed", "verdict"], rows) + [""])


_NOT_COUNTED = {"stale": "stale: made with another config or data, not counted",
                "unchecked": "unchecked: its data is missing, not counted"}


def _live_status(r: RunRecord) -> str:
    """The record's status, told apart by the run's lock: a run recorded as running that
    nobody holds was killed (it resumes when the suite runs again)."""
    if r.holder is not None:
        return f"running: {r.holder}"
    status = r.record.get("status", "not started")
    if status == "done" and r.record.get("restored_from"):
        return f"done (restored from {Path(r.record['restored_from']).name})"
    return "interrupted: resumes when the suite runs again" if status == "running" else status


def _runs_section(records: Sequence[RunRecord]) -> list[str]:
    rows, commands = [], []
    for r in records:
        epochs = len(r.history)
        best = (max(r.history, key=lambda h: h["value"])["epoch"] if r.history else "–")
        step = r.result.get("checkpoint", {}).get("step", "–") if r.done else "–"
        seconds = r.record.get("seconds")
        status = _NOT_COUNTED.get(r.status) or _live_status(r)
        value = r.result["metrics"].get(r.headline) if r.done else None
        rows.append([r.variant.name, str(r.seed), status,
                     str(epochs), str(best), str(step),
                     f"{r.headline} {value:.4f}" if value is not None else "–",
                     f"{seconds:.0f}" if isinstance(seconds, int | float) else "–", r.digest])
        commands.append(f"- `{r.variant.name}` seed {r.seed}: `{r.command}`")
    total = sum(float(r.record.get("seconds", 0.0)) for r in records)
    return (["## Runs", "", f"Total wall time of the runs: {total / 60:.1f} min.", ""]
            + _md_table(["variant", "seed", "status", "epochs", "best epoch", "step (best)",
                         "test (headline metric)", "wall s", "config hash"], rows)
            + ["", "<details><summary>Exact command of every run</summary>", "", *commands,
               "", "</details>", ""])


def _data_line(key: str, data_id: str | None) -> str:
    """What a dataset is: the signals planted in a synthetic world, or which files a public
    dataset's runs were checked against (a reader can hash their own copy the same way)."""
    world = DATASETS[key]
    if world.planted:
        return f"- **{world.title}**: {world.planted}"
    where = f"- **{world.title}** ({world.source}): `{world.path}`"
    if data_id is None:
        return f"{where} not found, so its runs are not counted"
    return f"{where}, files {data_id} (`onepiece_jax.experiments.runner.data_identity`)"


def render_report(suite: Suite, records: Sequence[RunRecord], *, budget: str, seeds: int,
                  command: str, out_dir: Path) -> tuple[str, dict]:
    """The markdown text and the summary dict; writes the plots into ``out_dir``."""
    finished = sum(r.done for r in records)
    lines = [f"# `{suite.name}`: {suite.title} (paper {suite.paper})", "",
             f"Generated by `{command}` on {datetime.date.today().isoformat()}; regenerate it "
             "with the same command (add `--report-only` to skip training). Do not edit.", "",
             f"- budget `{budget}`: {BUDGETS[budget].description}",
             f"- seeds: {', '.join(str(s) for s in range(seeds))}; runs finished: {finished} "
             f"of {len(records)}" + ("" if finished == len(records) else " — INCOMPLETE"), ""]
    if suite.signals:
        lines += ["## What each component should exploit", "", suite.signals, ""]
    data = dict.fromkeys((r.variant.data, r.data_id) for r in records)
    lines += ["## Data", "", *(_data_line(key, data_id) for key, data_id in data), ""]
    lines += ["## Results", ""]
    summary: dict = {"suite": suite.name, "budget": budget, "seeds": seeds, "command": command,
                     "variants": {}, "findings": []}
    for key, variants in groups(records).items():
        section, stats = _group_section(suite, key, variants, records, out_dir)
        lines += section
        summary["variants"].update(stats)
    results = [evaluate_finding(f, records) for f in suite.findings]
    if results:
        lines += _findings_section(results)
        summary["findings"] = [{"claim": fr.finding.claim, "paper": fr.finding.paper,
                                "expect": fr.finding.expect, "metric": fr.metric,
                                "deltas": fr.deltas, "verdict": fr.verdict} for fr in results]
    if suite.attention:
        from onepiece_jax.experiments.attention import attention_section

        lines += attention_section(records, out_dir)
    lines += _runs_section(records)
    return "\n".join(lines), summary


def write_report(suite: Suite, runs: Sequence, *, budget: str, seeds: int, command: str,
                 out_dir: Path) -> Path:
    """Writes ``out_dir/report.md``, its PNGs, ``summary.json`` and the finished runs' archive
    (``archive.ARCHIVE``, from which ``--restore`` rebuilds them); returns the report path.
    A PNG the report does not show (drawn by an earlier report of other rows) is deleted, so
    that the folder, which gets committed as it is, holds only this report's plots."""
    from onepiece_jax.experiments.archive import ARCHIVE, pack_runs, write_archive

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(runs)
    text, summary = render_report(suite, records, budget=budget, seeds=seeds,
                                  command=command, out_dir=out_dir)
    write_archive(out_dir / ARCHIVE, pack_runs(records, suite=suite.name, budget=budget))
    shown = set(re.findall(r"\]\(([^()/]+\.png)\)", text))
    for png in out_dir.glob("*.png"):
        if png.name not in shown:
            png.unlink()
    (out_dir / "report.md").write_text(text + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return out_dir / "report.md"
