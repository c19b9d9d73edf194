# Baichuan2 model, portable remote code written by baichuan2-sft (Apache-2.0).
# Loads with trust_remote_code=True on transformers 4.33 (the official stack) and on transformers 5, with the
# official tensor names; imports nothing but torch and transformers.
"""Baichuan2-7B (RoPE) and Baichuan2-13B (ALiBi) in one file, chosen by `config.position_embedding`.

Numerically the official model (fp32 RMSNorm variance, fp32 rotary, the interleaved ALiBi slopes, NormHead),
written so that it works on both transformers generations:
- nothing is precomputed at construction (rotary tables and ALiBi biases are built per forward), so loading
  on the meta device (transformers 5) leaves nothing uninitialised;
- the KV cache is a `Cache` object when transformers passes one (5.x) and legacy tuples otherwise (4.x);
- attention is "sdpa" (default) or "eager" (`attn_implementation="eager"`, or `config._attn_implementation`).
Left padding works for generation. Packed rows and flash-attention are not supported here.
"""

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_baichuan import BaichuanConfig

try:  # transformers >= 4.36
    from transformers.cache_utils import Cache, DynamicCache
except ImportError:  # transformers 4.33: legacy tuples only
    Cache = DynamicCache = None

ROPE_THETA = 10000.0
# transformers 5 renamed the outputs' `past_key_values` field to `cache` and passes the cache under that name.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# transformers 5 has a generic prepare_inputs_for_generation (and a Cache-only generate); 4.x needs our own.
OWN_GENERATION_INPUTS = CACHE_FIELD == "past_key_values"
# transformers < 4.35 switches checkpointing through a model-provided _set_gradient_checkpointing(module, value).
OLD_CHECKPOINTING_API = not hasattr(PreTrainedModel, "_set_gradient_checkpointing")


def alibi_slopes(num_heads):
    """The official interleaved slopes: for a power of two n, 2^(-8/n * k), k = 1..n; otherwise those of the
    largest power of two c below n, then every other slope of the 2c sequence until n are collected."""
    if math.log2(num_heads).is_integer():
        start = 2.0 ** (-8.0 / num_heads)
        return [start ** (k + 1) for k in range(num_heads)]
    closest = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def rotary_cos_sin(position_ids, head_dim):
    """fp32 cos/sin [B, 1, L, head_dim] for integer positions (rotate_half layout, theta 10000)."""
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (ROPE_THETA**exponent)
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x, cos, sin):
    """Rotate x [B, H, L, D] in fp32, as the official code does, and cast back."""
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def past_length(past):
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return past.get_seq_length()
    return past[0][0].shape[-2] if len(past) else 0


def attention_bias(config, attention_mask, query_len, past_len, device, dtype):
    """None (plain causal, no padding), a boolean [B|1, 1, Lq, Lk] allowed-pairs mask (RoPE), or an additive
    float [B|1, H, Lq, Lk] bias slope_h * (j - i), -inf where not allowed (ALiBi). The diagonal is always
    allowed, so a padding query keeps one key and its (unused) output stays finite."""
    key_len = past_len + query_len
    padded = attention_mask is not None and not bool(attention_mask.all())
    q_idx = torch.arange(past_len, key_len, device=device)[:, None]
    k_idx = torch.arange(key_len, device=device)[None, :]
    allowed = None
    if padded or (past_len > 0 and query_len > 1) or config.position_embedding == "alibi":
        allowed = (k_idx <= q_idx)[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        allowed = allowed | (k_idx == q_idx)
    if config.position_embedding == "rope":
        return allowed
    slopes = torch.tensor(alibi_slopes(config.num_attention_heads), dtype=torch.float32, device=device)
    bias = slopes[:, None, None] * (k_idx - q_idx).float()
    return bias[None].masked_fill(~allowed, float("-inf")).to(dtype)


def eager_attention(q, k, v, bias):
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is None:
        query_len, key_len = q.shape[-2], k.shape[-2]
        bias = torch.ones(query_len, key_len, dtype=torch.bool, device=q.device).tril(key_len - query_len)
    if bias.dtype == torch.bool:
        scores = scores.masked_fill(~bias, torch.finfo(scores.dtype).min)
    else:
        scores = scores + bias
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v)


def sdpa_attention(q, k, v, bias):
    if bias is not None and bias.dtype != torch.bool and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)  # autocast changed the activations' dtype after the bias was built
    # The default scale is 1/sqrt(head_dim), the official one.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bias is None and q.shape[-2] > 1)


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.epsilon = eps

    def forward(self, hidden_states):
        # Official order: fp32 variance, normalise in the input dtype, cast to a half weight dtype, then scale.
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaichuanAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        # Fused projection, rows [0:h] = Q, [h:2h] = K, [2h:3h] = V, each head-major (official layout).
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, bias, rotary, past=None, use_cache=False):
        """Returns (output, present): present is the layer's legacy (k, v) tuple, or None with a Cache."""
        batch, length, _ = hidden_states.shape
        qkv = self.W_pack(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        present = None
        if past is not None and hasattr(past, "update"):
            k, v = past.update(k, v, self.layer_idx)
        else:
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            present = (k, v) if use_cache else None
        backend = getattr(self.config, "_attn_implementation", None) or "sdpa"
        if backend not in ATTENTION_FUNCTIONS:
            raise ValueError(
                f"Baichuan2: attn_implementation {backend!r} is not one of {tuple(ATTENTION_FUNCTIONS)}"
            )
        out = ATTENTION_FUNCTIONS[backend](q, k, v, bias).transpose(1, 2)
        return self.o_proj(out.reshape(batch, length, -1)), present


class BaichuanLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = BaichuanAttention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, bias, rotary, past=None, use_cache=False):
        attn_out, present = self.self_attn(self.input_layernorm(hidden_states), bias, rotary, past, use_cache)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, present


