"""The small model the attention-backend tests compare backends on: 2 layers, 5 heads (not a power of two, so
13B's interleaved ALiBi slopes are exercised), RoPE ("rope", 7B) or ALiBi ("alibi", 13B)."""

import torch

from finetune.models.baichuan import BaichuanConfig, BaichuanForCausalLM


def tiny_model(arch: str) -> BaichuanForCausalLM:
    torch.manual_seed(0)
    config = BaichuanConfig(
        vocab_size=300,
        hidden_size=80,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=5,
        position_embedding=arch,
    )
    return BaichuanForCausalLM(config)
