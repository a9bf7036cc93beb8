"""Suites as data: every variant of every suite resolves to a valid config at every budget (no
training, no data), bad suites are refused naming what is wrong, and the suites encode the
paper's tables (the swept values, the baselines, the controls)."""

from pathlib import Path

import pytest

from onepiece_jax.config import load_config
from onepiece_jax.experiments.quickstart import config_dir
from onepiece_jax.experiments.runner import plan_runs
from onepiece_jax.experiments.suites import (
    BUDGETS,
    SUITES,
    Finding,
    Suite,
    Variant,
    check_suite,
    get_budget,
    get_suite,
)


@pytest.mark.parametrize("budget", sorted(BUDGETS))
@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_variant_resolves(name, budget, tmp_path):
    runs = plan_runs(get_suite(name), seeds=1, budget=budget, out=tmp_path,
                     data_dir=Path("data"), prepare=False)
    assert [r.variant.name for r in runs] == [v.name for v in SUITES[name].variants]
    for run in runs:
        for key, value in run.variant.overrides.items():
            node = run.config
            for part in key.split("."):
                node = node[part]
            assert node == value, (run.variant.name, key)


def test_unknown_suite_and_budget_name_the_choices():
    with pytest.raises(ValueError, match="unknown suite 'tabel2'.*baselines"):
        get_suite("tabel2")
    with pytest.raises(ValueError, match="unknown budget 'huge'.*small"):
        get_budget("huge")


def _runs_by_name(suite: str, budget: str, out: Path) -> dict:
    """Seed 0 of every variant, resolved without data or training."""
    return {r.variant.name: r for r in plan_runs(get_suite(suite), seeds=1, budget=budget,
                                                 out=out, data_dir=Path("data"), prepare=False)}


def test_medium_budget_caps_epochs_but_keeps_each_configs_recipe(tmp_path):
    medium = _runs_by_name("retrieval_strategy", "medium", tmp_path)
    full = _runs_by_name("retrieval_strategy", "full", tmp_path)
    shipped = load_config(config_dir() / "synthetic_search_retrieval.py")
    for name, run in medium.items():
        assert run.config.train.epochs == 5 < shipped.train.epochs
        assert run.config.train.learning_rate == shipped.train.learning_rate
        expected = full[name].config.copy_and_resolve_references()
        expected.train.epochs = 5
        expected.dataset.path = run.config.dataset.path
        expected.dataset.build_dir = run.config.dataset.build_dir
        assert run.config.to_dict() == expected.to_dict(), name
        assert "synthetic-5000u-10000i-" in str(run.config.dataset.path)
    readout = _runs_by_name("readout", "medium", tmp_path)
    assert readout["k2_own_nobce.no_sd"].config.train.epochs == 10  # a variant's own epochs win
    assert get_budget("medium").seeds == 3


@pytest.mark.parametrize("suite, message", [
    (Suite("s", "t", "p", (Variant("a", "A", "synthetic", "x.py"),) * 2), "duplicate"),
    (Suite("s", "t", "p", (Variant("a", "A", "nowhere", "x.py"),)), "unknown dataset 'nowhere'"),
    (Suite("s", "t", "p", (Variant("A B", "A", "synthetic", "x.py"),)), "names use only"),
    (Suite("s", "t", "p", (Variant("a", "A", "synthetic", "x.py"),),
           findings=(Finding("f", ("a",), ("zz",)),)), "unknown variant 'zz'"),
    (Suite("s", "t", "p", (Variant("a", "A", "synthetic", "x.py"),),
           findings=(Finding("f", ("a",), (), expect="maybe"),)), "expect='maybe'"),
    (Suite("s", "t", "p", (Variant("a", "A", "synthetic", "x.py", reference="ceiling"),)),
     "reference='ceiling'"),
    (Suite("s", "t", "p", (Variant("a", "A", "ml100k", "x.py", reference="oracle"),)),
     "on synthetic logs"),
])
def test_bad_suites_are_refused(suite, message):
    with pytest.raises(ValueError, match=message):
        check_suite(suite)


