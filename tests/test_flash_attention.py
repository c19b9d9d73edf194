"""The flash-attention path (padding removed, packed rows split by cu_seqlens, ALiBi as flash-attn's
`alibi_slopes`) equals sdpa. flash-attn needs a CUDA GPU, so a reference module with flash-attn's documented
semantics stands in for it here: causal masks aligned to the bottom right, and a bias of
-slope * |i + seqlen_k - seqlen_q - j| for query i and key j within each sequence. This checks how the model
calls flash-attn; the kernels themselves are flash-attn's."""

import math
import sys
import types

import pytest
import torch
from attention_models import tiny_model


def _reference(q, k, v, softmax_scale=None, causal=False, alibi_slopes=None, **unused):
    """One sequence: q [Lq, H, D], k and v [Lk, H, D] -> [Lq, H, D]."""
    lq, lk = q.shape[0], k.shape[0]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    i = torch.arange(lq)[:, None] + lk - lq
    j = torch.arange(lk)[None, :]
    if alibi_slopes is not None:
        scores = scores - alibi_slopes[:, None, None] * (i - j).abs()
    if causal:
        scores = scores.masked_fill(j > i, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, alibi_slopes=None, **unused):
    return torch.stack(
        [_reference(q[b], k[b], v[b], softmax_scale, causal, alibi_slopes) for b in range(q.shape[0])]
    )


def flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
    causal=False, alibi_slopes=None, **unused,
):  # fmt: skip
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and cu_seqlens_q.dtype == torch.int32
    lengths = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    assert max_seqlen_q == max_seqlen_k == max(lengths) and sum(lengths) == q.shape[0]
    pieces = zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True)
    return torch.cat([_reference(a, b, c, softmax_scale, causal, alibi_slopes) for a, b, c in pieces])


@pytest.fixture
def fake_flash_attn(monkeypatch):
    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)


def loss_and_grads(model, backend, **batch):
    model.config._attn_implementation = backend
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return out.loss.detach(), grads


@pytest.mark.parametrize("arch", ["rope", "alibi"])
@pytest.mark.parametrize("layout", ["packed", "padded", "left_padded", "full"])
def test_flash_equals_sdpa_in_training(fake_flash_attn, arch, layout):
    model = tiny_model(arch)
    ids = torch.randint(3, 300, (2, 20))
    labels = ids.clone()
    batch = {"input_ids": ids, "labels": labels}
    if layout == "packed":
        batch["position_ids"] = torch.tensor(
            [list(range(8)) + list(range(5)) + list(range(7)), list(range(20))]
        )
    if layout in ("padded", "left_padded"):
        pad = slice(13, None) if layout == "padded" else slice(None, 7)
        mask = torch.ones(2, 20, dtype=torch.long)
        mask[1, pad] = 0
        # Nothing is predicted from a padding position (its output is backend-defined): with left padding the
        # first real token is unlabelled, as a prompt token is.
        labels[1, pad if layout == "padded" else slice(None, 8)] = -100
        batch["attention_mask"] = mask
    sdpa_loss, sdpa_grads = loss_and_grads(model, "sdpa", **batch)
    flash_loss, flash_grads = loss_and_grads(model, "flash_attention_2", **batch)
    torch.testing.assert_close(flash_loss, sdpa_loss, atol=1e-5, rtol=1e-5)
    assert len(flash_grads) == len(sdpa_grads)
    for got, expected in zip(flash_grads, sdpa_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["rope", "alibi"])
def test_flash_generation_with_a_cache_equals_sdpa(fake_flash_attn, arch):
    # One query row against the cached keys: flash-attn's bottom-right causal alignment and ALiBi distances.
    model = tiny_model(arch).eval()
    prompt = torch.randint(3, 300, (1, 9))

    def generate(backend):
        model.config._attn_implementation = backend
        with torch.no_grad():
            return model.generate(prompt, max_new_tokens=6, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)  # fmt: skip

    sdpa, flash = generate("sdpa"), generate("flash_attention_2")
    assert torch.equal(flash.sequences, sdpa.sequences)
    for got, expected in zip(flash.logits, sdpa.logits, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
