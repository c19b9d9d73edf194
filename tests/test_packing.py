"""Packing from the lengths column: the rows equal the previous in-memory packer's on a table of length mixes,
packed loss = unpacked loss, and the packed rows are cached under a key of exactly what they are made from."""

import random

import datasets
import numpy as np
import pytest
import torch

import finetune.data.packing as packing
from benchmarks.reference_packing import best_fit_decreasing as reference_bfd
from benchmarks.reference_packing import pack_dataset as reference_pack
from finetune.data.collator import DataCollatorForSFT
from finetune.data.dataset import TokenizedData
from finetune.data.packing import best_fit_decreasing, pack, packed_key

X = -100
TOKENS = datasets.List(datasets.Value("int32"))
FEATURES = datasets.Features(
    {"input_ids": TOKENS, "labels": TOKENS, "id": datasets.Value("string"), "length": datasets.Value("int32")}
)


def samples(lengths, seed=0):
    rng = random.Random(seed)
    rows = {"input_ids": [], "labels": [], "id": []}
    for k, length in enumerate(lengths):
        ids = [rng.randint(3, 99) for _ in range(length)]
        rows["input_ids"].append(ids)
        rows["labels"].append([2] + [t if rng.random() < 0.7 else X for t in ids[1:]])
        rows["id"].append(str(k))
    return datasets.Dataset.from_dict(rows)


def on_disk(ds, directory, files=1) -> TokenizedData:
    """``ds`` as tokenized files (split into ``files`` of them), every row selected."""
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(ds), files + 1).astype(int)
    paths = []
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        if start == stop:
            continue  # a map over no rows writes no file
        part = ds.select(range(start, stop)).map(
            lambda batch: {"length": [len(x) for x in batch["input_ids"]]},
            batched=True,
            features=FEATURES,  # as tokenizing writes them
            cache_file_name=str(directory / f"part-{i}.arrow"),
        )
        paths.append(part.cache_files[0]["filename"])
    return TokenizedData(tuple(paths), np.arange(len(ds)), key=str(directory))


def rows_of(order, offsets):
    return [order[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def test_best_fit_decreasing_known_packing():
    # Sorted: 6(i1) 5(i3) 4(i0) 3(i4) 2(i2) 2(i5); capacity 8.
    assert rows_of(*best_fit_decreasing([4, 6, 2, 5, 3, 2], 8)) == [[1, 2], [3, 4], [0, 5]]


def test_best_fit_decreasing_assigns_rows_as_the_previous_packer():
    rng = random.Random(0)
    for _ in range(100):
        capacity = rng.randint(8, 64)
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 300))]
        rows = rows_of(*best_fit_decreasing(lengths, capacity))
        assert rows == reference_bfd(lengths, capacity)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= capacity for row in rows)


def test_samples_longer_than_a_row_are_refused():
    with pytest.raises(ValueError, match="1 samples are longer than the row length 8"):
        best_fit_decreasing([9, 3], 8)


def _mix(name, rng):
    if name == "one sample":
        return [17]
    if name == "all full rows":
        return [64] * 40
    if name == "all tiny":
        return [rng.randint(1, 3) for _ in range(500)]
    if name == "uniform":
        return [rng.randint(2, 64) for _ in range(400)]
    if name == "long and short":
        return [rng.choice([rng.randint(50, 64), rng.randint(2, 10)]) for _ in range(400)]
    if name == "equal halves":
        return [32] * 101
    return [rng.choice([5, 12, 33, 40]) for _ in range(300)]  # few distinct lengths


MIXES = [
    "one sample",
    "all full rows",
    "all tiny",
    "uniform",
    "long and short",
    "equal halves",
    "few lengths",
]


@pytest.mark.parametrize("mix", MIXES)
def test_packed_rows_equal_the_previous_in_memory_packer(tmp_path, monkeypatch, mix):
    """Same rows, same order, same input_ids/labels/position_ids/length, with the gathering batches cut small and
    the samples spread over three files."""
    monkeypatch.setattr(packing, "GATHER_BATCH", 7)
    ds = samples(_mix(mix, random.Random(mix)), seed=1)
    packed, stats = pack(on_disk(ds, tmp_path / "samples", files=3), 64)
    expected, expected_stats = reference_pack(ds, 64)
    assert packed.to_dict() == expected.to_dict()
    assert {k: stats[k] for k in expected_stats} == expected_stats
    assert stats["cache"] == "off" and "pack" in stats["stages"]


def test_a_selection_of_samples_packs_as_that_selection_in_memory(tmp_path):
    """A split (or the kept rows) packs exactly the selected samples, in the selection's order, with 2 workers."""
    ds = samples([random.Random(2).randint(2, 40) for _ in range(3000)], seed=3)
    data = on_disk(ds, tmp_path / "samples", files=2)
    chosen = np.random.default_rng(0).permutation(len(ds))[:1700]
    packed, _ = pack(data.select(chosen), 48, num_proc=2)
    expected, _ = reference_pack(ds.select(chosen), 48)
    assert packed.to_dict() == expected.to_dict()


def test_packing_is_cached_under_the_samples_the_rows_and_the_length(tmp_path, monkeypatch):
    ds = samples([5, 9, 30, 2, 17, 40, 22], seed=4)
    data = on_disk(ds, tmp_path / "samples")
    first, stats = pack(data, 48, cache_dir=tmp_path / "cache")
    assert stats["cache"] == "miss"

    def no_gathering(*args, **kwargs):
        raise AssertionError("gathered on a cache hit")

    monkeypatch.setattr(packing, "_gather_rows", no_gathering)
    again, stats = pack(data, 48, cache_dir=tmp_path / "cache")
    assert stats["cache"] == "hit" and "load" in stats["stages"]
    assert again.to_dict() == first.to_dict()
    keys = {
        packed_key(data, 48),
        packed_key(data, 64),  # another row length
        packed_key(data.select(np.arange(6)), 48),  # other rows (a split)
        packed_key(data.select(np.arange(7)[::-1]), 48),  # the same rows in another order
        packed_key(TokenizedData(data.files, data.rows, "other samples"), 48),
    }
    assert len(keys) == 5


def token_mean_loss(batch, table):
    """Token-mean shifted CE of a toy model whose logits depend only on (token, position) — no attention, so
    packed = unpacked exactly when positions and labels are laid out right."""
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    logits = table[0][batch["input_ids"]] + table[1][positions]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=X
    )


def test_packed_loss_equals_unpacked_loss(tmp_path):
    rng = random.Random(1)
    ds = samples([rng.randint(2, 20) for _ in range(30)], seed=1)
    torch.manual_seed(0)
    table = (torch.randn(100, 100), torch.randn(64, 100))
    collate = DataCollatorForSFT(pad_to_multiple_of=4)
    unpacked = token_mean_loss(collate([ds[i] for i in range(len(ds))]), table)
    packed_ds, _ = pack(on_disk(ds, tmp_path / "samples"), 48)
    packed = token_mean_loss(collate([packed_ds[i] for i in range(len(packed_ds))]), table)
    torch.testing.assert_close(packed, unpacked)
