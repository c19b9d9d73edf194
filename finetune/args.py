"""Command-line schema of `finetune/sft.py`: four dataclasses parsed by `HfArgumentParser`, with
`--config recipe.yaml` supplying defaults that command-line flags override.

Every flag of the official Baichuan2 `fine-tune.py` keeps its name and meaning (docs/BAICHUAN2.md, "The official command line");
the official extras (`cache_dir`, `optim`, `model_max_length`, `use_lora`) live on `TrainingArguments`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import transformers
import yaml
from transformers import HfArgumentParser
from transformers.utils import is_torch_tf32_available, logging

from finetune.jsonfile import read_json

from .data.options import DataOptions
from .devices import cpu_has_bf16_matmul, default_ddp_backend, has_accelerator
from .distributed import init_cpu_deepspeed_state, needs_cpu_deepspeed_state
from .foreign_flags import check_world_size, cpu_launch_rules, translate_foreign_flags

OFFICIAL_LORA_TARGETS = ["W_pack"]

logger = logging.get_logger(__name__)


class ConfigError(ValueError):
    """A recipe or flag combination that cannot run; the message is one line naming the culprit."""


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="baichuan-inc/Baichuan2-7B-Base",
        metadata={"help": "Base model directory (official Baichuan2 layout or any causal LM) or hub id."},
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "Attention backend: auto (flash_attention_2 on a CUDA GPU with flash-attn installed and "
            "bf16/fp16, else sdpa), sdpa, eager, flash_attention_2, flex_attention."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run a non-Baichuan checkpoint's own modeling code. Baichuan2 never needs it."},
    )


@dataclass
class DataArguments(DataOptions):
    """The data flags every data tool shares (`DataOptions`), and what only training has."""

    packing: bool | None = field(
        default=None,
        metadata={
            "help": "Pack samples into model_max_length rows (position_ids restart per sample). "
            "Default: on when the model supports packed rows (Baichuan does), else padding + group_by_length."
        },
    )
    eval_data_path: list[str] | None = field(
        default=None, metadata={"help": "Held-out data, same formats as data_path."}
    )
    val_size: float = field(
        default=0.0,
        metadata={"help": "Split this fraction (<1) or count (>=1) off the training data for evaluation."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read, tokenize and pack the data as training consumes it (no cache; needs --max_steps). "
            "For a corpus larger than the data cache's disk."
        },
    )
    streaming_buffer: int = field(
        default=10_000,
        metadata={"help": "With --streaming: conversations packed (and shuffled) together in one window."},
    )


@dataclass
class LoraArguments:
    lora_r: int = field(default=1, metadata={"help": "LoRA rank (official: 1)."})
    lora_alpha: float = field(
        default=32.0, metadata={"help": "LoRA alpha; scaling is alpha/r (official: 32)."}
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input (official: 0.1)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(OFFICIAL_LORA_TARGETS),
        metadata={"help": "Module names to adapt, or all-linear (official: W_pack, the fused QKV)."},
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full next to the adapter and saved with it (e.g. lm_head)."},
    )
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha/sqrt(r)."})
    q_lora: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the base in 4-bit NF4 (double quant) and train LoRA on top."},
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None, metadata={"help": "Cache directory for hub downloads."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (official: adamw_torch)."})
    model_max_length: int = field(
        default=512, metadata={"help": "Maximum tokens per sample (and per packed row)."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    # transformers 5 dropped this flag; here it guards an output directory that holds another run.
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the outputs of an earlier run in output_dir (checkpoints included) before training; "
            "without it such a directory is refused unless the run resumes it."
        },
    )
    # A NaN loss must show as NaN (transformers' default logs the previous mean instead); the run stops at it.
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Log a NaN/inf loss as the mean of the previous ones (off here)."}
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Warmup as a fraction of total steps (kept for the official command; sets warmup_steps)."
        },
    )

    def __post_init__(self):
        cpu_launch_rules(self)  # torchrun / --fsdp on CPU ranks (finetune/foreign_flags.py)
        if isinstance(self.deepspeed, str):
            check_deepspeed_config(self.deepspeed)
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ConfigError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps and self.warmup_ratio:
                raise ConfigError("give --warmup_ratio or --warmup_steps, not both")
            # transformers 5 reads a float below 1 in warmup_steps as a ratio of the total steps.
            self.warmup_steps = self.warmup_steps or self.warmup_ratio
        if self.tf32 and not is_torch_tf32_available():
            logger.warning("--tf32 ignored: no Ampere-or-newer CUDA device here")
            self.tf32 = None
        if self.bf16 and not has_accelerator() and not cpu_has_bf16_matmul():
            logger.warning(
                "--bf16 on a CPU without bf16 matrix instructions (AVX512-BF16, AMX): its bf16 matmuls are "
                "emulated, several times slower than fp32 (the output head runs in fp32 regardless); "
                "leave --bf16 off on this machine"
            )
        # The official command says --gradient_checkpointing, which transformers 5 renamed (and warns about).
        for old, new in (
            ("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
        ):
            if getattr(self, old) is not None and getattr(self, new) is None:
                setattr(self, new, getattr(self, old))
                setattr(self, old, None)
        if not has_accelerator():
            self.dataloader_pin_memory = False  # nothing to pin for
        if self.ddp_backend is None:
            self.ddp_backend = default_ddp_backend()
        if needs_cpu_deepspeed_state(self.deepspeed) and isinstance(self.accelerator_config, dict | None):
            init_cpu_deepspeed_state(self.ddp_timeout)
            self.accelerator_config = {**(self.accelerator_config or {}), "use_configured_state": True}
        if self.model_max_length < 2:
            raise ConfigError(f"--model_max_length must be at least 2, got {self.model_max_length}")
        super().__post_init__()

    def _validate_args(self):
        # transformers wants use_cpu before it accepts bf16 without a GPU, but use_cpu also turns DeepSpeed off.
        # torch and DeepSpeed's CPU accelerator both run bf16, so only that one check is skipped here.
        if not (self.bf16 and not has_accelerator()):
            return super()._validate_args()
        self.bf16 = False
        try:
            super()._validate_args()
        finally:
            self.bf16 = True

    def global_batch_size(self) -> int:
        """Samples (or packed rows) per optimizer step: micro-batch × accumulation × data-parallel ranks."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    def max_tokens_per_step(self) -> int:
        """Upper bound on tokens per optimizer step (every row full): global batch × model_max_length."""
        return self.global_batch_size() * self.model_max_length


