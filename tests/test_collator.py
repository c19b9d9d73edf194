"""Dynamic padding, best-fit-decreasing packing, and packed loss = unpacked loss on the collator side."""

import random
from collections import Counter

import datasets
import pytest
import torch

from finetune.data.collator import DataCollatorForSFT
from finetune.data.packing import best_fit_decreasing, pack_dataset

X = -100


def test_padding_right_with_pad_0_labels_ignored_and_mask_from_lengths():
    features = [
        {"input_ids": [5, 0, 7], "labels": [X, 0, 7], "id": "a"},  # a real token with id 0 stays attended
        {"input_ids": [9], "labels": [9], "length": 1},
    ]
    batch = DataCollatorForSFT()(features)
    assert batch["input_ids"].tolist() == [[5, 0, 7], [9, 0, 0]]
    assert batch["labels"].tolist() == [[X, 0, 7], [9, X, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert "position_ids" not in batch


def test_pad_to_multiple_of():
    batch = DataCollatorForSFT(pad_to_multiple_of=8)([{"input_ids": [1] * 9, "labels": [1] * 9}])
    assert batch["input_ids"].shape == (1, 16)
    assert batch["attention_mask"].sum().item() == 9


def test_packed_rows_pad_position_ids_without_fake_targets():
    features = [
        {"input_ids": [1, 2, 3, 4], "labels": [X, 2, X, 4], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [5, 6], "labels": [X, 6], "position_ids": [0, 1]},
    ]
    batch = DataCollatorForSFT()(features)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert batch["labels"].tolist() == [[X, 2, X, 4], [X, 6, X, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_best_fit_decreasing_known_packing():
    # Sorted: 6(i1) 5(i3) 4(i0) 3(i4) 2(i2) 2(i5); capacity 8.
    assert best_fit_decreasing([4, 6, 2, 5, 3, 2], 8) == [[1, 2], [3, 4], [0, 5]]


def test_best_fit_decreasing_property_sweep():
    rng = random.Random(0)
    for _ in range(50):
        capacity = rng.randint(8, 64)
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 60))]
        bins = best_fit_decreasing(lengths, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
        assert bins == best_fit_decreasing(lengths, capacity)  # deterministic
        assert len(bins) >= -(-sum(lengths) // capacity)


def samples(n, max_len, seed=0):
    rng = random.Random(seed)
    rows = {"input_ids": [], "labels": [], "id": []}
    for k in range(n):
        length = rng.randint(2, max_len)
        ids = [rng.randint(3, 99) for _ in range(length)]
        rows["input_ids"].append(ids)
        rows["labels"].append([2] + [t if rng.random() < 0.7 else X for t in ids[1:]])
        rows["id"].append(str(k))
    return datasets.Dataset.from_dict(rows)


def split_by_position_ids(values, positions):
    pieces = []
    for v, p in zip(values, positions, strict=True):
        if p == 0:
            pieces.append([])
        pieces[-1].append(v)
    return pieces


def test_pack_dataset_keeps_every_sample_whole_and_restarts_positions():
    ds = samples(200, 40)
    packed, stats = pack_dataset(ds, 64)
    assert stats["samples"] == 200 and stats["rows"] == len(packed)
    assert stats["tokens"] == sum(len(x) for x in ds["input_ids"]) == sum(packed["length"])
    assert stats["packing_efficiency"] == round(stats["tokens"] / (64 * len(packed)), 4)
    assert stats["packing_efficiency"] > 0.9
    unpacked_samples, unpacked_labels = [], []
    for row in packed:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 64
        unpacked_samples += split_by_position_ids(row["input_ids"], row["position_ids"])
        for piece in split_by_position_ids(row["labels"], row["position_ids"]):
            assert piece[0] == X  # no target across a sample boundary
            unpacked_labels += piece[1:]
    assert Counter(map(tuple, unpacked_samples)) == Counter(map(tuple, ds["input_ids"]))
    # Trainable labels (all but position 0, which the shift never uses) are the same multiset.
    assert Counter(unpacked_labels) == Counter(t for labels in ds["labels"] for t in labels[1:])


def test_pack_dataset_refuses_samples_longer_than_a_row():
    with pytest.raises(ValueError, match="1 samples are longer than the row length 8"):
        pack_dataset(
            datasets.Dataset.from_dict({"input_ids": [[1] * 9, [1] * 3], "labels": [[1] * 9, [1] * 3]}), 8
        )


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


def test_packed_loss_equals_unpacked_loss():
    ds = samples(30, 20, seed=1)
    torch.manual_seed(0)
    table = (torch.randn(100, 100), torch.randn(64, 100))
    collate = DataCollatorForSFT(pad_to_multiple_of=4)
    unpacked = token_mean_loss(collate([ds[i] for i in range(len(ds))]), table)
    packed_ds, _ = pack_dataset(ds, 48)
    packed = token_mean_loss(collate([packed_ds[i] for i in range(len(packed_ds))]), table)
    torch.testing.assert_close(packed, unpacked)
