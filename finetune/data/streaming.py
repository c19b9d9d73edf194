"""``--streaming True``: training rows read, tokenized and packed as training consumes them, for a corpus too large
for the disk cache (or one whose cache would take longer to build than to train on).

The stream cuts the corpus into windows of ``buffer`` consecutive conversations. Each window is tokenized as the
map-style path tokenizes (same template, truncation, drops), packed by the same best-fit decreasing over its
samples (so a window holding the whole corpus gives exactly `packing.pack`'s rows), and its rows are yielded in a
permutation drawn from ``(seed, pass, window)``: the same order every time for a seed. The corpus repeats, each
pass in a new order, until ``max_steps``; the stream never ends by itself, so the Trainer stays in its first epoch
and resuming from a checkpoint skips exactly the batches already trained on (it reads them again to do so).

With several DataLoader workers, window w is tokenized by worker w mod workers (each reads every record but
tokenizes only its windows). Under several ranks, rank 0 iterates and the batches are dispatched to the others
(accelerate's default for an iterable dataset): no other rank reads or tokenizes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from finetune.data.constants import IGNORE_INDEX
from finetune.data.dataset import TOKENIZE_BATCH, plan_samples, tokenize_batch
from finetune.data.formats import Conversation, DataError, LoadStats, iter_conversations
from finetune.data.options import DataOptions
from finetune.data.packing import best_fit_decreasing
from finetune.data.report import DataReport

DEFAULT_BUFFER = 10_000


def window_order(seed: int, epoch: int, window: int, rows: int) -> np.ndarray:
    """The order in which a window's rows are yielded."""
    return np.random.default_rng([seed, epoch, window]).permutation(rows)


def _columns(conversations: list[Conversation]) -> dict[str, list]:
    return {
        "id": [c.id for c in conversations],
        "system": [c.system for c in conversations],
        "roles": [[m.role for m in c.messages] for c in conversations],
        "contents": [[m.content for m in c.messages] for c in conversations],
    }


class StreamingRows(torch.utils.data.IterableDataset):
    """An endless stream of training rows (``input_ids``, ``labels``, ``length``, and ``position_ids`` when
    packed) from the data files of ``options``."""

    def __init__(
        self,
        tokenizer: Any,
        options: DataOptions,
        max_length: int,
        *,
        packing: bool,
        seed: int,
        buffer: int = DEFAULT_BUFFER,
        model_type: str | None = None,
    ):
        plan = plan_samples(tokenizer, options, max_length, None, model_type)
        self.report: DataReport = plan.report
        self.report.streaming, self.report.packing = True, packing
        self._sources, self._fmt, self._fn_kwargs = plan.sources, plan.fmt, plan.fn_kwargs
        self._skip_invalid = options.skip_invalid
        self.max_length, self.packing, self.seed, self.buffer = max_length, packing, seed, buffer

    def _conversations(self) -> Iterator[Conversation]:
        return iter_conversations(self._sources, self._fmt, self._skip_invalid, LoadStats())

    def _samples(self, conversations: list[Conversation]) -> list[tuple[list[int], list[int]]]:
        """The kept (input_ids, labels) of a window's conversations, in order."""
        samples = []
        for start in range(0, len(conversations), TOKENIZE_BATCH):
            out = tokenize_batch(_columns(conversations[start : start + TOKENIZE_BATCH]), **self._fn_kwargs)
            samples += [
                (i, la)
                for i, la, dropped in zip(out["input_ids"], out["labels"], out["dropped"])
                if not dropped
            ]
        return samples

    def _rows(self, samples: list[tuple[list[int], list[int]]]) -> list[dict[str, Any]]:
        if not self.packing:
            return [{"input_ids": i, "labels": la, "length": len(i)} for i, la in samples]
        order, offsets = best_fit_decreasing([len(i) for i, _ in samples], self.max_length)
        rows = []
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            input_ids: list[int] = []
            labels: list[int] = []
            positions: list[int] = []
            for k in order[a:b].tolist():
                ids, sample_labels = samples[k]
                input_ids += ids
                # As packing.pack: a sample's first label would be the target of the previous sample's last token.
                labels += [IGNORE_INDEX, *sample_labels[1:]]
                positions += range(len(ids))
            rows.append(
                {
                    "input_ids": input_ids,
                    "labels": labels,
                    "position_ids": positions,
                    "length": len(input_ids),
                }
            )
        return rows

    def window_rows(
        self, epoch: int, window: int, conversations: list[Conversation]
    ) -> Iterator[dict[str, Any]]:
        rows = self._rows(self._samples(conversations))
        for i in window_order(self.seed, epoch, window, len(rows)).tolist():
            yield rows[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for epoch in itertools.count():
            produced = False
            conversations = self._conversations()
            for window in itertools.count():
                chunk = list(itertools.islice(conversations, self.buffer))
                if not chunk:
                    break
                if window % workers == worker:
                    for row in self.window_rows(epoch, window, chunk):
                        produced = True
                        yield row
            if not produced:
                if workers == 1:
                    raise DataError(", ".join(self._sources), "no sample with a trainable token to stream")
                return  # more workers than windows with samples: the others stream them

    def first_sample(self) -> tuple[list[int], list[int]]:
        """The first kept sample (for the start-up log), reading only as far as it."""
        for conversation in self._conversations():
            samples = self._samples([conversation])
            if samples:
                return samples[0]
        raise DataError(", ".join(self._sources), "no sample with a trainable token to stream")
