"""Model and tokenizer loading for training and inference: dtype, attention backend, 4-bit (QLoRA).

A path may be a base model directory, a full fine-tuned output (same layout as the base) or a LoRA adapter
directory (adapter_config.json naming its base). `import finetune` has registered the native Baichuan2
classes, so official Baichuan2 directories load without `trust_remote_code`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from .adapter_files import check_adapter_base
from .args import LoraArguments, ModelArguments, TrainingArguments
from .devices import device_type

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return config["base_model_name_or_path"]


def resolve_model_path(name_or_path: str) -> str:
    """An existing local directory as an absolute path (so an adapter's recorded base reloads from any working
    directory); anything else (a hub id) unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


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
        path = adapter_base(path)
    kwargs = {"cache_dir": cache_dir, "trust_remote_code": trust_remote_code}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
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
    return AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
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
    """A base, full fine-tuned or LoRA adapter directory, ready for generation (eval mode, KV cache on). An
    adapter whose recorded base fingerprint does not match the base it names is an error unless
    ``allow_base_mismatch``."""
    kwargs = {
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    if is_adapter_dir(path):
        from peft import AutoPeftModelForCausalLM

        from .outputs import local_model_dir

        base_dir = local_model_dir(adapter_base(path))
        if base_dir is not None:
            check_adapter_base(path, base_dir, allow_base_mismatch)
        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None:
        model.to(device)
    model.config.use_cache = True
    return model.eval()
