"""The whole data path of a training run: tokenized samples (dataset.py) → held-out split → packed rows
(packing.py), each stage a cache entry, so that one process builds them and every other rank, and every later
launch, memory-maps them. `finetune/sft.py` calls `prepare` on its main process first; `finetune.preprocess`
calls it ahead of a run to build the same entries."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.data.dataset import TokenizedData, tokenize_data
from finetune.data.formats import DataError
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
    eval_report: DataReport | None = None  # --eval_data_path's


def require_samples(report: DataReport, data_path: Sequence[str], model_max_length: int) -> None:
    """A data set whose every record was dropped stops here with one line, before the weights load (the Trainer
    would fail much later on an empty dataset, and an empty eval set would silently log no eval loss)."""
    if report.samples_kept:
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items()) or "none kept"
    hint = f"; raise --model_max_length (now {model_max_length})" if "model_max_length" in reasons else ""
    raise DataError(
        ", ".join(map(str, data_path)),
        f"no sample left to train on: {report.records_read} record(s) read, all dropped ({reasons}){hint}",
    )


def split_rows(total: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """--val_size: (train, held-out) positions of ``total`` samples, a fraction (<1) or a count (>=1) held out,
    drawn as `datasets.Dataset.train_test_split` draws them (ceil of the fraction); one that leaves nothing to
    train on is an error."""
    import datasets

    count = int(val_size) if val_size >= 1 else math.ceil(val_size * total)
    if count >= total:
        raise DataError(
            "--val_size",
            f"{val_size:g} holds back {count} of the {total} training samples, leaving none to train on",
        )
    positions = datasets.Dataset.from_dict({"i": np.arange(total, dtype=np.int64)})
    split = positions.train_test_split(test_size=count, seed=seed, keep_in_memory=True)
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
    require: bool = False,
) -> TrainingData:
    """Train (and eval) sets as training reads them, and the data reports with every stage's time and memory.

    The held-out split (``val_size``) is drawn from the tokenized samples before packing, so packed rows never mix
    train and eval samples. ``require``: a train or eval set with no sample left is a `DataError`
    (`require_samples`). Raises `DataError` as `tokenize_data` does."""
    start = time.perf_counter()
    data, report = tokenize_data(tokenizer, options, max_length, cache_dir=cache_dir, model_type=model_type)
    evals: TokenizedData | None = None
    eval_report = None
    if eval_data_path:
        evals, eval_report = tokenize_data(
            tokenizer,
            options,
            max_length,
            data_path=eval_data_path,
            cache_dir=cache_dir,
            model_type=model_type,
        )
    if require:
        require_samples(report, options.data_path, max_length)
        if eval_report is not None:
            require_samples(eval_report, eval_data_path, max_length)
    if val_size:
        train_rows, eval_rows = split_rows(len(data), val_size, seed)
        data, evals = data.select(train_rows), data.select(eval_rows)
    report.packing = packing
    if not packing:
        evals = evals.dataset() if evals is not None else None
        return TrainingData(
            data.dataset(), evals, report, time.perf_counter() - start, eval_report=eval_report
        )
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
    seconds = time.perf_counter() - start
    return TrainingData(train, packed_eval, report, seconds, stats["cache"], eval_report)
