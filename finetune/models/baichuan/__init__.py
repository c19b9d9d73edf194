"""Native Baichuan2 (7B RoPE, 13B ALiBi) on current transformers, numerically equal to the official code."""

from .configuration_baichuan import BaichuanConfig
from .modeling_baichuan import BaichuanForCausalLM, BaichuanModel, BaichuanPreTrainedModel
from .tokenization_baichuan import BaichuanTokenizer

__all__ = [
    "BaichuanConfig",
    "BaichuanForCausalLM",
    "BaichuanModel",
    "BaichuanPreTrainedModel",
    "BaichuanTokenizer",
    "register",
]


def register() -> None:
    """Make AutoConfig / AutoModel(ForCausalLM) / AutoTokenizer resolve model_type "baichuan" to our classes."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    AutoConfig.register("baichuan", BaichuanConfig, exist_ok=True)
    AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
    AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)
    AutoTokenizer.register(BaichuanConfig, slow_tokenizer_class=BaichuanTokenizer, exist_ok=True)
