"""fetch_ml100k without the network: the already-present path, wheel extraction, pip failure."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from onepiece_jax.data import fetch


def _fake_wheel(path, with_user=True):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        zf.writestr("recbole/dataset_example/ml-100k/", "")
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "user_id:token\n1\n")
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.item", "item_id:token\n2\n")
        if with_user:
            zf.writestr("recbole/dataset_example/ml-100k/ml-100k.user", "user_id:token\n3\n")
        zf.writestr("recbole/dataset_example/ml-1m/ml-1m.inter", "other\n")
    return path


def _no_pip(*args, **kwargs):
    raise AssertionError("pip must not run")


def test_skips_when_files_present(tmp_path, monkeypatch):
    for name in fetch.ML100K_FILES:
        (tmp_path / name).write_text("x")
    monkeypatch.setattr(subprocess, "run", _no_pip)
    assert fetch.fetch_ml100k(tmp_path) == tmp_path


def test_extracts_only_ml100k_members(tmp_path):
    out = fetch.extract_ml100k(_fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl"),
                               tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(fetch.ML100K_FILES)
    assert (out / "ml-100k.user").read_text() == "user_id:token\n3\n"


def test_extract_names_missing_members(tmp_path):
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", with_user=False)
    with pytest.raises(fetch.FetchError, match="ml-100k.user"):
        fetch.extract_ml100k(wheel, tmp_path / "out")


def test_fetch_uses_pip_download_then_extracts(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        _fake_wheel(f"{dest}/recbole-1.2.1-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = fetch.fetch_ml100k(tmp_path / "ml")
    assert (out / "ml-100k.inter").is_file()
    assert calls[0][1:4] == ["-m", "pip", "download"] and "recbole==1.2.1" in calls[0]


def test_fetch_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for recbole==1.2.1"))
    with pytest.raises(fetch.FetchError, match="No matching distribution"):
        fetch.fetch_ml100k(tmp_path / "ml")
