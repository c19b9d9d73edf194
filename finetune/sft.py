"""Supervised fine-tuning of Baichuan2 (or any causal LM) with the official Baichuan2 command line.

    deepspeed finetune/sft.py --config recipes/baichuan2_7b/lora.yaml [--any_flag value ...]
    torchrun --nproc_per_node 8 finetune/sft.py ...
    python finetune/sft.py ...

parse → output directory (run.json, resume point) → tokenizer → data → model (+LoRA) → Trainer → train → save

Exit statuses (finetune/exits.py, docs/USING.md): 0 done; 1 a save failed (disk full, I/O); 2 bad input (flags,
recipe, data, model, output directory), one line; 3 diverged (NaN/inf); 75 stopped by SIGTERM/SIGINT after
saving a resumable checkpoint; 130 a second Ctrl-C.
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
from finetune import exits
from finetune.args import ConfigError, parse_args, wants_lora
from finetune.callbacks import LossCurveCallback
from finetune.checkpoints import (
    SaveError,
    checkpoint_problem,
    checkpoints_of,
    newest_intact_checkpoint,
    remove_staging,
)
from finetune.compile import compile_for_training
from finetune.data.cache import resolve_cache_dir
from finetune.data.collator import DataCollatorForSFT
from finetune.data.formats import DataError, resolve_data_files
from finetune.data.pipeline import prepare
from finetune.data.report import format_sample
from finetune.data.streaming import StreamingRows
from finetune.devices import current_peak_flops, import_torch_npu
from finetune.distributed import finish_distributed
from finetune.finite import DivergedError
from finetune.loading import (
    LoadError,
    check_model_dir,
    load_model_config,
    load_model_for_training,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_model_path,
    supports_packing,
)
from finetune.lora import add_lora
from finetune.output_dir import (
    OutputDirError,
    check_output_dir,
    clear_outputs,
    read_manifest,
    run_identity,
    set_status,
    write_manifest,
)
from finetune.preemption import Preempted, StopRequest
from finetune.trainer import SFTTrainer, count_parameters, training_flops_per_token

gc.freeze()
gc.enable()

logger = logging.getLogger("finetune.sft")

DATA_REPORT = "data_report.json"
EVAL_DATA_REPORT = "eval_data_report.json"  # the same report for --eval_data_path


def setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    rank = f" [rank{training_args.process_index}]" if training_args.world_size > 1 else ""
    logging.basicConfig(format=f"%(asctime)s{rank} %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Our loggers (finetune.sft, finetune.data.*): INFO on the main process, --log_level_replica on the others.
    logging.getLogger("finetune").setLevel(logging.INFO if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(level)


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


def resume_target(training_args) -> str | bool | None:
    """--resume_from_checkpoint PATH, or True for the newest checkpoint in output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None or value.lower() in ("", "false", "none"):
        return None
    return True if value.lower() == "true" else value


def run_mode(training_args, lora_args) -> str:
    return "qlora" if lora_args.q_lora else "lora" if training_args.use_lora else "full"


def _every_rank_here(training_args) -> None:
    if training_args.world_size > 1:
        training_args.distributed_state.wait_for_everyone()


def prepare_output_dir(training_args, identity: dict) -> str | None:
    """Refuse an output directory holding another run (or clear it with --overwrite_output_dir), record this
    run in run.json, and pick the checkpoint to resume from: --resume_from_checkpoint True takes the newest
    intact one, skipping damaged ones with a warning, and starts fresh when there is none yet."""
    output_dir = Path(training_args.output_dir)
    resume = resume_target(training_args)
    to_delete = check_output_dir(output_dir, identity, resume is not None, training_args.overwrite_output_dir)
    if (
        training_args.should_log
        and resume
        and read_manifest(output_dir) is None
        and checkpoints_of(output_dir)
    ):
        logger.warning(
            "%s has no run.json (an older version wrote it): cannot check it is the same run", output_dir
        )
    _every_rank_here(training_args)  # every rank looked before any writes
    if training_args.should_save:
        if to_delete:
            clear_outputs(to_delete)
            logger.warning(
                "--overwrite_output_dir: deleted %d outputs of the earlier run in %s",
                len(to_delete),
                output_dir,
            )
        left = remove_staging(output_dir)
        if left:
            logger.info("removed what interrupted saves left: %s", ", ".join(left))
        write_manifest(output_dir, identity, "running")
    _every_rank_here(training_args)
    if resume is None:
        return None
    world_size = training_args.world_size
    if resume is not True:
        problem = checkpoint_problem(resume, world_size)
        if problem:
            raise OutputDirError(f"--resume_from_checkpoint {resume}: {problem}")
        return resume
    checkpoint, skipped = newest_intact_checkpoint(output_dir, world_size)
    for line in skipped if training_args.should_log else ():  # every rank checks; one says so
        logger.warning("skipping damaged checkpoint %s", line)
    if checkpoint is None and skipped:
        raise OutputDirError(
            f"--resume_from_checkpoint True: no intact checkpoint in {output_dir} ({'; '.join(skipped)}); "
            "--overwrite_output_dir True starts over"
        )
    if checkpoint is None:
        logger.info(
            "--resume_from_checkpoint True: no checkpoint in %s yet; starting from the beginning", output_dir
        )
        return None
    logger.info("resuming from %s", checkpoint)
    return str(checkpoint)


