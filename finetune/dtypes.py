"""The precisions the tools accept, in one table with one parser and one error message.

Command lines say ``bf16``/``fp16``/``fp32`` (as ``--bf16`` in training); config.json says ``bfloat16``/``float16``/
``float32`` (``torch_dtype``). Both spellings parse; ``auto`` means the checkpoint's own dtype.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CONFIG_NAMES: dict[torch.dtype, str] = {
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float32: "float32",
}
AUTO = "auto"
CHOICES = (AUTO, *DTYPES)  # what the inference tools offer on their command lines


def parse_dtype(name: str, allow_auto: bool = True) -> torch.dtype | str:
    """``bf16``/``bfloat16`` → torch.bfloat16 (and so on); ``auto`` unchanged when allowed."""
    if allow_auto and name == AUTO:
        return AUTO
    by_name = {**DTYPES, **{v: k for k, v in CONFIG_NAMES.items()}}
    if name not in by_name:
        choices = ", ".join((AUTO, *by_name) if allow_auto else by_name)
        raise ValueError(f"unknown dtype {name!r}; choose one of {choices}")
    return by_name[name]


def config_name(dtype: torch.dtype) -> str:
    """The spelling config.json uses for ``dtype``."""
    return CONFIG_NAMES[dtype]


def config_dtype(config: dict) -> torch.dtype:
    """The dtype a config.json dict declares (``torch_dtype``, or transformers 5's ``dtype``); fp32 when none."""
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return {v: k for k, v in CONFIG_NAMES.items()}.get(name, torch.float32)
