"""``onepiece eval``: the history flags reach the evaluation as they are meant."""

from __future__ import annotations

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
