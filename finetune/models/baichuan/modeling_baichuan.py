"""Native Baichuan2 for transformers 5: 7B (RoPE) and 13B (ALiBi) in one implementation.

State-dict keys, module names and fp32 numerics follow the official remote code (docs/BAICHUAN2.md, "Models"). What
differs on purpose:
- packed rows: `position_ids` restarting at 0 inside a row start a new sequence (no attention across the
  boundary, RoPE positions and ALiBi distances restart) on every attention backend, 7B and 13B;
- attention backends "eager", "sdpa" (default) and "flash_attention_2" give the same results;
- in training with labels, the head and the loss run only where a label is trained (`logits` is then None);
- RoPE is computed from exact integer positions, so ZeRO-3's bf16 `torch.arange` cannot round them;
- loading is strict: a checkpoint with missing, unexpected or mis-shaped tensors is an error naming them.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from ...data.constants import IGNORE_INDEX
from .configuration_baichuan import BaichuanConfig
from .linear_cross_entropy import linear_cross_entropy_sum

ROPE_THETA = 10000.0
ATTENTION_BACKENDS = ("eager", "sdpa", "flash_attention_2", "flex_attention")


# ---------------------------------------------------------------------------------------------------------------
# Position encodings and masks (pure functions)
# ---------------------------------------------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> list[float]:
    """The official interleaved ALiBi slopes (not the paper's 2^(-8k/n) for non powers of two, Baichuan2#225).

    A power of two n gives 2^(-8/n * k), k = 1..n. Otherwise the largest power of two c below n gives c slopes,
    followed by every other slope of the 2c-head sequence until n are collected.
    """
    if math.log2(num_heads).is_integer():
        start = 2.0 ** (-8.0 / num_heads)
        return [start ** (k + 1) for k in range(num_heads)]
    closest = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin tables [B, 1, L, head_dim] for the given positions (rotate_half layout, theta 10000).

    Built from integer positions on every call: no cached table that ZeRO-3's bf16 arange could round, nothing
    in the state dict, and packed rows (positions restarting at 0) are handled by construction.
    """
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (ROPE_THETA**exponent)
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, D] in fp32, as the official code does, and cast back."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Sequence index of every token of a packed row: a new sequence starts wherever position_ids is 0."""
    return (position_ids == 0).cumsum(-1)


def allowed_pairs(
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    query_len: int,
    past_len: int,
    device: torch.device,
) -> torch.Tensor:
    """Boolean [B|1, 1, Lq, Lk] mask of the (query, key) pairs that may attend.

    Causal, keys with attention_mask 0 excluded, and, when `position_ids` is given (no cache), no pair across
    a packed-sequence boundary. The diagonal is always allowed: a padding query then still has one key, so its
    (ignored) output stays finite on every backend instead of becoming NaN.
    """
    key_len = past_len + query_len
    q_idx = torch.arange(past_len, key_len, device=device)[:, None]
    k_idx = torch.arange(key_len, device=device)[None, :]
    allowed = (k_idx <= q_idx)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    if position_ids is not None:
        seg = segment_ids(position_ids)
        allowed = allowed & (seg[:, None, :, None] == seg[:, None, None, :])
    return allowed | (k_idx == q_idx)


def alibi_bias(
    slopes: torch.Tensor, allowed: torch.Tensor | None, query_len: int, past_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive [B|1, H, Lq, Lk] bias: slope_h * (j - i) where key j may be seen by query i, -inf elsewhere.

    Built in fp32 and cast, as the official code does. Distances are index differences; inside a packed
    sequence (consecutive positions) they equal position differences, and pairs across sequences are masked.
    """
    key_len = past_len + query_len
    q_idx = torch.arange(past_len, key_len, device=slopes.device)[:, None]
    k_idx = torch.arange(key_len, device=slopes.device)[None, :]
    bias = slopes[:, None, None] * (k_idx - q_idx).float()
    if allowed is None:
        allowed = (k_idx <= q_idx)[None, None]
    return bias[None].masked_fill(~allowed, float("-inf")).to(dtype)


@dataclass(frozen=True)
class VarlenIndex:
    """Unpadded layout for flash-attention varlen: kept token rows of the flattened [B*L] batch and sequence
    boundaries among them."""

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def varlen_index(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int, length: int
):
    """Split a batch into sequences: padding dropped, a sequence starting at each row start, after dropped
    tokens, and wherever a packed row's position_ids restart at 0."""
    device = attention_mask.device if attention_mask is not None else position_ids.device
    valid = (
        attention_mask.bool().flatten()
        if attention_mask is not None
        else torch.ones(batch * length, dtype=torch.bool, device=device)
    )
    starts = torch.zeros(batch, length, dtype=torch.bool, device=device)
    starts[:, 0] = True
    if position_ids is not None:
        starts |= (position_ids == 0).expand(batch, length)
    starts = starts.flatten()
    starts[1:] |= ~valid[:-1]
    indices = valid.nonzero().squeeze(-1)
    first = starts[indices].nonzero().squeeze(-1)
    cu_seqlens = torch.cat([first, first.new_tensor([indices.numel()])]).to(torch.int32)
    return VarlenIndex(indices, cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max()))


