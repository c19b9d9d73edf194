"""Baichuan2 configuration: one class for 7B (RoPE) and 13B (ALiBi), reading the official config.json as is."""

from typing import Any

from transformers import PretrainedConfig

POSITION_EMBEDDINGS = ("rope", "alibi")


class BaichuanConfig(PretrainedConfig):
    """Configuration of a Baichuan2 model; field names and meanings follow the official config.json files.

    The architecture is chosen by `position_embedding`. The official files do not carry it: the 7B json has
    `max_position_embeddings` (it sized the RoPE table) and uses RoPE, the 13B json has none and uses ALiBi. So
    an absent `position_embedding` means "rope" when `max_position_embeddings` is given, else "alibi".
    Saved configs always write `position_embedding` and never invent `max_position_embeddings`; unknown keys of
    the official json (`auto_map`, `tokenizer_class`, ...) are kept, so the official remote code still loads them.

    `z_loss_weight` adds `z_loss_weight * mean(max_logit**2)` to the loss (0 in the released models).
    `supervised_logits_only` (training with labels): compute the 125,696-wide head and the loss only where a
    label is trained — same loss and gradients, far less time and memory. False gives the official full path.
    """

    model_type = "baichuan"

    vocab_size: int = 125696
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int | None = None
    model_max_length: int = 4096
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    z_loss_weight: float = 0.0
    supervised_logits_only: bool = True
    position_embedding: str | None = None
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        # The official 13B json has `"gradient_checkpointing": false`; the official class turned it into a truthy
        # tuple. Checkpointing is a training choice (`gradient_checkpointing_enable`), never a config field here.
        kwargs.pop("gradient_checkpointing", None)
        if self.position_embedding is None:
            self.position_embedding = "rope" if self.max_position_embeddings is not None else "alibi"
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"BaichuanConfig: position_embedding must be one of {POSITION_EMBEDDINGS}, "
                f"got {self.position_embedding!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BaichuanConfig: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # The 13B json has no such key; writing `null` would make the file claim a RoPE table size it never had.
        if output.get("max_position_embeddings") is None:
            output.pop("max_position_embeddings", None)
        # A runtime speed switch, not part of the checkpoint's identity: keep saved configs official-shaped.
        if output.get("supervised_logits_only", True):
            output.pop("supervised_logits_only", None)
        return output