class DecoderLayer(BaichuanLayer):
    """The 7B layer under its official class name, which FSDP wrap policies and device maps name."""


class NormHead(nn.Module):
    """Logits against L2-normalised vocabulary rows. Training: normalised in every forward (gradient through
    the normalisation). Eval: the weight is normalised in place once, then used as a plain linear layer; a
    training forward clears the flag. Normalising is idempotent: either stored form gives the same logits."""

    def __init__(self, hidden_size, vocab_size):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))
        self.first_flag = True

    def forward(self, hidden_states):
        if self.training:
            self.first_flag = True
            return F.linear(hidden_states, F.normalize(self.weight))
        if self.first_flag:
            with torch.no_grad():
                self.weight.copy_(F.normalize(self.weight))
            self.first_flag = False
        return F.linear(hidden_states, self.weight)


class BaichuanPreTrainedModel(PreTrainedModel):
    config_class = BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanLayer", "DecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, NormHead)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    if OLD_CHECKPOINTING_API:

        def _set_gradient_checkpointing(self, module, value=False):
            if isinstance(module, BaichuanModel):
                module.gradient_checkpointing = value


class BaichuanModel(BaichuanPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        layer_class = DecoderLayer if config.position_embedding == "rope" else BaichuanLayer
        self.layers = nn.ModuleList([layer_class(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Baichuan2: pass exactly one of input_ids and inputs_embeds")
        if output_attentions:
            raise ValueError("Baichuan2: output_attentions is not supported by this implementation")
        past = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        checkpointing = self.gradient_checkpointing and self.training
        if checkpointing:
            use_cache = False
        if use_cache and past is None and not OWN_GENERATION_INPUTS:
            past = DynamicCache(config=self.config)  # transformers 5 caches are Cache objects, never tuples
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        past_len = past_length(past)
        batch, length = inputs_embeds.shape[:2]
        if attention_mask is not None and (
            attention_mask.dim() != 2 or attention_mask.shape[1] != past_len + length
        ):
            raise ValueError(
                f"Baichuan2: attention_mask must be 2-D [batch, {past_len + length}] (past + new tokens), "
                f"got shape {tuple(attention_mask.shape)}"
            )
        rotary = None
        if self.config.position_embedding == "rope":
            if position_ids is None:
                position_ids = torch.arange(past_len, past_len + length, device=inputs_embeds.device)[None]
            rotary = rotary_cos_sin(position_ids, self.config.hidden_size // self.config.num_attention_heads)
        bias = attention_bias(
            self.config, attention_mask, length, past_len, inputs_embeds.device, inputs_embeds.dtype
        )

        cache_object = past is not None and hasattr(past, "update")
        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        presents = () if use_cache and not cache_object else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            layer_past = past if cache_object else (past[i] if past is not None else None)
            if checkpointing:
                checkpoint = getattr(self, "_gradient_checkpointing_func", None)
                if checkpoint is None:
                    hidden_states, present = torch.utils.checkpoint.checkpoint(
                        layer, hidden_states, bias, rotary, None, False, use_reentrant=False
                    )
                else:
                    hidden_states, present = checkpoint(
                        layer.__call__, hidden_states, bias, rotary, None, False
                    )
            else:
                hidden_states, present = layer(hidden_states, bias, rotary, layer_past, use_cache)
            if presents is not None:
                presents += (present,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        next_cache = (past if cache_object else presents) if use_cache else None
        if not return_dict:
            return tuple(v for v in (hidden_states, next_cache, all_hidden_states) if v is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, **{CACHE_FIELD: next_cache}
        )


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.lm_head = NormHead(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model

    def set_decoder(self, decoder):
        self.model = decoder

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        """labels: same shape as input_ids, -100 = not trained (shifted inside). The loss is the token-mean
        cross entropy plus the official z-loss (z_loss_weight * mean of the squared max logit, 0 by default)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache=cache,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
            )
            z_loss_weight = getattr(self.config, "z_loss_weight", 0.0)
            if z_loss_weight:
                loss = loss + z_loss_weight * shift_logits.max(-1).values.pow(2).mean()
        next_cache = getattr(outputs, CACHE_FIELD)
        if not return_dict:
            rest = tuple(v for v in (next_cache, outputs.hidden_states) if v is not None)
            return ((loss,) if loss is not None else ()) + (logits,) + rest
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_FIELD: next_cache}
        )

    if OWN_GENERATION_INPUTS:

        def prepare_inputs_for_generation(
            self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None, **kwargs
        ):
            """transformers 4.x: feed only the tokens the cache has not seen; positions count real tokens, so
            left-padded rows start at position 0 (padding gets 1, as the official code does)."""
            past_len = past_length(past_key_values)
            if past_len:
                input_ids = input_ids[:, past_len:]
            position_ids = kwargs.get("position_ids")
            if attention_mask is not None and position_ids is None:
                position_ids = attention_mask.long().cumsum(-1) - 1
                position_ids.masked_fill_(attention_mask == 0, 1)
                position_ids = position_ids[:, -input_ids.shape[1] :]
            if inputs_embeds is not None and not past_len:
                model_inputs = {"inputs_embeds": inputs_embeds}
            else:
                model_inputs = {"input_ids": input_ids}
            model_inputs.update(
                {
                    "past_key_values": past_key_values,
                    "use_cache": kwargs.get("use_cache"),
                    "attention_mask": attention_mask,
                    "position_ids": position_ids,
                }
            )
            return model_inputs

        @staticmethod
        def _reorder_cache(past_key_values, beam_idx):
            return tuple(
                tuple(state.index_select(0, beam_idx.to(state.device)) for state in layer)
                for layer in past_key_values
            )