@dataclass(frozen=True)
class AttentionInputs:
    """What every layer's attention needs, computed once per forward.

    bias: None (plain causal: no padding, no packing, no past or a single query), a boolean allowed-pairs
    mask (RoPE), or an additive float bias (ALiBi). varlen: flash-attention only. flex: flex_attention only,
    (block mask, score_mod or None).
    """

    backend: str
    bias: torch.Tensor | None
    rotary: tuple[torch.Tensor, torch.Tensor] | None
    slopes: torch.Tensor | None
    varlen: VarlenIndex | None
    flex: tuple | None = None


# ---------------------------------------------------------------------------------------------------------------
# Attention backends: q, k, v [B, H, L, D] -> output [B, Lq, H, D]
# ---------------------------------------------------------------------------------------------------------------


def _causal(query_len: int, key_len: int, device: torch.device) -> torch.Tensor:
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(key_len - query_len)


def eager_attention(q, k, v, attn: AttentionInputs) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    bias = attn.bias if attn.bias is not None else _causal(q.shape[-2], k.shape[-2], q.device)
    if bias.dtype == torch.bool:
        scores = scores.masked_fill(~bias, torch.finfo(scores.dtype).min)
    else:
        scores = scores + bias
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v).transpose(1, 2)


def sdpa_attention(q, k, v, attn: AttentionInputs) -> torch.Tensor:
    bias = attn.bias
    if bias is not None and bias.dtype != torch.bool and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)  # autocast: activations changed dtype after the bias was built
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=bias,
        is_causal=bias is None and q.shape[-2] > 1,
        scale=1.0 / math.sqrt(q.shape[-1]),
    )
    return out.transpose(1, 2)


def flash_attention(q, k, v, attn: AttentionInputs) -> torch.Tensor:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    # flash-attn's ALiBi adds -slope * |i - j| (bottom-right aligned), i.e. slope * (j - i) under the causal mask.
    options = dict(causal=True, softmax_scale=1.0 / math.sqrt(q.shape[-1]), alibi_slopes=attn.slopes)
    if attn.varlen is None:
        return flash_attn_func(q, k, v, **options)
    batch, length, heads, dim = q.shape
    index = attn.varlen

    def unpad(t):
        return t.reshape(batch * length, heads, dim).index_select(0, index.indices)

    out = flash_attn_varlen_func(
        unpad(q),
        unpad(k),
        unpad(v),
        index.cu_seqlens,
        index.cu_seqlens,
        index.max_seqlen,
        index.max_seqlen,
        **options,
    )
    padded = out.new_zeros(batch * length, heads, dim).index_copy_(0, index.indices, out)
    return padded.view(batch, length, heads, dim)


