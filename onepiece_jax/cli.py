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
import sys
from collections.abc import Callable
from pathlib import Path

from onepiece_jax.data.fetch import FetchError

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3


def _data_stats(args: argparse.Namespace) -> int:
    from onepiece_jax.data.readers import read_dataset
    from onepiece_jax.data.stats import dataset_stats

    print(json.dumps(dataset_stats(read_dataset(args.dataset, args.path)), indent=2))
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from onepiece_jax.data.fetch import fetch_ml100k

    print(fetch_ml100k(args.out))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from onepiece_jax.data.readers.synthetic import generate_synthetic

    print(generate_synthetic(args.out, num_users=args.users, num_items=args.items,
                             seed=args.seed))
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from onepiece_jax.data.tfds_builder import build_from_config

    summary = build_from_config(args.config, args.overrides, args.out)
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """``onepiece data {stats,fetch,synth,build}``."""
    from onepiece_jax.data.readers import READERS

    data = subparsers.add_parser("data", help="read, summarise, fetch, generate and build data")
    sub = data.add_subparsers(dest="data_command", required=True)

    stats = sub.add_parser("stats", help="print dataset statistics as one JSON object")
    stats.add_argument("--dataset", required=True, choices=sorted(READERS))
    stats.add_argument("--path", required=True, help="the file or folder the reader expects")
    stats.set_defaults(handler=_data_stats)

    fetch = sub.add_parser("fetch", help="download a public dataset")
    fetch.add_argument("dataset", choices=["ml100k"])
    fetch.add_argument("--out", required=True, type=Path)
    fetch.set_defaults(handler=_data_fetch)

    synth = sub.add_parser("synth", help="write a synthetic dataset in the JDsearch format")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--users", required=True, type=int)
    synth.add_argument("--items", required=True, type=int)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_data_synth)

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
                     exclude_history=False if args.include_history else None)
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
    ev.add_argument("--include-history", action="store_true",
                    help="rank the user's history items too (RecBole's protocol); default "
                         "excludes them (HSTU's)")
    ev.set_defaults(handler=_eval)

    qs = subparsers.add_parser("quickstart", help="fetch MovieLens-100K, train OnePiece and "
                                                  "SASRec, compare them on test")
    qs.add_argument("--out", default="runs/quickstart", type=Path)
    qs.add_argument("--data", default="data/ml-100k", type=Path,
                    help="where MovieLens-100K is (fetched there if missing)")
    qs.add_argument("--budget", default="small", choices=["small", "full"])
    qs.add_argument("--seed", default=0, type=int)
    qs.set_defaults(handler=_quickstart)


COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_data_parser, _add_train_parser]


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


if __name__ == "__main__":
    sys.exit(main())