def fail(error: Exception, status: int = exits.BAD_INPUT) -> int:
    """One line on stderr; every rank meets the same error, so none waits for another."""
    print(f"error: {error}", file=sys.stderr)
    finish_distributed(wait=False)
    return status


def main(argv: list[str] | None = None) -> int:
    import_torch_npu()  # when installed: registers torch.npu and DeepSpeed's NPU accelerator before devices are set up
    with StopRequest() as stop:
        try:
            return run(argv, stop)
        except Preempted as e:
            print(f"{e}; rerun the same command to start", file=sys.stderr)
            finish_distributed(wait=False)
            return exits.PREEMPTED
        except KeyboardInterrupt:
            print("interrupted: stopped at once, nothing saved since the last checkpoint", file=sys.stderr)
            return exits.INTERRUPTED


def run(argv: list[str] | None, stop: StopRequest) -> int:
    try:
        model_args, data_args, lora_args, training_args = parse_args(argv)
    except (ConfigError, ValueError) as e:
        return fail(e)
    setup_logging(training_args)
    transformers.set_seed(training_args.seed)  # the LoRA init too, so that runs (and ranks) agree
    try:
        model_args.model_name_or_path = resolve_model_path(
            model_args.model_name_or_path, training_args.cache_dir
        )
        # Its files are checked now (headers only), so a broken base fails in seconds, not after tokenizing.
        check_model_dir(model_args.model_name_or_path, model_args.trust_remote_code)
        sources = resolve_data_files(data_args.data_path)
        if data_args.eval_data_path:
            sources += resolve_data_files(data_args.eval_data_path)
        identity = run_identity(model_args.model_name_or_path, run_mode(training_args, lora_args), sources)
        checkpoint = prepare_output_dir(training_args, identity)
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
        train, evals, collator, report, eval_report = build_data(
            data_args, training_args, tokenizer, config, model_args.attn_implementation
        )
        model = load_model_for_training(model_args, lora_args, training_args)
        if wants_lora(training_args, lora_args):
            model = add_lora(model, lora_args, training_args)
    except (ConfigError, DataError, LoadError, OutputDirError) as e:
        return fail(e)
    if compile_for_training(model, training_args):
        logger.info("torch_compile: decoder layers compile in place at the first step")
    if training_args.should_save:
        report.write(Path(training_args.output_dir) / DATA_REPORT)
        if eval_report is not None:
            eval_report.write(Path(training_args.output_dir) / EVAL_DATA_REPORT)
    announce(training_args, model, train, report, eval_report, tokenizer)

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
        stop_request=stop,
        last_checkpoint=checkpoint,
    )
    output_dir = training_args.output_dir
    stop.training = True
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        if trainer.preempted_at is not None:
            return preempted(trainer, stop)
        trainer.save_final()
    except DivergedError as e:
        _status(training_args, "diverged")
        return fail(e, exits.DIVERGED)
    except SaveError as e:
        _status(training_args, "failed")
        return fail(e, exits.FAILED)
    except DataError as e:  # --streaming meets a bad record only when training reaches it
        _status(training_args, "failed")
        return fail(e)
    _status(training_args, "complete")
    if training_args.should_save:
        logger.info(
            "saved %s to %s", "adapter" if wants_lora(training_args, lora_args) else "model", output_dir
        )
    finish_distributed()
    return exits.OK


def preempted(trainer: SFTTrainer, stop: StopRequest) -> int:
    """Training stopped at a stop request, with its checkpoint saved: say so, once, and exit resumable."""
    _status(trainer.args, "preempted")
    if trainer.args.should_log:
        logger.warning(
            "stopped by %s at step %d: saved %s; rerun with --resume_from_checkpoint True to continue "
            "(exit status %d)",
            stop.signal,
            trainer.preempted_at,
            trainer.last_checkpoint,
            exits.PREEMPTED,
        )
    finish_distributed()
    return exits.PREEMPTED


def _status(training_args, status: str) -> None:
    if training_args.should_save:
        set_status(training_args.output_dir, status)


if __name__ == "__main__":
    status = main()
    # Everything is saved: leave the memory to the OS rather than to a final collection (over a second).
    gc.freeze()
    sys.exit(status)