@lru_cache(maxsize=2)
def _flex_attention(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled, flex_attention materialises the whole score matrix; compiled on a GPU it is a fused kernel.
    # On a CPU sdpa is the fast path, and flex stays uncompiled (a reference for tests): torch 2.13's compiled
    # CPU flex returned wrong outputs (even NaN) for some lengths that are not multiples of 16, plain causal mask.
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def flex_attention_fn(q, k, v, attn: AttentionInputs) -> torch.Tensor:
    block_mask, score_mod = attn.flex
    out = _flex_attention(q.device.type)(
        q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0 / math.sqrt(q.shape[-1])
    )
    return out.transpose(1, 2)


def flex_inputs(attention_mask, segments, slopes, batch: int, length: int, device) -> tuple:
    """Block mask (causal, same packed sequence, key not padding — the diagonal always allowed, as in
    `allowed_pairs`) and, for ALiBi, a score_mod adding slope_h * (j - i)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = (
        segment_ids(segments)
        if segments is not None
        else torch.zeros(batch, length, dtype=torch.long, device=device)
    )
    keep = (
        attention_mask.bool()
        if attention_mask is not None
        else torch.ones(batch, length, dtype=torch.bool, device=device)
    )

    def mask_mod(b, h, q_idx, kv_idx):
        same = (seg[b, q_idx] == seg[b, kv_idx]) & keep[b, kv_idx]
        return (kv_idx <= q_idx) & (same | (kv_idx == q_idx))

    block_mask = create_block_mask(mask_mod, batch, None, length, length, device=device)
    score_mod = None
    if slopes is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

    return block_mask, score_mod


ATTENTION_FUNCTIONS = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "flash_attention_2": flash_attention,
    "flex_attention": flex_attention_fn,
}


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------


class BaichuanRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Official order: fp32 variance, normalise in the input dtype, cast to a half weight dtype, then scale.
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class BaichuanMLP(nn.Module):
    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaichuanAttention(nn.Module):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        # Fused projection, rows [0:h] = Q, [h:2h] = K, [2h:3h] = V, each head-major (official layout).
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self, hidden_states: torch.Tensor, attn: AttentionInputs, cache: Cache | None = None
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        qkv = self.W_pack(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        if attn.rotary is not None:
            cos, sin = attn.rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = ATTENTION_FUNCTIONS[attn.backend](q, k, v, attn)
        return self.o_proj(out.reshape(batch, length, -1))


class BaichuanLayer(GradientCheckpointingLayer):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BaichuanAttention(config, layer_idx)
        self.mlp = BaichuanMLP(config)
        self.input_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, attn: AttentionInputs, cache: Cache | None = None, **kwargs
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), attn, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NormHead(nn.Module):
    """The Baichuan2 output layer: logits against L2-normalised vocabulary rows.

    Training: `h @ normalize(W).T`, with the gradient through the normalisation. Eval: W is normalised in place
    once, then used as a plain linear layer; any training forward clears the flag, so train -> eval -> train
    cycles re-normalise (the final official revision). Normalising is idempotent, so a checkpoint saved with
    either form gives the same logits.
    """

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))
        self.weight_is_normalized = False

    def forward(self, hidden_states: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; or, in training with `labels` [n] for hidden_states [n, h], the summed cross entropy computed
        chunk-wise without materialising the logits (inside forward, so ZeRO-3 has gathered the weight)."""
        if self.training:
            self.weight_is_normalized = False
            if labels is not None:
                return linear_cross_entropy_sum(hidden_states, F.normalize(self.weight), labels)
            return F.linear(hidden_states, F.normalize(self.weight))
        if not self.weight_is_normalized:
            with torch.no_grad():
                self.weight.copy_(F.normalize(self.weight))
            self.weight_is_normalized = True
        return F.linear(hidden_states, self.weight)


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


def _format_keys(keys) -> str:
    return ", ".join(sorted(str(k) for k in keys))


class BaichuanPreTrainedModel(PreTrainedModel):
    config_class = BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _can_record_outputs = {"hidden_states": BaichuanLayer}

    def _init_weights(self, module: nn.Module) -> None:
        # Linear / Embedding: normal(0, initializer_range), padding row zeroed (the official init); RMSNorm: ones.
        super()._init_weights(module)
        if isinstance(module, NormHead):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a checkpoint that does not fill the model exactly is an error.

        transformers only warns about missing tensors and re-initialises them; here the load fails naming them.
        """
        want_info = kwargs.pop("output_loading_info", False)
        # transformers' own mismatch error does not name the tensors; let it load, then raise ours.
        accept_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(
            *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        problems = []
        if info["missing_keys"]:
            problems.append(f"missing tensors: {_format_keys(info['missing_keys'])}")
        if info["unexpected_keys"]:
            problems.append(f"unexpected tensors: {_format_keys(info['unexpected_keys'])}")
        if info["mismatched_keys"] and not accept_mismatch:
            problems.append(
                "mis-shaped tensors: "
                + _format_keys(
                    f"{key} (checkpoint {tuple(ckpt)}, model {tuple(ours)})"
                    for key, ckpt, ours in info["mismatched_keys"]
                )
            )
        if problems:
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            raise ValueError(f"{source}: checkpoint does not match {cls.__name__}: " + "; ".join(problems))
        return (model, info) if want_info else model


class BaichuanModel(BaichuanPreTrainedModel):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([BaichuanLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def attention_inputs(
        self,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        past_len: int,
        packed: bool,
    ) -> AttentionInputs:
        backend = self.config._attn_implementation or "sdpa"
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"Baichuan2: attn_implementation {backend!r} is not one of {ATTENTION_BACKENDS}")
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        rotary = (
            rotary_cos_sin(position_ids, self.config.head_dim)
            if self.config.position_embedding == "rope"
            else None
        )
        slopes = None
        if self.config.position_embedding == "alibi":
            slopes = torch.tensor(
                alibi_slopes(self.config.num_attention_heads), dtype=torch.float32, device=device
            )
        padded = attention_mask is not None and not bool(attention_mask.all())
        segments = position_ids if packed else None

        if backend == "flash_attention_2":
            if past_len == 0:
                varlen = varlen_index(attention_mask, segments, batch, length) if padded or packed else None
                return AttentionInputs(backend, None, rotary, slopes, varlen)
            if not padded:
                return AttentionInputs(backend, None, rotary, slopes, None)
            backend = "sdpa"  # decoding a left-padded batch: varlen with a cache is not worth the code

        if backend == "flex_attention":
            if past_len == 0:
                flex = flex_inputs(attention_mask, segments, slopes, batch, length, device)
                return AttentionInputs(backend, None, rotary, slopes, None, flex)
            backend = "sdpa"  # decoding with a cache: one query row, nothing for a block mask to skip

        explicit = padded or packed or (past_len > 0 and length > 1)
        allowed = allowed_pairs(attention_mask, segments, length, past_len, device) if explicit else None
        bias = allowed
        if slopes is not None:
            bias = alibi_bias(slopes, allowed, length, past_len, inputs_embeds.dtype)
        return AttentionInputs(backend, bias, rotary, slopes, None)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """attention_mask: 2-D [B, past + L], 1 = token, 0 = padding. position_ids [B|1, L]: restarting at 0
        inside a row starts a new sequence (packing); default arange after the cached length."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Baichuan2: pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            # A cache in a training forward is memory spent for nothing.
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        length = inputs_embeds.shape[1]

        if attention_mask is not None and (
            attention_mask.dim() != 2 or attention_mask.shape[1] != past_len + length
        ):
            raise ValueError(
                f"Baichuan2: attention_mask must be 2-D [batch, {past_len + length}] (past + new tokens), "
                f"got shape {tuple(attention_mask.shape)}"
            )
        packed = False
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + length, device=inputs_embeds.device)[None]
        elif past_len == 0:
            packed = bool((position_ids[:, 1:] == 0).any())

        attn = self.attention_inputs(attention_mask, position_ids, inputs_embeds, past_len, packed)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, attn=attn, cache=cache)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