def check_deepspeed_config(path: str) -> None:
    """`--deepspeed` names a JSON file (transformers also takes a JSON string); name the file and the flag
    rather than letting a JSONDecodeError surface from inside transformers."""
    if path.lstrip().startswith("{"):
        return
    try:
        read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"--deepspeed {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--deepspeed {path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"--deepspeed {path}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg})"
        ) from None


ARGUMENT_CLASSES = (ModelArguments, DataArguments, LoraArguments, TrainingArguments)

# transformers 4 flags that transformers 5 renamed or dropped: the exact replacement beats a spelling guess.
# (--evaluation_strategy is not here: FastChat's command lines carry it, so it is an alias, foreign_flags.py.)
RENAMED_FLAGS = {
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "fp16_backend": "half_precision_backend",
    "push_to_hub_model_id": "hub_model_id",
}


class _Parser(HfArgumentParser):
    """argparse's own errors (a bad value, a missing required flag) as one `ConfigError` line instead of the
    usage of some 200 flags."""

    def error(self, message: str):
        raise ConfigError(message)


def build_parser() -> HfArgumentParser:
    parser = _Parser(ARGUMENT_CLASSES)
    parser.add_argument("--config", default=None, help="YAML recipe whose keys are defaults for these flags.")
    return parser


def suggestion(name: str, known: list[str]) -> str:
    """ " (did you mean --x?)" for a mistyped or renamed flag, else ""."""
    match = RENAMED_FLAGS.get(name) or next(
        iter(difflib.get_close_matches(name, known, n=1, cutoff=0.7)), None
    )
    if match is None or match not in known:
        return ""
    return f" (did you mean --{match}?)"


def known_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions if a.dest not in ("help", "config")]


