"""``onepiece eval``: the history flags reach the evaluation as they are meant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onepiece_jax import cli
from onepiece_jax.train import loop


@pytest.mark.parametrize("flags, expected", [([], None), (["--include-history"], False),
                                             (["--exclude-history"], True)])
def test_eval_history_flags_override_the_workdir_config_only_when_given(monkeypatch, flags,
                                                                        expected):
    seen = {}
    monkeypatch.setattr(loop, "evaluate_workdir", lambda workdir, **kw: seen.update(kw))
    assert cli.main(["eval", "--workdir", "W", *flags]) == 0
    assert seen["exclude_history"] is expected


def test_eval_refuses_both_history_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--workdir", "W", "--include-history", "--exclude-history"])
    assert "not allowed with" in capsys.readouterr().err


def test_output_cut_short_by_its_reader_is_not_an_error(tmp_path):
    """``onepiece data stats ... | head``: the reader leaving is not a traceback."""
    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\n" + "".join(f"{u}\t{u % 3}\n"
                                                             for u in range(1, 50)))
    proc = subprocess.Popen([sys.executable, "-m", "onepiece_jax.cli", "data", "stats",
                             "--dataset", "atomic", "--path", str(inter)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
