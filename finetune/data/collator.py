"""Dynamic padding: each batch padded to its longest row (optionally to a multiple of N) — right padding with pad
id 0 and label -100, an attention mask of 1 for real tokens (never derived from ``ids != 0``: id 0 can be real
text). Rows that carry ``position_ids`` (packed rows, `packing.py`) get them padded too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .constants import IGNORE_INDEX, PAD_TOKEN_ID


@dataclass
class DataCollatorForSFT:
    """Pad ``input_ids``/``labels`` (and ``position_ids`` when present) to the batch's longest row.

    Other keys (``id``, ``length``) are ignored. The pad tail's ``position_ids`` count up from 0, so it forms
    a sequence of its own and never joins the last sample; its labels are -100 and its attention mask 0.
    """

    pad_token_id: int = PAD_TOKEN_ID
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = len(features)
        input_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((rows, width), self.label_pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        packed = "position_ids" in features[0]
        position_ids = torch.zeros((rows, width), dtype=torch.long) if packed else None
        for row, (feature, n) in enumerate(zip(features, lengths, strict=True)):
            if len(feature["labels"]) != n:
                raise ValueError(f"row {row}: {n} input_ids but {len(feature['labels'])} labels")
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
            if position_ids is not None:
                position_ids[row, :n] = torch.as_tensor(feature["position_ids"], dtype=torch.long)
                position_ids[row, n:] = torch.arange(width - n)
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if position_ids is not None:
            batch["position_ids"] = position_ids
        return batch