def causal_lm_loss(
    logits: torch.Tensor,
    shift_labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None,
    z_loss_weight: float,
) -> torch.Tensor:
    """Token-mean cross entropy (ignore -100) plus the official z-loss, from logits [..., V] aligned with
    shift_labels [...] (already shifted: logits at t predict label t + 1).

    With `num_items_in_batch` (the Trainer's count of trained tokens over the whole accumulated batch) the sum
    is divided by it instead, making gradient accumulation an exact global token mean. The z-loss
    (z_loss_weight * mean over all positions, padding included, of max_logit**2) is then weighted by this
    micro-batch's share of those tokens. A batch with no trained token gives 0, not NaN.
    """
    logits = logits.float()
    ce_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = (shift_labels != IGNORE_INDEX).sum()
    denominator = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
    loss = ce_sum / denominator
    if z_loss_weight:
        z_loss = z_loss_weight * logits.max(-1).values.pow(2).mean()
        if num_items_in_batch is not None:
            z_loss = z_loss * count / num_items_in_batch
        loss = loss + z_loss
    return loss


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    # forward takes **kwargs and divides by `num_items_in_batch`: the Trainer then passes the accumulated-batch
    # token count and does not rescale the loss itself.
    accepts_loss_kwargs = True

    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.lm_head = NormHead(config.hidden_size, config.vocab_size)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward. labels: same shape as input_ids, -100 = not trained (shifted inside).

        In training mode with labels (and z_loss_weight 0) only the positions whose next-token label is trained
        go through the head and the loss: same loss and gradients as the full path, without the [B, L, V]
        logits, which are therefore returned as None. Eval mode or no labels: full logits (`logits_to_keep`
        keeps the last N positions, as generation uses).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = loss = None
        z_loss_weight = self.config.z_loss_weight
        if labels is not None:
            shift_labels = labels[:, 1:].to(hidden_states.device)
            if self.training and not z_loss_weight and self.config.supervised_logits_only:
                trained = shift_labels != IGNORE_INDEX
                ce_sum = self.lm_head(hidden_states[:, :-1][trained], labels=shift_labels[trained])
                denominator = (
                    num_items_in_batch if num_items_in_batch is not None else trained.sum().clamp(min=1)
                )
                loss = ce_sum / denominator
            else:
                if not isinstance(logits_to_keep, int) or logits_to_keep:
                    raise ValueError("Baichuan2: logits_to_keep cannot be combined with labels")
                logits = self.lm_head(hidden_states)
                loss = causal_lm_loss(logits[:, :-1], shift_labels, num_items_in_batch, z_loss_weight)
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )


__all__ = ["BaichuanForCausalLM", "BaichuanModel", "BaichuanPreTrainedModel", "alibi_slopes"]
