"""The ``onepiece`` command line.

Each command group registers itself with one ``_add_<group>_parser(subparsers)`` function listed
in ``COMMAND_GROUPS``; a subcommand sets ``handler`` (a function of the parsed args returning an
exit code) and, if it takes ``--config.NAME=VALUE`` overrides, ``takes_overrides=True``; the
overrides arrive as ``args.overrides`` (a list of strings). Heavy imports stay inside handlers so
``onepiece --help`` and the data commands start fast.

Bad input (``DataError`` / ``ValueError``) and failed downloads print one ``error: …`` line to
stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from onepiece_jax.data.fetch import FetchError

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3


def _data_stats(args: argparse.Namespace) -> int:
    """A dataset read plainly (``--dataset``, ``--path``), or as a config reads it (its funnel
    options, event order and, for ranking, the requests made from sessions)."""
    from onepiece_jax.data.stats import dataset_stats

    if (args.config is None) == (args.dataset is None):
        raise ValueError("data stats: give --dataset and --path, or --config (with "
                         "--config.NAME=VALUE overrides), not both")
    if args.config is not None:
        from onepiece_jax.config import load_config
        from onepiece_jax.data.tfds_builder import read_log

        if args.path is not None:
            raise ValueError("data stats: with --config the data is config.dataset.path; "
                             "write --config.dataset.path=PATH instead of --path")
        log = read_log(load_config(args.config, args.overrides))
    elif args.overrides or args.path is None:
        raise ValueError("data stats: --dataset needs --path and takes no --config.NAME "
                         "overrides (give --config FILE for those)")
    else:
        from onepiece_jax.data.readers import read_dataset

        log = read_dataset(args.dataset, args.path)
    print(json.dumps(dataset_stats(log), indent=2))
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from onepiece_jax.data.fetch import fetch_ml100k

    print(fetch_ml100k(args.out))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from onepiece_jax.data.readers.synthetic import SynthConfig, generate_synthetic

    print(generate_synthetic(args.out, num_users=args.users, num_items=args.items,
                             seed=args.seed, config=SynthConfig.from_overrides(args.knobs)))
    return 0


def _data_ceiling(args: argparse.Namespace) -> int:
    from onepiece_jax.data.readers.synthetic import SynthConfig
    from onepiece_jax.eval.ceiling import ranking_ceiling, world_ceiling

    fractions = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
    if args.world is not None:
        given = [flag for flag, value in (("--users", args.users), ("--items", args.items),
                                          ("--seed", args.seed), ("--set", args.knobs))
                 if value not in (None, [])]
        if given:
            raise ValueError(f"data ceiling: --world replays the world's own arguments; "
                             f"drop {', '.join(given)}")
        out = world_ceiling(args.world, **fractions)
    elif args.users is None or args.items is None:
        raise ValueError("data ceiling: give --users and --items (a world to generate) or "
                         "--world (a generated one)")
    else:
        out = ranking_ceiling(args.users, args.items, seed=args.seed or 0,
                              config=SynthConfig.from_overrides(args.knobs), **fractions)
    print(json.dumps(out, indent=2))
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from onepiece_jax.data.tfds_builder import build_from_config

    summary = build_from_config(args.config, args.overrides, args.out)
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_knob_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="knobs", action="append", default=[], metavar="NAME=VALUE",
                        help="a generator knob (a SynthConfig field, e.g. end_aligned=True or "
                             "query_intent=False); repeatable")


def _add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """``onepiece data {stats,fetch,synth,ceiling,build}``."""
    from onepiece_jax.data.readers import READERS

    data = subparsers.add_parser("data", help="read, summarise, fetch, generate and build data")
    sub = data.add_subparsers(dest="data_command", required=True)

    stats = sub.add_parser("stats", help="print dataset statistics as one JSON object: of "
                                         "--dataset at --path, or of the data as --config "
                                         "reads it (overrides: --config.NAME=VALUE)")
    stats.add_argument("--dataset", choices=sorted(READERS))
    stats.add_argument("--path", help="the file or folder the reader expects")
    stats.add_argument("--config", help="a config .py file instead")
    stats.set_defaults(handler=_data_stats, takes_overrides=True)

    fetch = sub.add_parser("fetch", help="download a public dataset")
    fetch.add_argument("dataset", choices=["ml100k"])
    fetch.add_argument("--out", required=True, type=Path)
    fetch.set_defaults(handler=_data_fetch)

    synth = sub.add_parser("synth", help="write a synthetic dataset in the JDsearch format")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--users", required=True, type=int)
    synth.add_argument("--items", required=True, type=int)
    synth.add_argument("--seed", type=int, default=0)
    _add_knob_argument(synth)
    synth.set_defaults(handler=_data_synth)

    ceiling = sub.add_parser(
        "ceiling", help="print the ranking AUC/GAUC the synthetic logs of these arguments allow "
                        "(the generator's own odds, and with parts of them removed) and a "
                        "feature logistic regression's, as JSON")
    ceiling.add_argument("--users", type=int, help="users of the world to generate")
    ceiling.add_argument("--items", type=int, help="items of the world to generate")
    ceiling.add_argument("--seed", type=int, help="generator seed (default 0)")
    ceiling.add_argument("--world", type=Path,
                         help="instead, a world `onepiece data synth` wrote (its synth.json)")
    ceiling.add_argument("--val-fraction", type=float, default=0.1,
                         help="the ranking validation split: the fraction of requests before "
                              "the test split")
    ceiling.add_argument("--test-fraction", type=float, default=0.1,
                         help="the ranking test split: the latest fraction of requests by time")
    _add_knob_argument(ceiling)
    ceiling.set_defaults(handler=_data_ceiling)

    build = sub.add_parser("build", help="build the TFDS dataset of a config "
                                         "(overrides: --config.NAME=VALUE)")
    build.add_argument("--config", required=True, help="a config .py file")
    build.add_argument("--out", required=True)
    build.set_defaults(handler=_data_build, takes_overrides=True)


def _train(args: argparse.Namespace) -> int:
    from onepiece_jax.config import load_config
    from onepiece_jax.train.loop import NonFiniteError, train_and_evaluate

    config = load_config(args.config, args.overrides)
    try:
        train_and_evaluate(config, args.workdir, progress=not args.no_progress)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


def _eval(args: argparse.Namespace) -> int:
    from onepiece_jax.train.loop import evaluate_workdir

    evaluate_workdir(args.workdir, split=args.split, checkpoint=args.checkpoint,
                     exclude_history=args.exclude_history)
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from onepiece_jax.experiments.quickstart import run_quickstart

    run_quickstart(args.out, data_dir=args.data, budget=args.budget, seed=args.seed)
    return 0


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """``onepiece train``, ``onepiece eval`` and ``onepiece quickstart``."""
    train = subparsers.add_parser(
        "train", help="train with validation and early stopping, then evaluate on test "
                      "(resumes when the workdir has checkpoints; overrides: --config.NAME=VALUE)")
    train.add_argument("--config", required=True, help="a config .py file")
    train.add_argument("--workdir", required=True)
    train.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    train.set_defaults(handler=_train, takes_overrides=True)

    ev = subparsers.add_parser("eval", help="evaluate a checkpoint of a workdir; writes "
                                            "WORKDIR/results.json")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--split", default="test", choices=["test", "validation"])
    ev.add_argument("--checkpoint", default="best", help="best | latest | STEP")
    history = ev.add_mutually_exclusive_group()
    history.add_argument("--include-history", dest="exclude_history", action="store_false",
                         help="rank the user's history items too (RecBole's protocol)")
    history.add_argument("--exclude-history", dest="exclude_history", action="store_true",
                         help="rank the catalogue without the user's history (HSTU's protocol)")
    ev.set_defaults(exclude_history=None)  # neither flag: the workdir's config.eval
    ev.set_defaults(handler=_eval)

    qs = subparsers.add_parser("quickstart", help="fetch MovieLens-100K, train OnePiece and "
                                                  "SASRec, compare them on test")
    qs.add_argument("--out", default="runs/quickstart", type=Path)
    qs.add_argument("--data", default="data/ml-100k", type=Path,
                    help="where MovieLens-100K is (fetched there if missing)")
    qs.add_argument("--budget", default="small", choices=["small", "full"])
    qs.add_argument("--seed", default=0, type=int)
    qs.set_defaults(handler=_quickstart)


def _experiment(args: argparse.Namespace) -> int:
    from onepiece_jax.experiments.runner import SuitePreempted, run_suite
    from onepiece_jax.experiments.suites import SUITES
    from onepiece_jax.train.loop import NonFiniteError

    if args.list:
        for suite in SUITES.values():
            print(f"{suite.name:20s} {suite.paper:18s} {len(suite.variants):3d} variants  "
                  f"{suite.title}")
        return 0
    if not args.suite:
        raise ValueError("--suite NAME is required (see --list)")
    try:
        run_suite(args.suite, seeds=args.seeds, budget=args.budget, out=args.out,
                  data_dir=args.data_dir, reports=args.reports, report_only=args.report_only,
                  jobs=args.jobs, variants=args.variants, restore=args.restore)
    except SuitePreempted as e:
        print(str(e), flush=True)
    except NonFiniteError as e:
        print(f"error: {e} ({'; '.join(getattr(e, '__notes__', []))})", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


def _add_experiment_parser(subparsers: argparse._SubParsersAction) -> None:
    """``onepiece experiment``: a paper table's suite of configs × seeds, then its report."""
    ex = subparsers.add_parser(
        "experiment", help="train and evaluate a suite of configs x seeds (resumable, cached; "
                           "several invocations on one --out share its runs), then write "
                           "reports/NAME/report.md with plots")
    ex.add_argument("--suite", help="suite name (see --list)")
    ex.add_argument("--seeds", type=int, default=None,
                    help="seeds 0..N-1 (default: 1 for --budget small, 3 for medium and full)")
    ex.add_argument("--budget", default="small",
                    help="small (a smoke run of every config), medium (evidence within hours on "
                         "CPU), full (the reports), tiny (tests)")
    ex.add_argument("--out", type=Path, default=Path("runs/experiments"),
                    help="where runs, builds and synthetic logs go")
    ex.add_argument("--data-dir", type=Path, default=Path("data"),
                    help="folder with the public datasets (ml-100k/, amazon-s3rec/Beauty.txt, "
                         "taobao-userbehavior-slice/UserBehavior.csv)")
    ex.add_argument("--reports", type=Path, default=Path("reports"))
    ex.add_argument("--jobs", type=int, default=1,
                    help="runs at once, each in its own process (on CPU, 2 lets one run compile "
                         "while another trains); logs go to OUT/SUITE/_logs/")
    ex.add_argument("--variants", nargs="+", default=(), metavar="PATTERN",
                    help="train only the variants whose names match these shell-style patterns "
                         "(e.g. 'synth_ranking.*'); the report still lists the whole suite")
    ex.add_argument("--restore", nargs="+", type=Path, default=(), metavar="RUNS_JSON",
                    help="first put back the finished runs of these archives (the runs.json "
                         "beside each report), made on other machines or in earlier sittings; "
                         "those whose config and data are the suite's now count as finished")
    ex.add_argument("--report-only", action="store_true",
                    help="write the report from the finished runs, train nothing")
    ex.add_argument("--list", action="store_true", help="list the suites and exit")
    ex.set_defaults(handler=_experiment)


