"""LoRA, DoRA, rsLoRA and QLoRA adapters on the loaded base (peft)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .args import ConfigError, LoraArguments, TrainingArguments


def lora_config(lora_args: LoraArguments):
    from peft import LoraConfig, TaskType

    targets = lora_args.lora_target_modules
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        # peft takes "all-linear" only as a plain string (every linear layer except the output head).
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        modules_to_save=lora_args.lora_modules_to_save,
        use_dora=lora_args.use_dora,
        use_rslora=lora_args.use_rslora,
    )


def add_lora(model: PreTrainedModel, lora_args: LoraArguments, training_args: TrainingArguments):
    """Wrap the model with a trainable LoRA adapter (the official one by default: W_pack, r=1, alpha 32)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora_args.q_lora:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(training_args.gradient_checkpointing),
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
    elif training_args.gradient_checkpointing:
        # Checkpointed blocks of a frozen base see no input that requires grad; without this the adapter gets none.
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, lora_config(lora_args))
    except ValueError as e:
        if "Target modules" not in str(e):
            raise
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ConfigError(
            f"--lora_target_modules {' '.join(lora_args.lora_target_modules)}: not in this model; "
            f"its linear layers are {', '.join(linear)} (or use all-linear)"
        ) from None
