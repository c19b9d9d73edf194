# Baichuan2 configuration, portable remote code written by baichuan2-sft (Apache-2.0).
# Loads with trust_remote_code=True on transformers 4.33 (the official stack) and on transformers 5.
"""Baichuan2 configuration: one class for 7B (RoPE) and 13B (ALiBi), reading the official config.json as is.

The architecture is chosen by `position_embedding` ("rope" or "alibi"). The official files do not carry it:
the 7B json has `max_position_embeddings` and uses RoPE, the 13B json has none and uses ALiBi, so an absent
`position_embedding` means "rope" when `max_position_embeddings` is given, else "alibi".
"""

from transformers import PretrainedConfig

POSITION_EMBEDDINGS = ("rope", "alibi")


class BaichuanConfig(PretrainedConfig):
    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=125696,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        hidden_act="silu",
        max_position_embeddings=None,
        model_max_length=4096,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        z_loss_weight=0.0,
        position_embedding=None,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **kwargs,
    ):
        # The official 13B json says "gradient_checkpointing": false (the official class kept it as a truthy
        # tuple); checkpointing is switched on with gradient_checkpointing_enable(), never by the config.
        kwargs.pop("gradient_checkpointing", None)
        if position_embedding is None:
            position_embedding = "rope" if max_position_embeddings is not None else "alibi"
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"BaichuanConfig: position_embedding must be one of {POSITION_EMBEDDINGS}, "
                f"got {position_embedding!r}"
            )
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"BaichuanConfig: hidden_size {hidden_size} is not a multiple of "
                f"num_attention_heads {num_attention_heads}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        # Only the 7B json has it (it sized the official RoPE table); a 13B config must not grow one.
        if max_position_embeddings is not None:
            self.max_position_embeddings = max_position_embeddings
        self.model_max_length = model_max_length
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.z_loss_weight = z_loss_weight
        self.position_embedding = position_embedding
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
