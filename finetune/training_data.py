"""The data a run trains on, as sft.py needs it: train/eval sets prepared once per node (or streamed), the
collator, the data reports in the output directory, and what a human should check before the first step."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from transformers.trainer_utils import IntervalStrategy

from finetune.data.cache import resolve_cache_dir
from finetune.data.collator import DataCollatorForSFT
from finetune.data.pipeline import prepare
from finetune.data.report import DataReport, format_sample
from finetune.data.streaming import StreamingRows
from finetune.loading import supports_packing
from finetune.trainer import count_parameters

logger = logging.getLogger("finetune.sft")

DATA_REPORT = "data_report.json"
EVAL_DATA_REPORT = "eval_data_report.json"  # the same report for --eval_data_path


def build_data(data_args, training_args, tokenizer, config, attn_implementation):
    """Train/eval sets, the collator, and the data reports (the eval set's: None without --eval_data_path). The
    main process of each node prepares the data (reads, tokenizes, packs into the data cache); the other ranks
    then memory-map its cache entries. With --streaming, rows are read and packed as training consumes them (on
    rank 0 only)."""
    max_length = training_args.model_max_length
    packing = (
        data_args.packing if data_args.packing is not None else supports_packing(config, attn_implementation)
    )
    cache_dir = resolve_cache_dir(data_args.data_cache_dir)
    if data_args.streaming:
        train = StreamingRows(
            tokenizer,
            data_args,
            max_length,
            packing=packing,
            seed=training_args.seed,
            buffer=data_args.streaming_buffer,
            model_type=config.model_type,
        )
        report, evals, eval_report = train.report, None, None
        if data_args.eval_data_path:
            with training_args.main_process_first(desc="preparing eval data"):
                held_out = prepare(
                    tokenizer,
                    dataclasses.replace(data_args, data_path=data_args.eval_data_path),
                    max_length,
                    packing=packing,
                    cache_dir=cache_dir,
                    model_type=config.model_type,
                    require=True,
                )
            evals, eval_report = held_out.train, held_out.report
    else:
        with training_args.main_process_first(desc="preparing data"):
            prepared = prepare(
                tokenizer,
                data_args,
                max_length,
                packing=packing,
                cache_dir=cache_dir,
                eval_data_path=data_args.eval_data_path,
                val_size=data_args.val_size,
                seed=training_args.seed,
                model_type=config.model_type,
                require=True,
            )
        logger.info(
            "data ready in %.1f s: %d %s (tokenized samples: cache %s%s)",
            prepared.seconds,
            len(prepared.train),
            "packed rows" if packing else "samples",
            prepared.report.cache,
            f"; packed rows: cache {prepared.packed_cache}" if packing else "",
        )
        train, evals, report, eval_report = (
            prepared.train,
            prepared.eval,
            prepared.report,
            prepared.eval_report,
        )
    if evals is not None:
        evaluate_when_saving(training_args)
    if not packing and not data_args.streaming and training_args.train_sampling_strategy == "random":
        # Padding: batches of similar lengths waste the least compute.
        training_args.train_sampling_strategy = "group_by_length"
    # The collator ignores the extra columns, and group_by_length reads "length".
    training_args.remove_unused_columns = False
    fixed_width = data_args.streaming and training_args.world_size > 1
    collator = make_collator(tokenizer, training_args, attn_implementation, fixed_width)
    return train, evals, collator, report, eval_report


def make_collator(
    tokenizer, training_args, attn_implementation: str, fixed_width: bool = False
) -> DataCollatorForSFT:
    """Rows padded to the batch's longest, except for flex_attention: compiled, it is specialised to one row
    length and recompiles for each new one, then runs uncompiled (the whole score matrix) past torch's
    recompile limit; rows of one fixed width compile once. ``fixed_width`` too for a stream on several ranks:
    rank 0 concatenates the ranks' batches to dispatch them, which needs one width."""
    fixed = fixed_width or attn_implementation == "flex_attention"
    width = training_args.model_max_length if fixed else None
    return DataCollatorForSFT(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=width)


def evaluate_when_saving(training_args) -> None:
    """Held-out data given (--eval_data_path / --val_size) but no --eval_strategy: evaluate whenever a
    checkpoint is saved (every epoch when nothing is saved), so the eval loss is logged and plotted."""
    if training_args.eval_strategy != IntervalStrategy.NO:
        return
    save = training_args.save_strategy
    training_args.eval_strategy = IntervalStrategy.STEPS if save == "steps" else IntervalStrategy.EPOCH
    training_args.eval_steps = training_args.save_steps


def announce(training_args, model, train, report, eval_report, tokenizer) -> None:
    """What a human should check before the first step: derived batch numbers, trainable share, data, and one
    decoded sample with its masked spans."""
    if not training_args.should_log:
        return
    total, trainable = count_parameters(model)
    logger.info(
        "global batch %d rows = %d per device x %d accumulation x %d ranks; at most %d tokens per step",
        training_args.global_batch_size(),
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        training_args.world_size,
        training_args.max_tokens_per_step(),
    )
    logger.info(
        "trainable parameters %s of %s (%.4f%%); attention %s",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        model.config._attn_implementation,
    )
    if isinstance(train, StreamingRows):
        logger.info("data (streamed%s):\n%s", ", packed" if report.packing else "", report.table())
        sample = train.first_sample()
    else:
        logger.info("data (%s rows%s):\n%s", len(train), ", packed" if report.packing else "", report.table())
        first = train[0]
        sample = (first["input_ids"], first["labels"])
        if report.packing:
            # Show the first sample of the row, not the whole row.
            end = next(
                (i for i, p in enumerate(first["position_ids"][1:], 1) if p == 0), len(first["input_ids"])
            )
            sample = (first["input_ids"][:end], first["labels"][:end])
    if eval_report is not None:
        logger.info("eval data (--eval_data_path):\n%s", eval_report.table())
    logger.info("sample:\n%s", format_sample(tokenizer, *sample))


def write_reports(training_args, report: DataReport, eval_report: DataReport | None) -> None:
    if training_args.should_save:
        report.write(Path(training_args.output_dir) / DATA_REPORT)
        if eval_report is not None:
            eval_report.write(Path(training_args.output_dir) / EVAL_DATA_REPORT)
