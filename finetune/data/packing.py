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
from array import array
from pathlib import Path

import numpy as np

from .cache import digest, find_entry, new_entry, temporary_cache
from .constants import IGNORE_INDEX
from .meter import measure

# Rows per batch of the gathering map. A batch maps the files only while it takes its samples, and the kernel maps
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


def _take(files: list[str], file_starts: np.ndarray, rows: np.ndarray):
    """``input_ids`` and ``labels`` of the files' concatenation at ``rows`` (in that order), as Arrow list arrays.
    Each file is memory-mapped for this call only."""
    import pyarrow as pa

    by_row = np.argsort(rows, kind="stable")
    sorted_rows = rows[by_row]
    which = np.searchsorted(file_starts, sorted_rows, side="right") - 1
    ids, labels = [], []
    for f in np.unique(which).tolist():
        local = sorted_rows[which == f] - file_starts[f]
        with pa.memory_map(files[f]) as source:
            batches = pa.ipc.open_stream(source).read_all().to_batches()
            # Take from each record batch, not from the chunked column: Arrow concatenates a chunked list column
            # (the whole file) before taking from it.
            batch_starts = np.cumsum([0] + [b.num_rows for b in batches])
            in_batch = np.searchsorted(batch_starts, local, side="right") - 1
            for b in np.unique(in_batch).tolist():
                rows_in_b = pa.array(local[in_batch == b] - batch_starts[b])
                ids.append(batches[b].column("input_ids").take(rows_in_b))
                labels.append(batches[b].column("labels").take(rows_in_b))
            del batches
    back = pa.array(np.argsort(by_row, kind="stable"))
    return pa.concat_arrays(ids).take(back), pa.concat_arrays(labels).take(back)


def _gather_rows(batch: dict[str, np.ndarray], files, file_starts, order, offsets):
    """The packed rows ``batch["row"]`` (consecutive): their samples' tokens joined, labels with each sample's
    first label -100, position_ids restarting at every sample."""
    import pyarrow as pa

    first, last = int(batch["row"][0]), int(batch["row"][-1]) + 1
    samples = order[offsets[first] : offsets[last]]
    ids, labels = _take(files, file_starts, samples)
    lengths = np.diff(ids.offsets.to_numpy())
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    flat_ids = ids.flatten().to_numpy()
    flat_labels = labels.flatten().to_numpy().copy()
    # A sample's first label is never a target unpacked (labels are shifted); packed, it would be the target of
    # the previous sample's last token.
    flat_labels[starts] = IGNORE_INDEX
    positions = (np.arange(len(flat_ids), dtype=np.int64) - np.repeat(starts, lengths)).astype(np.int32)
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

    files = json.loads((entry / PACKED).read_text(encoding="utf-8"))["files"]
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
            stats = json.loads((entry / "report.json").read_text(encoding="utf-8"))
        return packed, {**stats, "cache": "hit", "stages": {**stats["stages"], **stages}}
    workers = num_proc if num_proc and num_proc > 1 else None
    with new_entry(root, key) as building:
        with measure(stages, "pack", workers=workers or 1) as figures:
            lengths = data.column("length")
            order, offsets = best_fit_decreasing(lengths, max_length)
            rows = len(offsets) - 1
            tokens = int(lengths.sum())
            file_starts = np.concatenate([[0], np.cumsum(data.file_rows)])[:-1]
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
                    "file_starts": file_starts,
                    "order": data.rows[order],
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
