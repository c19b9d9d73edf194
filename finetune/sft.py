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

import finetune  # noqa: F401  (registers the native Baichuan2 classes)
from finetune import exits
from finetune.args import ConfigError, parse_args, wants_lora
from finetune.callbacks import LossCurveCallback
from finetune.checkpoints import SaveError
from finetune.compile import compile_for_training
from finetune.data.formats import DataError, resolve_data_files
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
)
from finetune.lora import add_lora
from finetune.output_dir import OutputDirError, prepare_output_dir, run_identity, run_mode, set_run_status
from finetune.preemption import Preempted, StopRequest
from finetune.trainer import SFTTrainer, training_flops_per_token
from finetune.training_data import announce, build_data, write_reports

gc.freeze()
gc.enable()

logger = logging.getLogger("finetune.sft")


def setup_logging(training_args) -> None:
    level = training_args.get_process_log_level()
    rank = f" [rank{training_args.process_index}]" if training_args.world_size > 1 else ""
    logging.basicConfig(format=f"%(asctime)s{rank} %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Our loggers (finetune.sft, finetune.data.*): INFO on the main process, --log_level_replica on the others.
    logging.getLogger("finetune").setLevel(logging.INFO if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(level)


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
    write_reports(training_args, report, eval_report)
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
        set_run_status(training_args, "diverged")
        return fail(e, exits.DIVERGED)
    except SaveError as e:
        set_run_status(training_args, "failed")
        return fail(e, exits.FAILED)
    except DataError as e:  # --streaming meets a bad record only when training reaches it
        set_run_status(training_args, "failed")
        return fail(e)
    set_run_status(training_args, "complete")
    if training_args.should_save:
        logger.info(
            "saved %s to %s", "adapter" if wants_lora(training_args, lora_args) else "model", output_dir
        )
    finish_distributed()
    return exits.OK


def preempted(trainer: SFTTrainer, stop: StopRequest) -> int:
    """Training stopped at a stop request, with its checkpoint saved: say so, once, and exit resumable."""
    set_run_status(trainer.args, "preempted")
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


if __name__ == "__main__":
    status = main()
    # Everything is saved: leave the memory to the OS rather than to a final collection (over a second).
    gc.freeze()
    sys.exit(status)
