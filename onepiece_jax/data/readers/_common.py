"""Shared parsing helpers for the readers: chunked line streaming, column splitting, numeric
conversion with precise error locations, dense id encoding and feature-table assembly.

Everything works on ``bytes`` and numpy ``S`` arrays, one chunk of lines at a time, so a reader
never holds a Python object per event for the whole file. Conversions run vectorised in numpy;
only when one fails do we walk the chunk in Python to name the offending line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onepiece_jax.data.events import DataError, EventLog, FeatureTable, Requests

CHUNK_BYTES = 32 << 20  # ~32 MiB of text per chunk: big enough to vectorise, small enough for RSS


def require_file(path: Path, what: str) -> Path:
    """Fails with a message naming the missing companion file instead of a bare OSError later."""
    if not path.is_file():
        raise DataError(f"missing {what} (expected file {path.name})", path=str(path))
    return path


def iter_line_chunks(path: Path, skipped: dict[str, int], *, header: bool = False,
                     chunk_bytes: int | None = None) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """Yields (1-based line numbers, lines without their line ending) chunk by chunk.

    Blank lines are skipped and counted in ``skipped["blank_lines"]``; the header line, when
    ``header`` is set, is not yielded. An empty file (no data line at all) is a DataError.
    ``chunk_bytes`` defaults to the module's ``CHUNK_BYTES`` at call time.
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    seen = 0
    lineno = 0
    with open(path, "rb") as f:
        if header:
            first = f.readline()
            lineno = 1
            if not first.strip():
                raise DataError("empty file (no header line)", path=str(path), line=1)
        while True:
            raw = f.readlines(chunk_bytes)
            if not raw:
                break
            nums = np.arange(lineno + 1, lineno + 1 + len(raw), dtype=np.int64)
            lineno += len(raw)
            lines = [ln.rstrip(b"\r\n") for ln in raw]
            keep = np.fromiter((bool(ln.strip()) for ln in lines), bool, len(lines))
            if not keep.all():
                skipped["blank_lines"] = skipped.get("blank_lines", 0) + int((~keep).sum())
                lines = [ln for ln, k in zip(lines, keep, strict=True) if k]
                nums = nums[keep]
            if lines:
                seen += len(lines)
                yield nums, lines
    if not seen:
        raise DataError("empty file (no data lines)", path=str(path), line=lineno + 1)


def header_cells(path: Path, sep: bytes) -> list[str]:
    """The cells of a file's header line, stripped (RecBole writes them ``name:type``)."""
    with open(path, "rb") as f:
        first = f.readline().rstrip(b"\r\n")
    if not first.strip():
        raise DataError("empty file (no header line)", path=str(path), line=1)
    return [c.decode("utf-8", "replace").strip() for c in first.split(sep)]


def read_header(path: Path, sep: bytes) -> list[str]:
    """The column names of a file's header line (RecBole ``name:type`` suffixes removed)."""
    return [cell.split(":")[0].strip() for cell in header_cells(path, sep)]


def column_index(names: list[str], wanted: str, path: Path) -> int:
    """Position of a required header column (DataError naming the field when absent)."""
    if wanted not in names:
        raise DataError(f"header lacks column {wanted!r} (has {names})", path=str(path), line=1,
                        field=wanted)
    return names.index(wanted)


def split_columns(lines: list[bytes], nums: np.ndarray, sep: bytes, ncols: int, path: Path,
                  cols: list[int] | None = None) -> np.ndarray:
    """Splits a chunk of lines into an ``S`` array [n, ncols], checking every line's width.

    With ``cols`` only those columns are kept ([n, len(cols)]): files with long free-text columns
    (product names) would otherwise pad every cell of the chunk to the longest text.
    """
    counts = np.fromiter((ln.count(sep) for ln in lines), np.int64, len(lines))
    bad = np.flatnonzero(counts != ncols - 1)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"expected {ncols} columns separated by {sep!r}, got {counts[i] + 1}",
                        path=str(path), line=int(nums[i]))
    flat = sep.join(lines).split(sep)  # one C-level split; column k is flat[k::ncols]
    if cols is None:
        return np.array(flat).reshape(len(lines), ncols)
    return np.stack([np.array(flat[k::ncols]) for k in cols], axis=1)


