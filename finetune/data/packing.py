"""Packing whole samples into rows of at most ``max_length`` tokens.

`pack_dataset` fills rows by best-fit decreasing and gives each row ``position_ids`` that restart at 0 at every
sample: the model's packing contract, under which it never attends across a restart. A packed row's loss equals
the loss of its samples unpadded, because the first label of each sample (which HF's shift would make a target
of the previous sample's last token) is -100.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .constants import IGNORE_INDEX


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length ≤ capacity: longest first, each into the fullest bin it fits
    (ties: the bin opened or filled most recently), else a new bin. Deterministic; O(n log n)."""
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} samples are longer than the row length {capacity} (first: index {too_long[0]}, "
            f"{lengths[too_long[0]]} tokens); pack with max_length >= model_max_length"
        )
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
    """Pack a dataset of ``input_ids``/``labels`` samples into rows of at most ``max_length`` tokens.

    Returns ``(packed, stats)``: a `datasets.Dataset` with ``input_ids``, ``labels``, ``position_ids`` and
    ``length`` per row, and ``stats`` with ``samples``, ``rows``, ``tokens`` and ``packing_efficiency``
    (real tokens / row capacity). No sample is split or dropped; one longer than ``max_length`` is an error.
    """
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
            # A sample's first label is never a target unpacked (labels are shifted); packed, it would be the
            # target of the previous sample's last token.
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
