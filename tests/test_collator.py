"""Dynamic padding, and packed rows' position_ids padded without fake targets (packing itself: test_packing.py)."""

import torch

from finetune.data.collator import DataCollatorForSFT

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