def iter_columns(path: Path, sep: bytes, ncols: int, skipped: dict[str, int], *,
                 header: bool = False,
                 cols: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(line numbers, ``S`` array [n, ncols or len(cols)]) per chunk of a delimited file."""
    for nums, lines in iter_line_chunks(path, skipped, header=header):
        yield nums, split_columns(lines, nums, sep, ncols, path, cols)


def read_columns(path: Path, sep: bytes, ncols: int, skipped: dict[str, int], *,
                 header: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A whole small delimited file (a catalogue, not an event log) as one ``S`` array."""
    parts = list(iter_columns(path, sep, ncols, skipped, header=header))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def first_rows(ids: np.ndarray, skipped: dict[str, int], key: str) -> np.ndarray:
    """Indices of the first row per distinct id (catalogue files); repeats are counted."""
    _, first = np.unique(ids, return_index=True)
    bump(skipped, key, ids.size - first.size)
    return np.sort(first)


def first_bad(tokens: np.ndarray, ok) -> int:
    """Index of the first token ``ok`` refuses (-1 if none): errors name its line."""
    for i, tok in enumerate(tokens.tolist()):
        if not ok(tok):
            return i
    return -1


def _parses(conv):
    def ok(tok) -> bool:
        try:
            return bool(np.isfinite(conv(tok)))
        except ValueError:
            return False
    return ok


_INT64 = np.iinfo(np.int64)


def _parses_int64(tok) -> bool:
    try:
        return _INT64.min <= int(tok) <= _INT64.max
    except ValueError:
        return False


def to_int(tokens: np.ndarray, nums: np.ndarray, path: Path, field: str) -> np.ndarray:
    """int64 column from ``S`` tokens; a non-integer or one outside int64 names its line and
    field."""
    try:
        return tokens.astype(np.int64)
    except (ValueError, OverflowError):
        i = first_bad(tokens, _parses_int64)
        raise DataError(f"not an integer in the int64 range: {tokens[i]!r}", path=str(path),
                        line=int(nums[i]), field=field) from None


def to_float(tokens: np.ndarray, nums: np.ndarray, path: Path, field: str) -> np.ndarray:
    """float64 column from ``S`` tokens; garbage, NaN and inf name their line and field."""
    try:
        out = tokens.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(out))
        i = int(bad[0]) if bad.size else -1
    except ValueError:
        i = first_bad(tokens, _parses(float))
    if i >= 0:
        raise DataError(f"not a finite number: {tokens[i]!r}", path=str(path),
                        line=int(nums[i]), field=field)
    return out


def to_time(tokens: np.ndarray, nums: np.ndarray, path: Path, field: str) -> np.ndarray:
    """int64 seconds from ``S`` tokens written as numbers (RecBole writes timestamps as floats),
    rounded; garbage, NaN, inf and values outside int64 name their line and field."""
    seconds = to_float(tokens, nums, path, field)
    out = np.flatnonzero(np.abs(seconds) >= 2.0 ** 63)  # would wrap silently in astype
    if out.size:
        i = int(out[0])
        raise DataError(f"timestamp {tokens[i]!r} outside the int64 range", path=str(path),
                        line=int(nums[i]), field=field)
    return np.rint(seconds).astype(np.int64)


def lookup(tokens: np.ndarray, mapping: dict[bytes, int], nums: np.ndarray, path: Path,
           field: str) -> np.ndarray:
    """Maps categorical tokens (e.g. behaviour names) through ``mapping``; unknown ones fail."""
    uniq, inv = np.unique(tokens, return_inverse=True)
    for j, tok in enumerate(uniq.tolist()):
        if tok not in mapping:
            i = int(np.flatnonzero(inv == j)[0])
            raise DataError(f"unknown value {tok!r} (known: {sorted(mapping)})", path=str(path),
                            line=int(nums[i]), field=field)
    return np.array([mapping[t] for t in uniq.tolist()], np.int64)[inv.reshape(-1)]


def narrow(values: np.ndarray) -> np.ndarray:
    """int32 when the values fit (ids usually do), halving what a 100M-row log holds."""
    info = np.iinfo(np.int32)
    if values.size and (values.min() < info.min or values.max() > info.max):
        return values
    return values.astype(np.int32)


def concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    """Concatenates chunk arrays (an empty list gives an empty array of ``dtype``)."""
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def sorted_vocab(*arrays: np.ndarray, missing=None) -> np.ndarray:
    """Sorted distinct raw values over several arrays, without the ``missing`` sentinel."""
    values = np.sort(np.concatenate([np.asarray(a).reshape(-1) for a in arrays]))
    vocab = values[np.r_[True, values[1:] != values[:-1]]] if values.size else values
    if missing is not None:
        vocab = vocab[vocab != missing]
    return vocab


