"""Supervised fine-tuning of Baichuan2 (or any causal LM) with the official Baichuan2 command line.

    deepspeed finetune/sft.py --config recipes/baichuan2_7b/lora.yaml [--any_flag value ...]
    torchrun --nproc_per_node 8 finetune/sft.py ...
    python finetune/sft.py ...

parse → tokenizer → model (+LoRA) → data → Trainer → train (resume) → save
"""

# ruff: noqa: E402  (the start-up code below must run before the package imports)
from __future__ import annotations

import dataclasses
import gc
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: put the repository root first, not finetune/, whose module names (trainer, evaluate, ...)
    # would shadow installed packages.
    sys.path[0] = str(Path(__file__).resolve().parents[1])


# The imports below create millions of long-lived objects: collecting garbage while they load costs about a second
# of start-up, so the collector waits, then freezes them out of every later collection.
gc.disable()

import logging

import transformers
from transformers.trainer_utils import IntervalStrategy

import finetune  # noqa: F401  (registers the native Baichuan2 classes)
from finetune.args import ConfigError, parse_args, wants_lora
from finetune.callbacks import LossCurveCallback
from finetune.compile import compile_for_training
from finetune.data.cache import resolve_cache_dir
from finetune.data.collator import DataCollatorForSFT
from finetune.data.formats import DataError
from finetune.data.pipeline import prepare
from finetune.data.report import format_sample
from finetune.data.streaming import StreamingRows
from finetune.devices import current_peak_flops, import_torch_npu
from finetune.distributed import finish_distributed
from finetune.loading import (
    load_model_config,
    load_model_for_training,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_model_path,
    supports_packing,
)
from finetune.lora import add_lora
from finetune.trainer import SFTTrainer, count_parameters, training_flops_per_token

gc.freeze()
gc.enable()

logger = logging.getLogger("finetune.sft")

DATA_REPORT = "data_report.json"


def setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    rank = f" [rank{training_args.process_index}]" if training_args.world_size > 1 else ""
    logging.basicConfig(format=f"%(asctime)s{rank} %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Our loggers (finetune.sft, finetune.data.*): INFO on the main process, --log_level_replica on the others.
    logging.getLogger("finetune").setLevel(logging.INFO if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(level)


def build_data(data_args, training_args, tokenizer, config, attn_implementation):
    """Train/eval sets, the collator, and the data report. The main process of each node prepares the data (reads,
    tokenizes, packs into the cache); the other ranks then memory-map its cache entries. With --streaming, rows are
    read and packed as training consumes them (on rank 0 only)."""
    max_length = training_args.model_max_length
    packing = (
        data_args.packing if data_args.packing is not None else supports_packing(config, attn_implementation)
    )
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
        prepared = None
    else:
        with training_args.main_process_first(desc="preparing data"):
            prepared = prepare(
                tokenizer,
                data_args,
                max_length,
                packing=packing,
                cache_dir=resolve_cache_dir(data_args.data_cache_dir),
                eval_data_path=data_args.eval_data_path,
                val_size=data_args.val_size,
                seed=training_args.seed,
                model_type=config.model_type,
            )
        logger.info(
            "data ready in %.1f s: %d %s (tokenized samples: cache %s%s)",
            prepared.seconds,
            len(prepared.train),
            "packed rows" if packing else "samples",
            prepared.report.cache,
            f"; packed rows: cache {prepared.packed_cache}" if packing else "",
        )
    report = prepared.report if prepared is not None else train.report
    evals = None
    if data_args.streaming and data_args.eval_data_path:
        with training_args.main_process_first(desc="preparing eval data"):
            evals = prepare(
                tokenizer,
                dataclasses.replace(data_args, data_path=data_args.eval_data_path),
                max_length,
                packing=packing,
                cache_dir=resolve_cache_dir(data_args.data_cache_dir),
                model_type=config.model_type,
            ).train
    elif prepared is not None:
        train, evals = prepared.train, prepared.eval
    if evals is not None:
        evaluate_when_saving(training_args)
    if not packing and not data_args.streaming and training_args.train_sampling_strategy == "random":
        # Padding: batches of similar lengths waste the least compute.
        training_args.train_sampling_strategy = "group_by_length"
    # The collator ignores the extra columns, and group_by_length reads "length".
    training_args.remove_unused_columns = False
    fixed_width = data_args.streaming and training_args.world_size > 1
    return train, evals, make_collator(tokenizer, training_args, attn_implementation, fixed_width), report


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


def announce(training_args, model, train, report, tokenizer) -> None:
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
        logger.info("sample:\n%s", format_sample(tokenizer, *train.first_sample()))
        return
    logger.info("data (%s rows%s):\n%s", len(train), ", packed" if report.packing else "", report.table())
    first = train[0]
    sample = (first["input_ids"], first["labels"])
    if report.packing:
        # Show the first sample of the row, not the whole row.
        end = next((i for i, p in enumerate(first["position_ids"][1:], 1) if p == 0), len(first["input_ids"]))
        sample = (first["input_ids"][:end], first["labels"][:end])
    logger.info("sample:\n%s", format_sample(tokenizer, *sample))


def resume_target(training_args) -> str | bool | None:
    """--resume_from_checkpoint PATH, or True for the newest checkpoint in output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None or value.lower() in ("", "false", "none"):
        return None
    return True if value.lower() == "true" else value


def fail(error: Exception) -> int:
    """One line on stderr and exit status 2; every rank meets the same error, so none waits for another."""
    print(f"error: {error}", file=sys.stderr)
    finish_distributed(wait=False)
    return 2


def main(argv: list[str] | None = None) -> int:
    import_torch_npu()  # when installed: registers torch.npu and DeepSpeed's NPU accelerator before devices are set up
    try:
        model_args, data_args, lora_args, training_args = parse_args(argv)
    except (ConfigError, ValueError) as e:
        return fail(e)
    setup_logging(training_args)
    transformers.set_seed(training_args.seed)  # the LoRA init too, so that runs (and ranks) agree
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    model_args.attn_implementation = resolve_attn_implementation(
        model_args.attn_implementation, training_args
    )

    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        model_max_length=training_args.model_max_length,
        cache_dir=training_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
    )
    # Data before weights: a bad record stops the run in seconds, not after a 13B model has loaded.
    config = load_model_config(model_args, training_args)
    try:
        train, evals, collator, report = build_data(
            data_args, training_args, tokenizer, config, model_args.attn_implementation
        )
    except DataError as e:
        return fail(e)

    model = load_model_for_training(model_args, lora_args, training_args)
    if wants_lora(training_args, lora_args):
        try:
            model = add_lora(model, lora_args, training_args)
        except ConfigError as e:
            return fail(e)
    if compile_for_training(model, training_args):
        logger.info("torch_compile: decoder layers compile in place at the first step")
    if training_args.should_save:
        report.write(Path(training_args.output_dir) / DATA_REPORT)
    announce(training_args, model, train, report, tokenizer)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evals,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[LossCurveCallback()],
        base_model_dir=model_args.model_name_or_path,
        flops_per_token=training_flops_per_token(model),
        peak_flops=current_peak_flops(),
    )
    try:
        trainer.train(resume_from_checkpoint=resume_target(training_args))
    except DataError as e:  # --streaming meets a bad record only when training reaches it
        return fail(e)
    trainer.save_state()
    trainer.save_model()
    if training_args.should_save:
        logger.info(
            "saved %s to %s",
            "adapter" if wants_lora(training_args, lora_args) else "model",
            training_args.output_dir,
        )
    finish_distributed()
    return 0


if __name__ == "__main__":
    status = main()
    # Everything is saved: leave the memory to the OS rather than to a final collection (over a second).
    gc.freeze()
    sys.exit(status)