def read_recipe(path: str | Path) -> dict:
    """Read a recipe: a flat mapping of flag names to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of flag names to values, got {type(data).__name__}")
    return data


def _key_lines(path: str | Path) -> dict[str, int]:
    """The line of each top-level key of a recipe, for messages about a key."""
    node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def apply_config(parser: argparse.ArgumentParser, config: dict, source: str) -> None:
    """Make the recipe's values the parser's defaults, so that flags given on the command line win."""
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    for key, value in config.items():
        action = actions.get(key)
        if action is None or key == "config":
            line = _key_lines(source).get(key) if Path(source).is_file() else None
            where = f", line {line}" if line else ""
            raise ConfigError(
                f"{source}{where}: unknown key '{key}'{suggestion(str(key), known_flags(parser))}"
            )
        if action.nargs in ("+", "*") and not isinstance(value, list):
            value = [value]
        # A recipe can supply a field the dataclass marks required (data_path).
        action.required = False
        action.default = value


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, LoraArguments, TrainingArguments]:
    parser = build_parser()
    # FastChat's flags (finetune/foreign_flags.py)
    argv = translate_foreign_flags(sys.argv[1:] if argv is None else list(argv))
    config_path = _config_flag(argv)
    if config_path is not None:
        apply_config(parser, read_recipe(config_path), config_path)
    *dataclasses_, _config_namespace, unknown = parser.parse_args_into_dataclasses(
        args=argv, look_for_args_file=False, return_remaining_strings=True
    )
    if unknown:
        raise ConfigError(unknown_arguments_message(unknown, known_flags(parser)))
    model_args, data_args, lora_args, training_args = dataclasses_
    validate(model_args, data_args, lora_args, training_args)
    return model_args, data_args, lora_args, training_args


def unknown_arguments_message(unknown: list[str], known: list[str]) -> str:
    """One line for everything argparse could not place: each unknown --flag with a suggestion, and the
    stray values."""
    flags = [token for token in unknown if token.startswith("--")]
    if not flags:
        return f"unexpected value(s) without a flag: {' '.join(unknown)}"
    parts = []
    for token in flags:
        name = token[2:].split("=", 1)[0]
        parts.append(f"--{name}{suggestion(name, known)}")
    return f"unknown argument{'s' if len(parts) > 1 else ''}: {'; '.join(parts)}"


def _config_flag(argv: list[str] | None) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    return known.config


def validate(
    model_args: ModelArguments,
    data_args: DataArguments,
    lora_args: LoraArguments,
    training_args: TrainingArguments,
) -> None:
    """Cross-field checks the dataclasses cannot make alone."""
    del model_args
    if lora_args.q_lora and training_args.deepspeed and _zero_stage(training_args) == 3:
        raise ConfigError(
            "--q_lora with ZeRO-3 is not supported (4-bit weights cannot be partitioned); use ds_configs/zero2.json"
        )
    if training_args.bf16 and training_args.fp16:
        raise ConfigError("give --bf16 or --fp16, not both")
    check_world_size(training_args)
    if not (math.isfinite(data_args.val_size) and data_args.val_size >= 0):
        raise ConfigError(f"--val_size must be a fraction (<1) or a count (>=1), got {data_args.val_size}")
    if data_args.streaming:
        if training_args.max_steps <= 0:
            raise ConfigError("--streaming True needs --max_steps: a stream has no length to count epochs in")
        if data_args.val_size:
            raise ConfigError(
                "--val_size splits the whole corpus; with --streaming True give --eval_data_path"
            )
        if data_args.streaming_buffer < 1:
            raise ConfigError(f"--streaming_buffer must be at least 1, got {data_args.streaming_buffer}")


def _zero_stage(training_args: TrainingArguments) -> int:
    ds = training_args.hf_deepspeed_config
    return ds.get_value("zero_optimization.stage", 0) if ds is not None else 0


def wants_lora(training_args: TrainingArguments, lora_args: LoraArguments) -> bool:
    """QLoRA implies LoRA: a 4-bit base cannot be trained directly."""
    return training_args.use_lora or lora_args.q_lora
