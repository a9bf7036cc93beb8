"""Atomic writes and JSON reads of the files whose presence marks a finished step, and the locks
that keep two processes out of one folder."""

import errno
import hashlib
import json
import os
import threading
import time

import pytest

from onepiece_jax import files


def test_an_interrupted_write_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    files.write_json(path, {"NDCG@10": 0.1})

    def killed(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(OSError, match="disk full"):
        files.write_json(path, {"NDCG@10": 0.2})
    assert json.loads(path.read_text()) == {"NDCG@10": 0.1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_hard_linked_copy_keeps_its_version_when_the_original_is_rewritten(tmp_path):
    original, copy = tmp_path / "a.json", tmp_path / "b.json"
    files.write_json(original, [1])
    os.link(original, copy)
    files.write_atomic(original, "[2]", sync=True)
    assert json.loads(original.read_text()) == [2] and json.loads(copy.read_text()) == [1]


def test_a_file_that_is_not_json_is_named_in_the_error(tmp_path):
    path = tmp_path / "experiment.json"
    path.write_text('{"status": "do')
    with pytest.raises(ValueError, match=f"run record {path} is not valid JSON"):
        files.read_json(path, "run record")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="experiment.json is not valid JSON"):
        files.read_json(path)


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "weights.npz"
    data = os.urandom(3 << 20)  # several read chunks
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_a_files_content_id_counts_the_companions_that_share_its_stem(tmp_path):
    inter = tmp_path / "shop.inter"
    inter.write_text("user_id:token\titem_id:token\n1\t2\n")
    alone = files.content_id(inter)
    (tmp_path / "shop.item").write_text("item_id:token\n2\n")  # RecBole's catalogue beside it
    with_items = files.content_id(inter)
    assert alone.startswith("sha256:") and with_items != alone
    (tmp_path / "other.inter").write_text("x")  # another dataset in the same folder
    (tmp_path / ".shop.inter.swp").write_text("x")
    assert files.content_id(inter) == with_items
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("shop.inter", "shop.item"):
        (moved / name).write_bytes((tmp_path / name).read_bytes())
    assert files.content_id(moved / "shop.inter") == with_items
    assert files.content_id("") is None and files.content_id(tmp_path / "missing") is None


def test_a_held_lock_is_refused_naming_its_holder_and_free_once_the_holder_is_killed(
        tmp_path, lock_holder):
    path = tmp_path / ".lock"
    assert files.lock_holder(path) is None  # no file yet
    holder = lock_holder(path)
    assert files.lock_holder(path).startswith(f"pid {holder.pid} on ")
    with pytest.raises(files.LockHeld, match=f"held by pid {holder.pid} on "):
        with files.hold_lock(path):
            raise AssertionError("entered a held lock")
    with pytest.raises(KeyError, match=f"pid {holder.pid}"):
        with files.hold_lock(path, busy=KeyError):
            raise AssertionError("entered a held lock")
    holder.kill()
    holder.wait()
    assert files.lock_holder(path) is None
    with files.hold_lock(path):
        assert files.lock_holder(path).startswith(f"pid {os.getpid()} on ")


def test_a_waiting_lock_is_entered_once_its_holder_exits(tmp_path, lock_holder):
    path = tmp_path / ".lock"
    holder = lock_holder(path)
    threading.Timer(0.5, holder.kill).start()
    start = time.monotonic()
    with files.hold_lock(path, wait=True):
        assert holder.wait(timeout=5) is not None and time.monotonic() - start >= 0.4


def test_a_lock_held_for_an_instant_is_entered_within_the_grace_period(tmp_path):
    """A probe (``lock_holder``) holds the lock for an instant: with ``grace`` the lock is taken
    once it is free again, while one held past the grace period is still refused."""
    path = tmp_path / ".lock"
    for held, grace, enters in ((0.2, 5.0, True), (30.0, 0.2, False), (30.0, 0.0, False)):
        taken, release = threading.Event(), threading.Event()

        def hold(taken, release, seconds):
            with files.hold_lock(path):  # another open file description: another holder
                taken.set()
                release.wait(seconds)

        thread = threading.Thread(target=hold, args=(taken, release, held))
        thread.start()
        taken.wait()
        try:
            with files.hold_lock(path, grace=grace):
                entered = True
        except files.LockHeld:
            entered = False
        release.set()
        thread.join()
        assert entered == enters, (held, grace)


def test_a_file_system_without_locks_warns_and_goes_on_unlocked(tmp_path, monkeypatch):
    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    entered = False
    with pytest.warns(UserWarning, match="does not lock files .No locks available"):
        with files.hold_lock(tmp_path / ".lock"):
            entered = True
    assert entered and files.lock_holder(tmp_path / ".lock") is None

    def broken(f, how):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(files.fcntl, "flock", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        with files.hold_lock(tmp_path / ".lock"):
            raise AssertionError("entered after an unexpected lock error")


def test_a_hard_linked_copys_lock_file_is_its_own(tmp_path, lock_holder):
    """``cp -al`` links the lock files too: the copy must not wait for the original's holder,
    nor write into the original's file."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    original, copy = tmp_path / "a" / ".lock", tmp_path / "b" / ".lock"
    holder = lock_holder(original)
    os.link(original, copy)
    before = original.read_text()
    assert files.lock_holder(copy) is None
    with files.hold_lock(copy):
        assert copy.read_text().startswith(f"pid {os.getpid()} on ")
        assert files.lock_holder(original).startswith(f"pid {holder.pid} on ")
    assert original.read_text() == before and original.stat().st_nlink == 1


def test_a_lock_file_replaced_while_being_locked_is_locked_again(tmp_path, monkeypatch):
    """Another process may swap the file (a copy making its own) between open and lock: the
    lock must end on the file now at the path, or two processes would each hold one."""
    path = tmp_path / ".lock"
    real, calls = files.fcntl.flock, []

    def swapped_first(f, how):
        if not calls:
            files.write_atomic(path, "")
        calls.append(how)
        return real(f, how)

    monkeypatch.setattr(files.fcntl, "flock", swapped_first)
    with files.hold_lock(path):
        monkeypatch.setattr(files.fcntl, "flock", real)
        assert files.lock_holder(path).startswith(f"pid {os.getpid()} on ")
    assert len(calls) == 2