def _export(args: argparse.Namespace) -> int:
    from onepiece_jax.export.bundle import export_workdir

    manifest = export_workdir(args.workdir, args.out, checkpoint=args.checkpoint,
                              platforms=[p for p in args.platforms.split(",") if p],
                              items_dtype=args.items_dtype)
    print(json.dumps({"bundle": str(args.out), "model": manifest["model"]["version"],
                      "functions": sorted(manifest["functions"]),
                      "files": {k: v["bytes"] for k, v in manifest["files"].items()}}))
    return 0


def _serve_check(args: argparse.Namespace) -> int:
    from onepiece_jax.export.check import serve_check

    sizes = [int(s) for s in args.batch_sizes.split(",") if s]
    report = serve_check(args.bundle, data=args.data, workdir=args.workdir, split=args.split,
                         batch_sizes=sizes, tolerance=args.tolerance)
    for row in report["rows"]:
        print(f"{row['function']:<11} batch {row['batch']:>4} ({row['real_rows']:>4} real rows)"
              f"  max |bundle - in-process| = {row['max_abs']:.3g}")
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def _add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    """``onepiece export`` and ``onepiece serve-check``: serving bundles (see export/bundle.py)."""
    ex = subparsers.add_parser("export", help="write a serving bundle of a workdir's checkpoint "
                                              "(jax.export functions, weights, item vectors, "
                                              "manifest)")
    ex.add_argument("--workdir", required=True, type=Path)
    ex.add_argument("--checkpoint", default="best", help="best | latest | STEP")
    ex.add_argument("--out", required=True, type=Path, help="a new or empty directory")
    ex.add_argument("--platforms", default="cpu",
                    help="comma-separated: cpu, cuda, rocm, tpu (one artefact runs on each)")
    ex.add_argument("--items-dtype", default="float32", choices=["float32", "bfloat16"])
    ex.set_defaults(handler=_export)

    check = subparsers.add_parser("serve-check", help="run a bundle without flax or onepiece_jax "
                                                      "and compare it with the in-process model")
    check.add_argument("bundle", type=Path)
    check.add_argument("--data", type=Path, default=None,
                       help="dataset build to draw examples from (default: the bundle's)")
    check.add_argument("--workdir", type=Path, default=None,
                       help="where the checkpoint is (default: the bundle's workdir)")
    check.add_argument("--split", default="test", choices=["train", "validation", "test"])
    check.add_argument("--batch-sizes", default="1,7,128")
    check.add_argument("--tolerance", type=float, default=1e-5)
    check.set_defaults(handler=_serve_check)


COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_data_parser, _add_train_parser, _add_experiment_parser, _add_export_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onepiece", description="OnePiece in JAX/Flax")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMAND_GROUPS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` (default: sys.argv[1:]), runs the subcommand, returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not (a.startswith("--config.") and "=" in a)]
    if bad or (extra and not getattr(args, "takes_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)} "
                     "(overrides are written --config.NAME=VALUE)")
    args.overrides = extra
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FetchError, FileNotFoundError) as e:  # DataError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader of our output left (`onepiece data stats ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