def test_suites_encode_the_papers_sweeps():
    block = [v for v in get_suite("block_size").variants if v.trains]
    assert [v.overrides["context.num_candidates"] for v in block] == [1, 4, 8, 12]
    pa = [v for v in get_suite("context").variants if v.name.startswith("pa")]
    assert [3 * v.overrides["context.pa_group_size"] for v in pa] == [9, 21, 30, 60, 90]
    scaling = get_suite("data_scaling").variants
    assert {v.series for v in scaling} == {"SASRec", "HSTU", "OnePiece"}
    assert sorted({v.x for v in scaling}) == [10, 25, 50, 100]
    labels = {v.label for v in get_suite("baselines").variants}
    assert labels >= {"SASRec", "HSTU", "HSTU+PA", "ReaRec", "ReaRec+PA", "OnePiece",
                      "Popularity (day)", "Popularity (week)"}
    for name, model in (("baselines", "synth_ranking.onepiece"), ("block_size", "m12"),
                        ("ranking_strategy", "synth.k3_progressive")):
        suite = get_suite(name)  # each synthetic ranking table has its floor and oracle rows
        assert sorted(v.reference for v in suite.variants if v.reference) == ["feature_floor",
                                                                              "oracle"]
        assert any(f.plus == (model,) and f.minus[0].endswith("feature_floor")
                   for f in suite.findings)


def test_controls_run_on_worlds_without_the_planted_signal():
    context = get_suite("context")
    worlds = {v.data for v in context.variants}
    assert worlds == {"synthetic", "synthetic_flat", "synthetic_no_intent"}
    controls = [f for f in context.findings if f.expect == "none"]
    assert {context.variant(n).data for f in controls for n in (*f.plus, *f.minus)} == \
        {"synthetic_flat", "synthetic_no_intent"}


def test_readout_findings_compare_rows_that_differ_only_in_the_named_axis():
    """Each within-OnePiece finding of the read-out suite changes one axis (read-out, objective,
    BCE, BCE's negatives, K or the SD tokens) and nothing else, so its effect can be attributed."""
    suite = get_suite("readout")
    axes = {"read-out": {"model.readout"}, "loss": {"loss.kind"}, "BCE": {"loss.weights.bce"},
            "BCE negatives": {"loss.bce_negatives", "loss.negatives.uniform",
                              "loss.negatives.popular"},
            "reasoning": {"model.reasoning_steps", "loss.strategy"},
            "SD tokens": {"model.use_sd", "model.readout"}}
    seen = set()
    for finding in suite.findings:
        (plus,), (minus,) = finding.plus, finding.minus
        a, b = suite.variant(plus), suite.variant(minus)
        if a.config != b.config:  # the SASRec comparison
            continue
        differ = {k for k in {*a.overrides, *b.overrides}
                  if a.overrides.get(k) != b.overrides.get(k)}
        matched = [name for name, keys in axes.items() if differ == keys]
        assert matched, (finding.claim, differ)
        seen.update(matched)
    assert seen >= set(axes)


def test_readout_suite_runs_the_shipped_lean_beauty_config_and_its_k0_twin(tmp_path):
    """The README's 3-seed Beauty row (``configs/beauty_onepiece_lean.py``) is the suite's
    ``k2_own_nobce.no_sd``, so the suite's seeds reproduce it; its K=0 twin differs only in K."""
    runs = _runs_by_name("readout", "full", tmp_path)

    def as_dict(config):  # the build folder is the runner's cache, not the model
        d = config.to_dict()
        d["dataset"].pop("build_dir")
        return d

    path = runs["sasrec"].config.dataset.path
    lean = as_dict(load_config(config_dir() / "beauty_onepiece_lean.py",
                               ["--config.seed=0", f"--config.dataset.path={path}"]))
    assert as_dict(runs["k2_own_nobce.no_sd"].config) == lean
    k0 = as_dict(runs["k0_own_nobce.no_sd"].config)
    assert (k0["model"].pop("reasoning_steps"), k0["loss"].pop("strategy")) == (0, "last_step")
    assert (lean["model"].pop("reasoning_steps"), lean["loss"].pop("strategy")) == \
        (2, "progressive")
    assert k0 == lean
