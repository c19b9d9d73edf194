"""`--torch_compile`: regional compilation of the decoder layers."""

from __future__ import annotations

import torch

from .args import TrainingArguments


def compile_layers(model: torch.nn.Module, backend: str | None = None, mode: str | None = None) -> bool:
    """Compile each decoder layer in place (regional compilation). The layers share one graph (their weights are
    its inputs), so compiling costs seconds, not minutes; RMSNorm, RoPE, SwiGLU, LoRA dropout and the residual
    adds fuse, state-dict names stay unchanged, and the chunked loss, which syncs with the host, stays eager.
    False, compiling nothing, for models without transformers' decoder-layer class, as remote code has."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    options = {k: v for k, v in {"backend": backend, "mode": mode}.items() if v is not None}
    for layer in layers:
        layer.compile(**options)
    return bool(layers)


def compile_for_training(model: torch.nn.Module, training_args: TrainingArguments) -> bool:
    """`--torch_compile`: the decoder layers compiled in place, and the Trainer's own whole-model compile
    switched off; where there are no such layers the Trainer compiles the whole model as usual."""
    if not training_args.torch_compile:
        return False
    if not compile_layers(model, training_args.torch_compile_backend, training_args.torch_compile_mode):
        return False
    training_args.torch_compile = False
    training_args.torch_compile_backend = training_args.torch_compile_mode = None
    return True
