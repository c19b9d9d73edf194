"""The previous packer, kept as a reference outside the package: `pack_dataset` pulled every sample into Python
lists and built the rows in Python, so its memory grew with the corpus (8.1 GB for 100k conversations of ~360
tokens, docs/BENCHMARKS.md). The benchmark's data-path table measures it as the reference row, and
tests/test_packing.py checks that `finetune.data.packing.pack` gives exactly its rows."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from finetune.data.constants import IGNORE_INDEX


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length ≤ capacity: longest first, each into the fullest bin it fits
    (ties: the bin opened or filled most recently), else a new bin."""
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} samples are longer than the row length {capacity}")
    bins: list[list[int]] = []
    spaces: list[int] = []  # sorted distinct free-space values that some bin has
    bins_with_space: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        j = bisect.bisect_left(spaces, n)
        if j < len(spaces):
            space = spaces[j]
            b = bins_with_space[space].pop()
            if not bins_with_space[space]:
                del bins_with_space[space], spaces[j]
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = space - n
        if left not in bins_with_space:
            bins_with_space[left] = []
            bisect.insort(spaces, left)
        bins_with_space[left].append(b)
    return bins


def pack_dataset(dataset, max_length: int):
    """Rows of ``input_ids``, ``labels``, ``position_ids``, ``length`` as an in-memory `datasets.Dataset`, and
    ``{"samples", "rows", "tokens", "packing_efficiency"}``."""
    import datasets

    columns_in = dataset.select_columns(["input_ids", "labels"]).to_dict()
    all_ids, all_labels = columns_in["input_ids"], columns_in["labels"]
    lengths = [len(ids) for ids in all_ids]
    rows = best_fit_decreasing(lengths, max_length)
    columns: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for row in rows:
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in row:
            input_ids += all_ids[i]
            labels += [IGNORE_INDEX] + list(all_labels[i][1:])
            positions += range(lengths[i])
        columns["input_ids"].append(input_ids)
        columns["labels"].append(labels)
        columns["position_ids"].append(positions)
        columns["length"].append(len(input_ids))
    tokens = sum(lengths)
    stats = {
        "samples": len(lengths),
        "rows": len(rows),
        "tokens": tokens,
        "packing_efficiency": round(tokens / (len(rows) * max_length), 4) if rows else 0.0,
    }
    return datasets.Dataset.from_dict(columns), stats
