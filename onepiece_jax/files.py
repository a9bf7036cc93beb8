"""Files: what a dataset's files hold (``content_id``, so that a moved dataset is the same
data), and writing and reading the small files whose presence means something: a run's record
and ``results.json`` (a run is finished when it exists), checkpoint manifests, dataset stamps,
bundle manifests. And the locks that keep two processes out of one directory.

Such a file written in place and cut short by a kill or a full disk would be read later as
finished but garbled, so writes go to a temporary sibling that replaces the file only once
complete. Replacing also gives the path a new inode, so a hard-linked copy of a folder
(``cp -al``) keeps its own version when the other is updated. A leaf module: standard library
only, used by ``train/``, ``experiments/`` and ``export/`` (whose ``serve.py`` keeps its own
hash, as it runs without this package).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_id(path: str | Path) -> str | None:
    """What a dataset's files hold, wherever they are: the SHA-256 of their names and contents
    (dot-files skipped). A folder counts all its files; a file counts with the companions that
    share its stem (S3-Rec's ``NAME_item2attributes.json`` beside ``NAME.txt``, RecBole's
    ``NAME.item`` beside ``NAME.inter``). None when
    nothing is there (or no path is given)."""
    if not str(path):
        return None
    path = Path(path)
    if path.is_file():
        files = {p.name: p for p in sorted(path.parent.iterdir())
                 if p.is_file() and (p.stem == path.stem or p.name.startswith(f"{path.stem}_"))}
    elif path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
                 if p.is_file() and not any(part.startswith(".")
                                            for part in p.relative_to(path).parts)}
    else:
        return None
    if not files:
        return None
    h = hashlib.sha256()
    for name, file in files.items():
        h.update(f"{name}\0{sha256_file(file)}\0".encode())
    return "sha256:" + h.hexdigest()[:16]


def write_atomic(path: str | Path, text: str, *, sync: bool = False) -> None:
    """Writes ``text`` to ``path`` so that a reader sees the old file or the whole new one,
    never a part; ``sync`` also flushes it to disk first (for files that vouch for others)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, value: Any, **dumps: Any) -> None:
    """``value`` as JSON (``indent=1`` unless given), written atomically."""
    write_atomic(path, json.dumps(value, **{"indent": 1, **dumps}))


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file's value; a file that is not JSON is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); it was cut short or "
                         "edited: restore it, or move its folder away") from e


# flock's errors on file systems without locks (some network and FUSE mounts): going on unlocked
# with a warning beats refusing to train there.
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


class LockHeld(RuntimeError):
    """Another process holds a lock that ``hold_lock`` was told not to wait for."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def hold_lock(path: str | Path, *, wait: bool = False,
              busy: Callable[[str], Exception] | None = None,
              grace: float = 0.0) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing, with its folder) for the
    block, and writes who holds it (pid, host, since when) into the file. Held by another
    process: waits with ``wait``, else raises ``busy(holder)`` (default ``LockHeld``) once it
    has been held for ``grace`` seconds on end, so that ``lock_holder``'s probe, which holds it
    for an instant, is not taken for a holder. The kernel drops the lock when its holder exits,
    even killed, so it never goes stale. Where the file system has no locks it warns and goes
    on unlocked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + grace
    while True:
        with _own_lock_file(path) as f:
            locked = _flock(f, wait=wait)
            if locked is False and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            if locked is False:
                raise (busy or (lambda h: LockHeld(path, h)))(_holder(f))
            if locked is True and _inode(path) != os.fstat(f.fileno()).st_ino:
                continue  # replaced since it was opened (see _own_lock_file): lock the new one
            if isinstance(locked, str):
                warnings.warn(f"{path}: this file system does not lock files ({locked}), so "
                              "another process using the same folder is not detected",
                              stacklevel=3)
            else:
                f.truncate(0)
                f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
                f.flush()
            yield
            return


def _flock(f, *, wait: bool) -> bool | str:
    """True: locked; False: another process holds it; a string: this file system has no locks
    (the system's reason)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in NO_LOCKS:
            raise
        return e.strerror
    return True


@contextlib.contextmanager
def _own_lock_file(path: Path) -> Iterator[Any]:
    """``path`` opened for locking. A lock file a hard-linked copy of its folder (``cp -al``)
    shares with the original would lock both folders at once, so it is first replaced by this
    folder's own (a process that opened the shared one meanwhile sees the swap after locking
    and locks again)."""
    f = path.open("a+")
    if os.fstat(f.fileno()).st_nlink > 1:
        f.close()
        write_atomic(path, "")
        f = path.open("a+")
    with f:
        yield f


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def lock_holder(path: str | Path) -> str | None:
    """Who holds ``path``'s lock now, or None when nobody does (or there is no such file). A
    probe: it takes the lock and drops it at once."""
    try:
        f = Path(path).open("r")
    except FileNotFoundError:
        return None
    with f:
        if os.fstat(f.fileno()).st_nlink > 1:  # a copy's, not yet locked in this folder
            return None
        return _holder(f) if _flock(f, wait=False) is False else None


def _holder(f) -> str:
    f.seek(0)
    return f.read().strip() or "another process"
