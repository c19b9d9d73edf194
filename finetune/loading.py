"""Model and tokenizer loading for training and inference: dtype, attention backend, 4-bit (QLoRA).

A path may be a base model directory, a full fine-tuned output (same layout as the base) or a LoRA adapter
directory (adapter_config.json naming its base). `import finetune` has registered the native Baichuan2
classes, so official Baichuan2 directories load without `trust_remote_code`.

Every way a model or tokenizer can fail to load is a `LoadError`, one line naming the path (or the file) and
the problem: a missing directory (never mistaken for a hub id when it looks like a path), a hub id while
offline, a missing or corrupt config.json or tokenizer.model, truncated or corrupt weight files, missing or
unexpected tensors, an unknown model_type, weights holding NaN/inf. Local directories are checked before the
libraries read them (`check_model_dir`), whose own errors rarely name the file.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import pickle
import re
from pathlib import Path

import huggingface_hub.constants
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from finetune.jsonfile import read_json

from .adapter_files import check_adapter_base
from .args import LoraArguments, ModelArguments, TrainingArguments
from .devices import device_type
from .exits import first_line
from .filecheck import file_problem, json_problem
from .finite import first_nonfinite
from .outputs import local_model_dir

ADAPTER_CONFIG = "adapter_config.json"
CONFIG = "config.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class LoadError(ValueError):
    """A model or tokenizer that cannot be loaded; the message is one line naming the path and the problem."""


@contextlib.contextmanager
def load_errors(what: str):
    """Whatever transformers, peft, safetensors or torch raise while loading `what`, as one `LoadError` line."""
    from safetensors import SafetensorError

    try:
        yield
    except LoadError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
        detail = first_line(e)
        raise LoadError(detail if detail.startswith(str(what)) else f"{what}: {detail}") from None


def looks_like_path(name: str) -> bool:
    """A name that means a local directory, never a hub id: ./x, ../x, /x, ~/x, a name with the OS separator
    that is not owner/name, or owner/name whose owner part exists here (a typo in a local path)."""
    if name.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in name):
        return True
    if not _HUB_ID.fullmatch(name):
        return True
    return "/" in name and Path(name.split("/", 1)[0]).exists()


def _did_you_mean(path: Path) -> str:
    parent = path.parent if path.parent.is_dir() else None
    if parent is None:
        return ""
    siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    match = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    return f" (did you mean {parent / match[0]}?)" if match else ""


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on."""
    config = read_json(Path(path) / ADAPTER_CONFIG)
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise LoadError(f"{Path(path) / ADAPTER_CONFIG}: names no base model (base_model_name_or_path)")
    return base


def resolve_model_path(name_or_path: str, cache_dir: str | None = None) -> str:
    """An existing local directory as an absolute path (so an adapter's recorded base reloads from any working
    directory); a hub id unchanged. A path that does not exist, or a hub id that cannot be had (offline and
    not cached), is a `LoadError`."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise LoadError(f"{name_or_path}: is a file; give the model's directory")
    if looks_like_path(name_or_path):
        raise LoadError(f"{name_or_path}: no such directory{_did_you_mean(path.absolute())}")
    if huggingface_hub.constants.is_offline_mode() and local_model_dir(name_or_path, cache_dir) is None:
        raise LoadError(
            f"{name_or_path}: no such local directory, and not in the hub cache while offline (HF_HUB_OFFLINE); "
            f"download it first (huggingface-cli download {name_or_path}) or pass its local directory"
        )
    return name_or_path


def weight_files(model_dir: Path) -> list[Path]:
    """The files holding a model directory's weights: the shards of its index, or its single file."""
    for index in WEIGHT_INDEXES:
        if (model_dir / index).is_file():
            problem = json_problem(model_dir / index)
            if problem:
                raise LoadError(f"{model_dir / index}: {problem}")
            weight_map = read_json(model_dir / index).get("weight_map", {})
            shards = [model_dir / name for name in sorted(set(weight_map.values()))]
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise LoadError(f"{model_dir / index}: names missing shard(s) {', '.join(missing)}")
            return shards
    found = [model_dir / name for name in SINGLE_WEIGHTS if (model_dir / name).is_file()]
    if not found:
        raise LoadError(f"{model_dir}: no weights ({', '.join(SINGLE_WEIGHTS)} or a sharded index)")
    return found[:1]


