"""LoRA adapter directories that every peft reads, tied to the base they were trained on.

- `adapter_config.json` is written with only the keys peft 0.10-0.13 know (the releases that import on
  transformers 4.33, the official Baichuan2 stack): those releases pass every key to `LoraConfig(...)` and stop
  at the first unknown one (`unexpected keyword argument 'alora_invocation_tokens'`). A newer key is dropped
  only while it holds its default, so the older reader builds the same adapter; otherwise writing the adapter
  is refused, naming the key.
- `base_fingerprint.json` records the base: a hash of its config.json (minus fields that do not change the
  weights) and hashes of a few of its tensors. Loading the adapter through this project's tools onto another
  base is then an error naming both, unless explicitly allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from finetune.jsonfile import read_json, write_json

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
FINGERPRINT = "base_fingerprint.json"
# The LoraConfig and PeftConfig fields of peft 0.10 (0.11-0.13 add none that are ever written).
OLD_PEFT_KEYS = frozenset(
    {
        "peft_type",
        "auto_mapping",
        "base_model_name_or_path",
        "revision",
        "task_type",
        "inference_mode",
        "r",
        "target_modules",
        "lora_alpha",
        "lora_dropout",
        "fan_in_fan_out",
        "bias",
        "use_rslora",
        "modules_to_save",
        "init_lora_weights",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "alpha_pattern",
        "megatron_config",
        "megatron_core",
        "loftq_config",
        "use_dora",
        "layer_replication",
    }
)
# Written by newer peft for information only: dropping them changes nothing an older reader builds.
INFORMATIONAL_KEYS = frozenset({"peft_version"})
# config.json fields that say how a checkpoint is stored or loaded, not what its weights are.
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "auto_map",
        "use_cache",
        "architectures",
    }
)
FINGERPRINT_ROWS = 64  # leading rows hashed per tensor: enough to tell checkpoints apart, cheap for 13B
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class AdapterError(ValueError):
    """An adapter that cannot be written portably or does not belong to the given base; one line."""


# ---------------------------------------------------------------- adapter_config.json for old peft


def _json_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return dataclasses.MISSING
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=sorted))  # sets as sorted lists, as the file stores them


def portable_adapter_config(config: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """``config`` (a LoRA adapter_config.json) with only the keys peft 0.10-0.13 understand; AdapterError when
    a newer key holds a non-default value. Other peft types are returned unchanged."""
    if config.get("peft_type") != "LORA":
        return config
    from peft import LoraConfig

    fields = {f.name: f for f in dataclasses.fields(LoraConfig)}
    kept = {}
    for key, value in config.items():
        if key in OLD_PEFT_KEYS:
            kept[key] = value
        elif key not in INFORMATIONAL_KEYS and (key not in fields or value != _json_default(fields[key])):
            raise AdapterError(
                f"{source}: {key}={value!r} has no equivalent in peft < 0.14 (the releases transformers 4.33 "
                "runs); an adapter an older peft would misread is not written portably — drop the option"
            )
    return kept


# ---------------------------------------------------------------- base fingerprint


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name → the file that stores it."""
    for index in WEIGHT_INDEXES:
        if (model_dir / index).is_file():
            weight_map = read_json(model_dir / index)["weight_map"]
            return {name: model_dir / file for name, file in weight_map.items()}
    if (model_dir / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            return dict.fromkeys(f.keys(), model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").is_file():
        names = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
        return dict.fromkeys(names, model_dir / "pytorch_model.bin")
    raise AdapterError(f"{model_dir}: no model weights to fingerprint")


def _leading_rows(path: Path, name: str) -> torch.Tensor:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_slice(name)[:FINGERPRINT_ROWS]
    tensors = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return tensors[name][:FINGERPRINT_ROWS]


def base_fingerprint(model_dir: str | Path) -> dict[str, Any]:
    """Hashes identifying a checkpoint's weights: its config (fields that shape the model) and the leading rows
    of its first, middle and last tensors (the output head excepted, which an export may store normalised),
    as fp32 values, so a lossless change of storage dtype or format keeps the fingerprint."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / "config.json")
    shape = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}
    files = _weight_files(model_dir)
    names = [n for n in files if n != "lm_head.weight"]
    picked = sorted({names[0], names[len(names) // 2], names[-1]}, key=names.index)
    tensors = {}
    for name in picked:
        rows = _leading_rows(files[name], name).float().contiguous()
        tensors[name] = hashlib.sha256(rows.numpy().tobytes()).hexdigest()
    config_hash = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()
    return {"config_sha256": config_hash, "tensor_sha256": tensors}


def finish_adapter_dir(adapter_dir: str | Path, base_dir: str | Path | None) -> None:
    """Rewrite a saved adapter's config for old peft and record its base's fingerprint (when the base is a
    local directory)."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    write_json(config_path, portable_adapter_config(read_json(config_path), config_path), sort_keys=True)
    if base_dir is not None and (Path(base_dir) / "config.json").is_file():
        fingerprint = {"base": str(base_dir), **base_fingerprint(base_dir)}
        write_json(adapter_dir / FINGERPRINT, fingerprint)


def check_adapter_base(adapter_dir: str | Path, base_dir: str | Path, allow_mismatch: bool = False) -> None:
    """AdapterError when ``adapter_dir`` records a fingerprint and ``base_dir`` does not match it (the message
    names both); a warning instead with ``allow_mismatch``. An adapter without a fingerprint is not checked."""
    recorded_path = Path(adapter_dir) / FINGERPRINT
    if not recorded_path.is_file():
        return
    recorded = read_json(recorded_path)
    actual = base_fingerprint(base_dir)
    differs = [key for key in ("config_sha256", "tensor_sha256") if recorded.get(key) != actual[key]]
    if not differs:
        return
    what = (
        "config"
        if differs == ["config_sha256"]
        else "weights"
        if "config_sha256" not in differs
        else "config and weights"
    )
    message = (
        f"{adapter_dir}: adapter was trained on {recorded.get('base')}, but {base_dir} is a different "
        f"checkpoint ({what} differ from the recorded fingerprint)"
    )
    if not allow_mismatch:
        raise AdapterError(message + "; pass --allow_base_mismatch to load it anyway")
    logger.warning("%s; loading anyway (--allow_base_mismatch)", message)
