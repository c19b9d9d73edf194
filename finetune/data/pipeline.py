"""The whole data path of a training run: tokenized samples (dataset.py) → held-out split → packed rows
(packing.py), each stage a cache entry, so that one process builds them and every other rank, and every later
launch, memory-maps them. `finetune/sft.py` calls `prepare` on its main process first; `finetune.preprocess`
calls it ahead of a run to build the same entries."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.data.dataset import TokenizedData, tokenize_data
from finetune.data.options import DataOptions
from finetune.data.packing import pack
from finetune.data.report import DataReport

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    train: Any  # datasets.Dataset: samples, or packed rows
    eval: Any | None
    report: DataReport
    seconds: float  # how long preparing took in this process
    packed_cache: str | None = None  # "hit", "miss" or "off" for the packed rows; None unpacked


def split_rows(count: int, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions of ``count`` samples, as `datasets.Dataset.train_test_split` draws them for
    ``test_size=size`` (a fraction below 1, else a count) and ``seed``."""
    import datasets

    positions = datasets.Dataset.from_dict({"i": np.arange(count, dtype=np.int64)})
    test_size = int(size) if size >= 1 else size
    split = positions.train_test_split(test_size=test_size, seed=seed, keep_in_memory=True)
    return np.asarray(split["train"]["i"]), np.asarray(split["test"]["i"])


def prepare(
    tokenizer: Any,
    options: DataOptions,
    max_length: int,
    *,
    packing: bool,
    cache_dir: str | os.PathLike | None,
    eval_data_path: Sequence[str] | None = None,
    val_size: float = 0.0,
    seed: int = 0,
    model_type: str | None = None,
) -> TrainingData:
    """Train (and eval) sets as training reads them, and the data report with every stage's time and memory.

    The held-out split (``val_size``) is drawn from the tokenized samples before packing, so packed rows never mix
    train and eval samples. Raises `DataError` as `tokenize_data` does."""
    start = time.perf_counter()
    data, report = tokenize_data(tokenizer, options, max_length, cache_dir=cache_dir, model_type=model_type)
    evals: TokenizedData | None = None
    if eval_data_path:
        evals, _ = tokenize_data(
            tokenizer,
            options,
            max_length,
            data_path=eval_data_path,
            cache_dir=cache_dir,
            model_type=model_type,
        )
    if val_size:
        train_rows, eval_rows = split_rows(len(data), val_size, seed)
        data, evals = data.select(train_rows), data.select(eval_rows)
    report.packing = packing
    if not packing:
        evals = evals.dataset() if evals is not None else None
        return TrainingData(data.dataset(), evals, report, time.perf_counter() - start)
    workers = options.preprocessing_num_workers
    train, stats = pack(data, max_length, cache_dir, workers)
    report.packing_efficiency = stats["packing_efficiency"]
    report.packed_rows = stats["rows"]
    report.stages["pack"] = stats["stages"]["pack"]  # on a hit, the build's figures
    if "load" in stats["stages"]:
        report.stages["load packed"] = stats["stages"]["load"]
    packed_eval = pack(evals, max_length, cache_dir, workers)[0] if evals is not None else None
    logger.info(
        "packed %d samples into %d rows of %d tokens (%.1f%% full; cache %s)",
        stats["samples"],
        stats["rows"],
        max_length,
        100 * stats["packing_efficiency"],
        stats["cache"],
    )
    return TrainingData(train, packed_eval, report, time.perf_counter() - start, stats["cache"])