def _check_files(files: list[Path]) -> None:
    for file in files:
        problem = file_problem(file)
        if problem:
            raise LoadError(f"{file}: {problem}")


def check_config(model_dir: Path, trust_remote_code: bool = False) -> dict:
    """config.json present, valid, and of a model_type this transformers (with the native Baichuan2) knows."""
    config = model_dir / CONFIG
    if not config.is_file():
        raise LoadError(f"{model_dir}: no {CONFIG} (not a model directory)")
    problem = json_problem(config)
    if problem:
        raise LoadError(f"{config}: {problem}")
    values = read_json(config)
    if not isinstance(values, dict):
        raise LoadError(f"{config}: not a JSON object")
    model_type = values.get("model_type")
    if model_type is None:
        raise LoadError(f"{config}: no model_type")
    known = model_type in transformers.CONFIG_MAPPING
    if not known and not (trust_remote_code and "auto_map" in values):
        hint = (
            "; it ships its own code (auto_map): pass --trust_remote_code True if you trust it"
            if "auto_map" in values
            else ""
        )
        raise LoadError(
            f"{config}: model_type '{model_type}' is not a model transformers {transformers.__version__} knows{hint}"
        )
    return values


def check_model_dir(path: str | Path, trust_remote_code: bool = False) -> None:
    """A local base, full or adapter directory is readable: config, weight files (headers and sizes), and for
    an adapter its own files and its base. A hub id is left to transformers."""
    model_dir = Path(path)
    if not model_dir.is_dir():
        return
    if is_adapter_dir(model_dir):
        problem = json_problem(model_dir / ADAPTER_CONFIG)
        if problem:
            raise LoadError(f"{model_dir / ADAPTER_CONFIG}: {problem}")
        weights = [model_dir / name for name in ADAPTER_WEIGHTS if (model_dir / name).is_file()]
        if not weights:
            raise LoadError(f"{model_dir}: an adapter directory without {' or '.join(ADAPTER_WEIGHTS)}")
        _check_files(weights[:1])
        check_model_dir(resolve_model_path(adapter_base(model_dir)), trust_remote_code)
        return
    check_config(model_dir, trust_remote_code)
    _check_files(weight_files(model_dir))


def check_tokenizer_dir(path: Path) -> None:
    """A Baichuan2 tokenizer needs its SentencePiece tokenizer.model, whole; transformers would report a
    missing one as "None: … not found" and a corrupt one with a TypeError."""
    if not path.is_dir():
        return
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        problem = json_problem(tokenizer_config)
        if problem:
            raise LoadError(f"{tokenizer_config}: {problem}")
        tokenizer_class = read_json(tokenizer_config).get("tokenizer_class")
    else:
        tokenizer_class = None
    config = path / CONFIG
    model_type = None
    if config.is_file() and not json_problem(config):
        model_type = read_json(config).get("model_type")
    if tokenizer_class != "BaichuanTokenizer" and model_type != "baichuan":
        return
    vocabulary = path / SENTENCEPIECE_MODEL
    if not vocabulary.is_file():
        raise LoadError(f"{path}: no {SENTENCEPIECE_MODEL} (the Baichuan2 SentencePiece vocabulary)")
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(vocabulary))
    except (RuntimeError, OSError) as e:
        raise LoadError(f"{vocabulary}: not a SentencePiece model ({first_line(e)})") from None


def require_finite(model: torch.nn.Module, source: str | Path) -> None:
    """Weights that hold NaN or inf are the remains of a diverged run: refuse them, naming the tensor."""
    found = first_nonfinite(model.named_parameters())
    if found is not None:
        raise LoadError(
            f"{source}: tensor {found[0]} holds {found[1]}: these weights come from a diverged run and "
            "cannot be used (train again from an earlier checkpoint at a lower learning rate)"
        )


