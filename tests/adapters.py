"""LoRA adapters for tests: random B matrices (peft starts them at zero), so an adapter changes every weight
it targets and merging is never a no-op; saved as training saves them (config for old peft, base fingerprint)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from finetune.adapter_files import finish_adapter_dir


def make_adapter(base_dir, adapter_dir, targets=("W_pack",), seed=0, scale=0.05):
    """The same arguments give the same adapter: peft's random lora_A init is seeded too."""
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=16, target_modules=list(targets))
    )
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * scale
    peft_model.save_pretrained(str(adapter_dir))
    finish_adapter_dir(adapter_dir, base_dir)
    return adapter_dir
