"""Packing whole samples into rows of at most ``max_length`` tokens, from the lengths column alone.

`best_fit_decreasing` assigns samples to rows over a numpy array of lengths; `pack` then gathers each row's
samples from the tokenized files in a batched ``Dataset.map`` that writes the rows to disk (each batch maps the
files, takes its samples and unmaps them, so memory stays bounded by a batch, not the corpus), under a cache key of
the samples and the row length. Each row gets ``position_ids`` that restart at 0 at every sample: the model's
packing contract, under which it never attends across a restart. A packed row's loss equals the loss of its
samples unpadded, because the first label of each sample (which HF's shift would make a target of the previous
sample's last token) is -100.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from array import array
from pathlib import Path

import numpy as np

from finetune.jsonfile import read_json

from .cache import digest, find_entry, new_entry, temporary_cache
from .constants import IGNORE_INDEX
from .meter import measure

# Rows per batch of the gathering map. A batch maps the files only while it reads its samples, and the kernel maps
# pages around each one it reads (fault-around), so a batch briefly adds about 0.2 MB of RSS per row.
GATHER_BATCH = 512
PACKED = "packed.json"  # an entry's list of row files


def best_fit_decreasing(lengths, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Group item indices into rows of total length ≤ capacity: longest first, each into the fullest row it fits
    (ties: the row opened or filled most recently), else a new row. Deterministic; O(n log n).

    Returns ``(order, offsets)``: row r holds items ``order[offsets[r]:offsets[r + 1]]``, in the order they were
    placed (longest first)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    too_long = np.flatnonzero(lengths > capacity)
    if len(too_long):
        first = int(too_long[0])
        raise ValueError(
            f"{len(too_long)} samples are longer than the row length {capacity} (first: index {first}, "
            f"{lengths[first]} tokens); pack with max_length >= model_max_length"
        )
    placed = np.argsort(-lengths, kind="stable")  # longest first, ties in input order
    row_of = array("q")
    spaces: list[int] = []  # sorted distinct free-space values that some row has
    rows_with_space: dict[int, list[int]] = {}
    rows = 0
    for n in lengths[placed].tolist():
        j = bisect.bisect_left(spaces, n)
        if j < len(spaces):
            space = spaces[j]
            stack = rows_with_space[space]
            row = stack.pop()
            if not stack:
                del rows_with_space[space], spaces[j]
        else:
            space, row = capacity, rows
            rows += 1
        row_of.append(row)
        left = space - n
        stack = rows_with_space.get(left)
        if stack is None:
            rows_with_space[left] = [row]
            bisect.insort(spaces, left)
        else:
            stack.append(row)
    row_of_placed = np.frombuffer(row_of, dtype=np.int64) if len(row_of) else np.zeros(0, dtype=np.int64)
    order = placed[np.argsort(row_of_placed, kind="stable")]
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of_placed, minlength=rows), out=offsets[1:])
    return order, offsets


# ---------------------------------------------------------------- gathering (runs inside Dataset.map)


def token_positions(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where every sample's tokens lie in the tokenized Arrow files: per row of their concatenation, the file, the
    positions (in int32 elements from the file's start) of its ``input_ids`` and ``labels``, and its length.

    Arrow stores each record batch's list values as one contiguous int32 buffer, which a memory-mapped read leaves
    in place, so these are file offsets: gathering a sample is then a slice of the file viewed as int32, with no
    per-batch Arrow call (a file has hundreds of record batches)."""
    import pyarrow as pa

    file_of, ids_at, labels_at, lengths = [], [], [], []
    for f, path in enumerate(files):
        with pa.memory_map(path) as source:
            whole = source.read_buffer()
            for batch in pa.ipc.open_stream(whole):
                positions = {}
                for name in ("input_ids", "labels"):
                    column = batch.column(name)
                    offsets = column.offsets.to_numpy().astype(np.int64)
                    values = column.values.buffers()[1]
                    if values is None or values.size == 0:  # a batch of dropped (empty) samples only
                        positions[name] = np.zeros(batch.num_rows, dtype=np.int64)
                        continue
                    byte = values.address - whole.address
                    in_file = 0 <= byte <= whole.size - values.size
                    if column.values.type != pa.int32() or byte % 4 or not in_file:
                        raise RuntimeError(f"{path}: {name} is not stored as plain int32 values in the file")
                    positions[name] = byte // 4 + column.values.offset + offsets[:-1]
                lengths.append(np.diff(batch.column("input_ids").offsets.to_numpy().astype(np.int64)))
                ids_at.append(positions["input_ids"])
                labels_at.append(positions["labels"])
                file_of.append(np.full(batch.num_rows, f, dtype=np.int32))
            del whole
    if not file_of:
        return (np.zeros(0, dtype=np.int32), *(np.zeros(0, dtype=np.int64) for _ in range(3)))
    return np.concatenate(file_of), np.concatenate(ids_at), np.concatenate(labels_at), np.concatenate(lengths)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices of the ranges [start, start + length), concatenated."""
    before = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=before[1:])
    return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _read(files, file_of, starts, lengths) -> np.ndarray:
    """The int32 ranges (file, start, length) of the files, concatenated in order. Each file is memory-mapped for
    this call only, so the pages it touches leave the process with it."""
    out = np.empty(int(lengths.sum()), dtype=np.int32)
    at = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=at[1:])
    for f in np.unique(file_of).tolist():
        mine = file_of == f
        path = files[f]
        tokens = np.memmap(path, dtype=np.int32, mode="r", shape=(os.path.getsize(path) // 4,))
        out[_ranges(at[mine], lengths[mine])] = tokens[_ranges(starts[mine], lengths[mine])]
        del tokens
    return out


def _gather_rows(batch: dict[str, np.ndarray], files, file_of, ids_at, labels_at, lengths, offsets):
    """The packed rows ``batch["row"]`` (consecutive): their samples' tokens joined, labels with each sample's
    first label -100, position_ids restarting at every sample. The per-sample arrays are in placement order:
    row r holds samples ``offsets[r]:offsets[r + 1]``."""
    import pyarrow as pa

    first, last = int(batch["row"][0]), int(batch["row"][-1]) + 1
    span = slice(offsets[first], offsets[last])
    sample_lengths = lengths[span]
    flat_ids = _read(files, file_of[span], ids_at[span], sample_lengths)
    flat_labels = _read(files, file_of[span], labels_at[span], sample_lengths)
    starts = np.zeros(len(sample_lengths), dtype=np.int64)
    np.cumsum(sample_lengths[:-1], out=starts[1:])
    # A sample's first label is never a target unpacked (labels are shifted); packed, it would be the target of
    # the previous sample's last token.
    flat_labels[starts] = IGNORE_INDEX
    positions = (np.arange(len(flat_ids), dtype=np.int64) - np.repeat(starts, sample_lengths)).astype(
        np.int32
    )
    row_offsets = np.append(starts, len(flat_ids))[offsets[first : last + 1] - offsets[first]].astype(
        np.int32
    )
    as_rows = lambda values: pa.ListArray.from_arrays(pa.array(row_offsets), pa.array(values))  # noqa: E731
    return pa.table(
        {
            "input_ids": as_rows(flat_ids),
            "labels": as_rows(flat_labels),
            "position_ids": as_rows(positions),
            "length": pa.array(np.diff(row_offsets)),
        }
    )


# ---------------------------------------------------------------- entry point


def _features():
    import datasets

    ids = datasets.List(datasets.Value("int32"))
    return datasets.Features(
        {"input_ids": ids, "labels": ids, "position_ids": ids, "length": datasets.Value("int32")}
    )


def packed_key(data, capacity: int) -> str:
    """Key of the packed rows of ``data`` (a `TokenizedData`): its samples' key, exactly which rows are packed (a
    split packs a subset), and the row length."""
    rows = hashlib.sha256(np.ascontiguousarray(data.rows, dtype=np.int64).tobytes()).hexdigest()
    return digest({"samples": data.key, "rows": rows, "capacity": capacity})


def _load(entry: Path):
    import datasets

    files = read_json(entry / PACKED)["files"]
    parts = [datasets.Dataset.from_file(str(entry / name)) for name in files]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def pack(data, max_length: int, cache_dir: str | Path | None = None, num_proc: int | None = None):
    """Pack the samples of ``data`` (a `TokenizedData`) into rows of at most ``max_length`` tokens.

    Returns ``(packed, stats)``: a `datasets.Dataset` with ``input_ids``, ``labels``, ``position_ids`` and
    ``length`` per row, memory-mapped from ``cache_dir`` (None: a temporary directory), and ``stats`` with
    ``samples``, ``rows``, ``tokens``, ``packing_efficiency`` (real tokens / row capacity), ``cache`` ("hit",
    "miss" or "off") and ``stages`` (the pack stage's time and memory, or the load's on a hit). No sample is split
    or dropped; one longer than ``max_length`` is an error.
    """
    import datasets

    key = packed_key(data, max_length)
    root = Path(cache_dir) if cache_dir is not None else temporary_cache()
    entry = find_entry(root, key) if cache_dir is not None else None
    stages: dict[str, dict[str, float]] = {}
    if entry is not None:
        with measure(stages, "load"):
            packed = _load(entry)
            stats = read_json(entry / "report.json")
        return packed, {**stats, "cache": "hit", "stages": {**stats["stages"], **stages}}
    workers = num_proc if num_proc and num_proc > 1 else None
    with new_entry(root, key) as building:
        with measure(stages, "pack", workers=workers or 1) as figures:
            file_of, ids_at, labels_at, all_lengths = token_positions(data.files)
            lengths = all_lengths[data.rows]
            order, offsets = best_fit_decreasing(lengths, max_length)
            rows = len(offsets) - 1
            tokens = int(lengths.sum())
            placed = data.rows[order]
            row_ids = datasets.Dataset.from_dict({"row": np.arange(rows, dtype=np.int64)}).with_format(
                "numpy"
            )
            gathered = row_ids.map(
                _gather_rows,
                batched=True,
                batch_size=GATHER_BATCH,
                num_proc=workers if workers and rows > GATHER_BATCH else None,
                fn_kwargs={
                    "files": list(data.files),
                    "file_of": file_of[placed],
                    "ids_at": ids_at[placed],
                    "labels_at": labels_at[placed],
                    "lengths": all_lengths[placed],
                    "offsets": offsets,
                },
                remove_columns=["row"],
                features=_features(),
                cache_file_name=str(building / "packed.arrow"),
                load_from_cache_file=False,
                new_fingerprint=key,
                desc="Packing",
            )
            files = [Path(f["filename"]).name for f in gathered.cache_files]
            del gathered
            if not files:  # no sample: a map over no rows writes no file
                import pyarrow as pa

                pa.ipc.new_stream(str(building / "packed.arrow"), _features().arrow_schema).close()
                files = ["packed.arrow"]
            figures["rows"] = rows
        stats = {
            "samples": len(lengths),
            "rows": rows,
            "tokens": tokens,
            "packing_efficiency": round(tokens / (rows * max_length), 4) if rows else 0.0,
            "stages": stages,
        }
        (building / PACKED).write_text(json.dumps({"files": files}), encoding="utf-8")
        (building / "report.json").write_text(json.dumps(stats), encoding="utf-8")
    cache = "miss" if cache_dir is not None else "off"
    return _load(root / key), {**stats, "cache": cache}