def load_tokenizer(
    path: str,
    model_max_length: int | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
):
    """The slow SentencePiece tokenizer for Baichuan2 (as the official recipe), the fast one elsewhere.
    An adapter directory without tokenizer files falls back to its base's. A tokenizer without a pad token gets
    the unk (Baichuan's own pad) or eos token: labels mask padding anyway."""
    if is_adapter_dir(path) and not (Path(path) / "tokenizer_config.json").is_file():
        path = resolve_model_path(adapter_base(path), cache_dir)
    check_tokenizer_dir(Path(path))
    kwargs = {"cache_dir": cache_dir, "trust_remote_code": trust_remote_code}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    with load_errors(path):
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def training_dtype(training_args: TrainingArguments) -> torch.dtype:
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def load_dtype(training_args: TrainingArguments, frozen_base: bool) -> torch.dtype:
    """Weights load in the training precision when DeepSpeed keeps them in it (it casts the module anyway, so
    fp32 would only double the peak) or when they stay frozen (LoRA); full training without DeepSpeed keeps
    fp32 master weights under autocast."""
    if training_args.deepspeed or frozen_base:
        return training_dtype(training_args)
    return torch.float32


def quantization_config(training_args: TrainingArguments) -> BitsAndBytesConfig:
    """QLoRA: NF4 weights with double quantization, matmuls in the training precision."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=training_dtype(training_args),
    )


def load_model_config(model_args: ModelArguments, training_args: TrainingArguments) -> PretrainedConfig:
    path = model_args.model_name_or_path
    if Path(path).is_dir():
        check_config(Path(path), model_args.trust_remote_code)
    with load_errors(path):
        return AutoConfig.from_pretrained(
            path, cache_dir=training_args.cache_dir, trust_remote_code=model_args.trust_remote_code
        )


def model_type_of(path: str) -> str | None:
    """The model_type in the config of a model directory, or of an adapter's base; None for a directory with
    only tokenizer files (the tokenizer class then decides the template)."""
    try:
        return AutoConfig.from_pretrained(adapter_base(path) if is_adapter_dir(path) else path).model_type
    except (OSError, ValueError):
        return None


def load_model_for_training(
    model_args: ModelArguments, lora_args: LoraArguments, training_args: TrainingArguments
) -> PreTrainedModel:
    """The base model as training needs it: precision, attention backend, 4-bit for QLoRA, no KV cache.
    Under ZeRO-3 transformers builds it inside `deepspeed.zero.Init`, already partitioned."""
    frozen_base = training_args.use_lora or lora_args.q_lora
    kwargs = {
        "dtype": load_dtype(training_args, frozen_base),
        "attn_implementation": model_args.attn_implementation,
        "cache_dir": training_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }
    if lora_args.q_lora:
        kwargs["quantization_config"] = quantization_config(training_args)
        # bitsandbytes quantizes while placing the weights: straight onto this rank's device.
        kwargs["device_map"] = {"": training_args.device}
    check_model_dir(model_args.model_name_or_path, model_args.trust_remote_code)
    with load_errors(model_args.model_name_or_path):
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    model.config.use_cache = False
    return model


def resolve_attn_implementation(requested: str, training_args: TrainingArguments) -> str:
    """`auto`: flash-attention 2 where it can run (a CUDA GPU, flash-attn installed, 16-bit compute), which
    handles packed rows and ALiBi without a dense mask; sdpa everywhere else. Any other name is kept."""
    if requested != "auto":
        return requested
    sixteen_bit = training_dtype(training_args) != torch.float32
    if device_type() == "cuda" and sixteen_bit and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def supports_packing(config: PretrainedConfig, attn_implementation: str) -> bool:
    """Whether packed rows train correctly: the model must keep samples apart where position_ids restart.
    The native Baichuan2 does on every attention backend; other transformers models with flash_attention_2.
    Decided from the config, so the data is prepared and checked before the weights load."""
    native = type(config).__module__.startswith("finetune.models.")
    return native or attn_implementation == "flash_attention_2"


def load_model_for_inference(
    path: str,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    allow_base_mismatch: bool = False,
) -> PreTrainedModel:
    """A base, full fine-tuned or LoRA adapter directory, ready for generation (eval mode, KV cache on).
    Weights holding NaN/inf are refused, and so is an adapter whose recorded base fingerprint does not match
    the base it names, unless ``allow_base_mismatch``."""
    kwargs = {
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    check_model_dir(path, trust_remote_code)
    base_dir = local_model_dir(adapter_base(path)) if is_adapter_dir(path) else None
    if base_dir is not None:
        check_adapter_base(path, base_dir, allow_base_mismatch)
    with load_errors(path):
        if is_adapter_dir(path):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    require_finite(model, path)
    if device is not None:
        model.to(device)
    model.config.use_cache = True
    return model.eval()