def dense(vocab: np.ndarray, raw: np.ndarray, missing=None) -> np.ndarray:
    """Dense 1-based codes of ``raw`` in the sorted ``vocab``; ``missing`` and values outside
    the vocab become 0 (callers only pass values they put in the vocab, or the sentinel)."""
    raw = np.asarray(raw)
    if vocab.size == 0:
        return np.zeros(raw.shape, np.int32)
    pos = np.searchsorted(vocab, raw)
    hit = vocab[np.minimum(pos, vocab.size - 1)] == raw
    if missing is not None:
        hit &= raw != missing
    return np.where(hit, pos + 1, 0).astype(np.int32)


def with_padding_row(vocab: np.ndarray) -> np.ndarray:
    """Raw-id array with row 0 for the padding entity (``EventLog.item_ids`` convention)."""
    return np.concatenate([np.zeros(1, vocab.dtype), vocab])


def entity_table(num_entities: int, rows: np.ndarray, values: np.ndarray,
                 missing=None) -> FeatureTable:
    """Single-valued categorical feature as a table: row ``rows[i]`` gets ``values[i]`` re-coded
    densely (so the vocabulary has no holes); ``missing`` values and absent rows become 0."""
    values = np.asarray(values)
    vocab = sorted_vocab(values, missing=missing)
    table = np.zeros((num_entities + 1, 1), np.int32)
    table[rows, 0] = dense(vocab, values, missing=missing)
    return FeatureTable(table, vocab_size=int(vocab.size) + 1)


def ragged_table(num_entities: int, rows: np.ndarray, lengths: np.ndarray, flat: np.ndarray,
                 cap: int) -> tuple[FeatureTable, int]:
    """Multi-valued feature (row ``rows[i]`` holds the next ``lengths[i]`` values of ``flat``) as
    a right-padded table of width min(longest row, ``cap``); returns it and the number of rows
    truncated by the cap."""
    lengths = np.asarray(lengths, np.int64)
    vocab = sorted_vocab(flat)
    codes = dense(vocab, flat)
    width = max(1, int(min(lengths.max(initial=0), cap)))
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(codes.size, dtype=np.int64) - np.repeat(starts, lengths)
    row = np.repeat(np.asarray(rows, np.int64), lengths)
    keep = pos < width
    table = np.zeros((num_entities + 1, width), np.int32)
    table[row[keep], pos[keep]] = codes[keep]
    return FeatureTable(table, vocab_size=int(vocab.size) + 1), int((lengths > width).sum())


def count_by_name(codes: np.ndarray, names: list[str] | tuple[str, ...],
                  base: int = 0) -> dict[str, int]:
    """Events per name where ``codes`` index ``names`` starting at ``base``."""
    counts = np.bincount(codes.astype(np.int64) - base, minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=False)}


def bump(skipped: dict[str, int], key: str, n: int) -> None:
    """Adds ``n`` to a documented recoverable case; zero counts are not recorded."""
    if n:
        skipped[key] = skipped.get(key, 0) + int(n)


def build_log(*, dataset: str, user: np.ndarray, item: np.ndarray, time: np.ndarray,
              behavior: np.ndarray, query: np.ndarray | None, behaviors: tuple[str, ...],
              has_timestamps: bool, item_features: dict[str, FeatureTable],
              user_features: dict[str, FeatureTable],
              query_features: dict[str, FeatureTable] | None = None,
              item_ids: np.ndarray, user_ids: np.ndarray, query_ids: np.ndarray | None = None,
              requests: Requests | None = None, skipped: dict[str, int],
              raw_behavior_counts: dict[str, int]) -> EventLog:
    """Sorts events by (user, time) — stable, so equal times keep file order — and validates.

    Every reader returns its log in this order, so a consumer can take one user's history as a
    contiguous, time-ordered slice without sorting again.
    """
    order = np.lexsort((time, user))
    if query is None:
        query = np.zeros(user.shape, np.int32)
    log = EventLog(
        dataset=dataset, user=user[order].astype(np.int32), item=item[order].astype(np.int32),
        time=time[order].astype(np.int64), behavior=behavior[order].astype(np.int8),
        query=query[order].astype(np.int32), behaviors=behaviors, has_timestamps=has_timestamps,
        item_features=item_features, user_features=user_features,
        query_features=query_features or {}, item_ids=item_ids, user_ids=user_ids,
        query_ids=query_ids, requests=requests, skipped=dict(sorted(skipped.items())),
        raw_behavior_counts=raw_behavior_counts)
    log.validate()
    return log
