"""What the model will be trained on, for a human: the data report (`DataReport`, written as data_report.json)
and one decoded sample with its masked spans."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finetune.jsonfile import write_json

from .constants import IGNORE_INDEX


def trainable_tokens(labels: Sequence[int]) -> int:
    """Labels the loss uses: not -100, and not at position 0 (HF shifts labels, so that one predicts nothing)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


@dataclass
class DataReport:
    """Records read, kept, dropped by reason, truncated; token lengths, supervised share; and the settings that
    produced them. The JSON keys are the field names."""

    # settings
    data_path: list[str]
    format: str | None
    template: str
    model_max_length: int
    truncation: str
    masking: str
    skip_invalid: bool
    # counts
    records_read: int = 0
    samples_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    trainable_share: float = 0.0
    length: dict[str, float] = field(
        default_factory=dict
    )  # min, mean, p50, p90, p95, p99, max of kept samples
    # What padding every sample to model_max_length (the official collation) would waste.
    static_padding_share: float = 0.0
    cache: str = "off"  # "hit", "miss" or "off"
    packing: bool | None = None  # set by training
    packing_efficiency: float | None = None  # real tokens / packed row capacity
    packed_rows: int | None = None
    streaming: bool | None = None  # set by training: counts are then not known ahead
    # How long each stage took and the memory it used: {"read"|"tokenize"|"pack"|"load": {"seconds",
    # "peak_rss_mib", ...}} (finetune/data/meter.py); rates over reading and tokenizing.
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    conversations_per_second: float = 0.0
    tokens_per_second: float = 0.0

    def count(
        self,
        read: int,
        dropped: Counter,
        lengths: np.ndarray,
        trainable: np.ndarray,
        truncated: np.ndarray,
    ) -> DataReport:
        """Fill the counts from arrays over the kept samples (token length, trainable tokens, truncated or not)
        and the records that were read but not kept (``dropped``, by reason)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        total = int(lengths.sum())
        supervised = int(np.asarray(trainable, dtype=np.int64).sum())
        kept = len(lengths)
        self.records_read = read
        self.samples_kept = kept
        self.dropped = dict(sorted(dropped.items()))
        self.truncated = int(np.count_nonzero(truncated))
        self.tokens = total
        self.trainable_tokens = supervised
        self.trainable_share = round(supervised / total, 4) if total else 0.0
        self.length = {}
        if kept:
            self.length = {
                "min": int(lengths.min()),
                "mean": round(float(lengths.mean()), 1),
                **{f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)},
                "max": int(lengths.max()),
            }
        self.static_padding_share = round(1 - total / (kept * self.model_max_length), 4) if kept else 0.0
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; fields training has not set (packing, streaming) are left out."""
        optional = ("packing", "packing_efficiency", "packed_rows", "streaming")
        unset = [k for k in optional if getattr(self, k) is None]
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in unset}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataReport:
        return cls(**values)

    def write(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_dict())

    def table(self) -> str:
        """A short table for the console."""
        length = self.length or {}
        rows = [
            ("records read", self.records_read),
            ("samples kept", self.samples_kept),
            *((f"dropped: {reason}", n) for reason, n in self.dropped.items()),
            (f"truncated to {self.model_max_length}", self.truncated),
            ("tokens", self.tokens),
            ("trainable share", f"{self.trainable_share:.1%}"),
            (
                "length p50/p90/p99/max",
                "/".join(str(length.get(k, "-")) for k in ("p50", "p90", "p99", "max")),
            ),
            ("padding if padded to max", f"{self.static_padding_share:.1%}"),
        ]
        if self.streaming:
            rows = [("streaming", "counts not known ahead: records are read as training needs them")]
        if self.packing_efficiency is not None:
            rows.append(("packing efficiency", f"{self.packing_efficiency:.1%} ({self.packed_rows} rows)"))
        for stage, figures in self.stages.items():
            rows.append((f"{stage} stage", _stage_line(figures)))
        if self.conversations_per_second:
            rate = f"{self.conversations_per_second:,.0f} conversations/s, {self.tokens_per_second:,.0f} tokens/s"
            rows.append(("read + tokenize rate", rate))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def _stage_line(figures: dict[str, float]) -> str:
    line = f"{figures.get('seconds', 0):.1f} s, peak RSS {figures.get('peak_rss_mib', 0):,.0f} MiB"
    if figures.get("workers"):
        line += f" ({figures['workers']:.0f} workers, largest {figures['workers_peak_rss_mib']:,.0f} MiB)"
    return line


def format_sample(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """One sample decoded for a human: the input, then the labels with each masked run shown as ⟦-100 ×n⟧."""
    parts: list[str] = []
    run: list[int] = []
    masked_run = 0
    for label in labels:
        if label == IGNORE_INDEX:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            masked_run += 1
        else:
            if masked_run:
                parts.append(f"⟦-100 ×{masked_run}⟧")
                masked_run = 0
            run.append(label)
    if run:
        parts.append(tokenizer.decode(run))
    if masked_run:
        parts.append(f"⟦-100 ×{masked_run}⟧")
    return (
        f"input_ids ({len(input_ids)} tokens): {tokenizer.decode(list(input_ids))}\n"
        f"labels ({trainable_tokens(labels)} trainable): {''.join(parts)}"
    )
