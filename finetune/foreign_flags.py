"""Command lines written for other Baichuan2 training scripts, run here unchanged.

FastChat's `train.py` (the Ascend guide's command: `torchrun … --evaluation_strategy "no" --fsdp "full_shard
auto_wrap" --fsdp_transformer_layer_cls_to_wrap 'DecoderLayer' --lazy_preprocess True …`) uses flags that
transformers 5 renamed or never had. Each is translated before parsing, with a warning-level log line saying
what it became (warnings show before logging is configured):
- `--evaluation_strategy X` → `--eval_strategy X` (transformers 5's name);
- `--fsdp_transformer_layer_cls_to_wrap NAMES` → `transformer_layer_cls_to_wrap` in `--fsdp_config`, the
  official 7B class name `DecoderLayer` becoming the native model's `BaichuanLayer` (both sizes);
- `--lazy_preprocess` is accepted and dropped: tokenisation here is done once and cached.

On CPU ranks (`cpu_launch_rules`): torchrun without DeepSpeed becomes gloo data parallel (`--use_cpu True`:
otherwise every rank trained alone, writing one output directory), and `--fsdp`, which needs accelerators, is
dropped with a warning for plain data parallel. `check_world_size` refuses a run whose WORLD_SIZE says
several ranks but which is not one of them.
"""

from __future__ import annotations

import json
import os

from transformers.utils import logging

from .devices import has_accelerator

logger = logging.get_logger("finetune.sft")

RENAMED = {"--evaluation_strategy": "--eval_strategy"}
IGNORED = {
    "--lazy_preprocess": "tokenisation is done once before training and cached, which is what it asked for"
}
LAYER_CLASS_FLAG = "--fsdp_transformer_layer_cls_to_wrap"
# Official Baichuan2 layer class names → the native model's (BaichuanLayer for 7B and 13B alike).
LAYER_ALIASES = {"DecoderLayer": "BaichuanLayer"}


class ForeignFlagError(ValueError):
    """A foreign flag that cannot be translated; one line."""


def _split(argv: list[str], i: int) -> tuple[str, str | None, int]:
    """(flag, value, next index) for argv[i], in `--flag value` or `--flag=value` form."""
    flag, eq, value = argv[i].partition("=")
    if eq:
        return flag, value, i + 1
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        return flag, argv[i + 1], i + 2
    return flag, None, i + 1


def translate_foreign_flags(argv: list[str]) -> list[str]:
    """``argv`` with FastChat's flags replaced by their equivalents here (see the module docstring)."""
    out: list[str] = []
    layers: list[str] | None = None
    i = 0
    while i < len(argv):
        flag = argv[i].partition("=")[0]
        if flag in RENAMED:
            flag, value, i = _split(argv, i)
            logger.warning("%s %s → %s %s (transformers 5's name)", flag, value, RENAMED[flag], value)
            out += [RENAMED[flag]] + ([value] if value is not None else [])
        elif flag in IGNORED:
            flag, value, i = _split(argv, i)
            logger.warning("%s %s accepted and ignored: %s", flag, value or "", IGNORED[flag])
        elif flag == LAYER_CLASS_FLAG:
            flag, value, i = _split(argv, i)
            if value is None:
                raise ForeignFlagError(f"{LAYER_CLASS_FLAG} needs a layer class name")
            names = [name.strip() for name in value.split(",") if name.strip()]
            layers = [LAYER_ALIASES.get(name, name) for name in names]
            logger.warning(
                "%s %s → --fsdp_config transformer_layer_cls_to_wrap %s%s",
                LAYER_CLASS_FLAG,
                value,
                layers,
                " (DecoderLayer is the official 7B name of the native model's BaichuanLayer)"
                if "DecoderLayer" in names
                else "",
            )
        else:
            out.append(argv[i])
            i += 1
    if layers is not None:
        out = _with_layer_classes(out, layers)
    return out


def _with_layer_classes(argv: list[str], layers: list[str]) -> list[str]:
    """Add transformer_layer_cls_to_wrap to --fsdp_config (a JSON object on the command line), or pass one."""
    for i, arg in enumerate(argv):
        flag, eq, inline = arg.partition("=")
        if flag != "--fsdp_config":
            continue
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if not value.lstrip().startswith("{"):
            raise ForeignFlagError(
                f"{LAYER_CLASS_FLAG} with --fsdp_config {value}: put transformer_layer_cls_to_wrap in that file"
            )
        config = json.dumps({**json.loads(value), "transformer_layer_cls_to_wrap": layers})
        return argv[:i] + ["--fsdp_config", config] + argv[i + (1 if eq else 2) :]
    return argv + ["--fsdp_config", json.dumps({"transformer_layer_cls_to_wrap": layers})]


def cpu_launch_rules(args) -> None:
    """Adjust TrainingArguments for CPU ranks before transformers sets devices up (see the module docstring)."""
    if has_accelerator():
        return
    if args.fsdp:
        logger.warning(
            "--fsdp %s: FSDP shards over accelerators and this host has none; dropped, training plain data "
            "parallel (every rank holds the whole model). On GPUs the same command runs FSDP.",
            args.fsdp,
        )
        args.fsdp, args.fsdp_config = None, None
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    launched = "LOCAL_RANK" in os.environ and "MASTER_ADDR" in os.environ  # by torchrun (or a like launcher)
    if world_size > 1 and launched and not args.deepspeed and not args.use_cpu:
        # Without it transformers sets up no process group on a CPU host: each rank would train alone.
        logger.warning("%d CPU ranks (torchrun): --use_cpu True, data parallel over gloo", world_size)
        args.use_cpu = True


def check_world_size(args) -> None:
    """A run that WORLD_SIZE says is one of several ranks but that is not in a process group would train a
    separate model per rank into the same output directory."""
    expected = int(os.environ.get("WORLD_SIZE", 1))
    if expected > 1 and args.world_size != expected:
        raise ForeignFlagError(
            f"WORLD_SIZE={expected} but this process joined no {expected}-rank process group (world size "
            f"{args.world_size}); launch with torchrun or deepspeed, or unset WORLD_SIZE"
        )
