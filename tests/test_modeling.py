"""Native Baichuan2 model: equal to a from-the-spec reference, backends agree, packing, loss, head, cache, loading.

Tiny models built in memory: "7b" = RoPE with 4 heads, "13b" = ALiBi with 5 heads (not a power of two, so the
interleaved slopes are exercised). Weights are re-drawn with a large spread so that every equality below would
fail on a real bug instead of hiding behind near-uniform logits.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

import finetune  # noqa: F401  (registers the Auto classes)
from finetune.models.baichuan import BaichuanConfig, BaichuanForCausalLM
from finetune.models.baichuan.modeling_baichuan import alibi_slopes, rotary_cos_sin, varlen_index

VOCAB = 300
KINDS = ("7b", "13b")
BACKENDS = ("eager", "sdpa")
ATOL = 1e-5


def tiny_config(kind: str, **overrides) -> BaichuanConfig:
    """A 2-layer Baichuan2 of the given kind; the 7B one carries max_position_embeddings like the official json."""
    shape = (
        dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=256)
        if kind == "7b"
        else dict(hidden_size=80, num_attention_heads=5)
    )
    return BaichuanConfig(vocab_size=VOCAB, intermediate_size=96, num_hidden_layers=2, **shape, **overrides)


def tiny_model(kind: str, attn: str = "sdpa", seed: int = 0, **overrides) -> BaichuanForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(kind, **overrides)
    config._attn_implementation = attn
    model = BaichuanForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.3)
    return model


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def left_padded(ids: torch.Tensor, pads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = ids.clone(), torch.ones_like(ids)
    for row, n in enumerate(pads):
        ids[row, :n], mask[row, :n] = 0, 0
    return ids, mask


# ---------------------------------------------------------------------------------------------------------------
# An independent reference, written straight from docs/BAICHUAN2.md, "Models" (loops over heads and positions)
# ---------------------------------------------------------------------------------------------------------------


def reference_slopes(n: int) -> list[float]:
    power = 2 ** math.floor(math.log2(n))
    first = [2 ** (-8 * k / power) for k in range(1, power + 1)]
    rest = [2 ** (-8 * (2 * j + 1) / (2 * power)) for j in range(n - power)]
    return first + rest


def reference_logits(model: BaichuanForCausalLM, ids: torch.Tensor, mask: torch.Tensor | None = None):
    """fp32 logits [B, L, V]; positions (RoPE) and distances (ALiBi) count from the first real token of a row."""
    cfg, sd = model.config, {k: v.detach().double() for k, v in model.state_dict().items()}
    heads, dim, eps = cfg.num_attention_heads, cfg.head_dim, cfg.rms_norm_eps
    mask = torch.ones_like(ids) if mask is None else mask

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def rope(x, positions):  # x [L, D] of one head
        out = torch.empty_like(x)
        half = dim // 2
        for t, p in enumerate(positions):
            for i in range(half):
                angle = p * 10000.0 ** (-2 * i / dim)
                c, s = math.cos(angle), math.sin(angle)
                out[t, i] = x[t, i] * c - x[t, i + half] * s
                out[t, i + half] = x[t, i + half] * c + x[t, i] * s
        return out

    rows = []
    for b in range(ids.shape[0]):
        keep = mask[b].bool()
        x = sd["model.embed_tokens.weight"][ids[b][keep]]
        length = x.shape[0]
        positions = list(range(length))
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            h = rms(x, sd[p + "input_layernorm.weight"])
            q, k, v = (h @ sd[p + "self_attn.W_pack.weight"].T).split(cfg.hidden_size, dim=-1)
            out = torch.zeros_like(q)
            for hd in range(heads):
                cols = slice(hd * dim, (hd + 1) * dim)
                qh, kh, vh = q[:, cols], k[:, cols], v[:, cols]
                if cfg.position_embedding == "rope":
                    qh, kh = rope(qh, positions), rope(kh, positions)
                scores = qh @ kh.T / math.sqrt(dim)
                if cfg.position_embedding == "alibi":
                    slope = reference_slopes(heads)[hd]
                    scores = scores + torch.tensor(
                        [[slope * (j - t) for j in range(length)] for t in range(length)], dtype=torch.float64
                    )
                scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
                out[:, cols] = torch.softmax(scores, -1) @ vh
            x = x + out @ sd[p + "self_attn.o_proj.weight"].T
            h = rms(x, sd[p + "post_attention_layernorm.weight"])
            gate, up = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
            x = x + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
        x = rms(x, sd["model.norm.weight"])
        head = sd["lm_head.weight"]
        logits = x @ (head / head.norm(dim=-1, keepdim=True)).T
        full = torch.zeros(ids.shape[1], cfg.vocab_size, dtype=torch.float64)
        full[keep] = logits
        rows.append(full)
    return torch.stack(rows).float()


def test_reference_slopes_match_spec_numbers_for_40_heads():
    spec = [2 ** (-0.25 * k) for k in range(1, 33)] + [2 ** (-0.125 * (2 * j + 1)) for j in range(8)]
    assert alibi_slopes(40) == pytest.approx(spec, rel=1e-12)
    assert reference_slopes(40) == pytest.approx(spec, rel=1e-12)
    assert alibi_slopes(40)[32:35] == pytest.approx([0.9170, 0.7711, 0.6484], abs=1e-4)
    assert alibi_slopes(5) == pytest.approx(reference_slopes(5), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_logits_match_reference(kind, training):
    model = tiny_model(kind).train(training)
    ids, mask = left_padded(random_ids(2, 7), [0, 3])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=position_ids).logits
    expected = reference_logits(model, ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(logits[keep], expected[keep], atol=ATOL, rtol=1e-5)


def test_rope_tables_are_exact_at_large_positions():
    positions = torch.tensor([[257, 1001, 4095]])
    cos, sin = rotary_cos_sin(positions, 128)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    angles = positions.double()[..., None] * inv_freq
    torch.testing.assert_close(cos[0, 0, :, :64].double(), angles[0].cos(), atol=2e-4, rtol=0)
    torch.testing.assert_close(sin[0, 0, :, 64:].double(), angles[0].sin(), atol=2e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Backends, padding, packing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_eager_equals_sdpa_with_padding(kind, training):
    model = tiny_model(kind).train(training)
    ids = random_ids(3, 8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, 5:] = 0  # right padding
    labels = ids.masked_fill(mask == 0, -100)
    results = {}
    for attn in BACKENDS:
        model.config._attn_implementation = attn
        model.zero_grad()
        logits = model(ids, attention_mask=mask).logits
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        results[attn] = (
            logits.detach(),
            loss.detach(),
            model.model.layers[0].self_attn.W_pack.weight.grad.clone(),
        )
    keep = mask.bool()
    torch.testing.assert_close(results["eager"][0][keep], results["sdpa"][0][keep], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(results["eager"][1], results["sdpa"][1], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(results["eager"][2], results["sdpa"][2], atol=ATOL, rtol=1e-4)
    assert torch.isfinite(results["sdpa"][0]).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attn", BACKENDS)
def test_packed_row_equals_separate_sequences(kind, attn):
    model = tiny_model(kind, attn=attn).eval()
    lengths = [4, 6, 3]
    segments = [random_ids(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    packed = torch.cat(segments, dim=1)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed_logits = model(packed, position_ids=position_ids).logits[0]
        separate = torch.cat([model(seg).logits[0] for seg in segments])
        unmarked = model(packed).logits[0]
    torch.testing.assert_close(packed_logits, separate, atol=ATOL, rtol=1e-5)
    # Without position_ids the row is one sequence: later segments see earlier ones.
    assert not torch.allclose(unmarked[lengths[0] :], separate[lengths[0] :], atol=1e-3)


def test_varlen_index_splits_padding_rows_and_packed_sequences():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    position_ids = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 0, 1, 0]])
    index = varlen_index(mask, position_ids, 2, 5)
    assert index.indices.tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert index.cu_seqlens.tolist() == [0, 3, 5, 7]
    assert index.max_seqlen == 3


# ---------------------------------------------------------------------------------------------------------------
# NormHead and loss
# ---------------------------------------------------------------------------------------------------------------


def test_norm_head_train_eval_cycles():
    model = tiny_model("7b")
    head = model.lm_head
    hidden = torch.randn(3, model.config.hidden_size)
    raw = head.weight.detach().clone()

    head.train()
    train_out = head(hidden)
    train_out.sum().backward()
    weight = raw.clone().requires_grad_(True)
    F.linear(hidden, weight / weight.norm(dim=-1, keepdim=True)).sum().backward()
    torch.testing.assert_close(head.weight.grad, weight.grad)  # gradient goes through the normalisation
    torch.testing.assert_close(head.weight.detach(), raw)  # training never rewrites the weight

    head.eval()
    with torch.inference_mode():
        eval_out = head(hidden)
    torch.testing.assert_close(eval_out, train_out.detach(), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(head.weight.detach().norm(dim=-1), torch.ones(VOCAB))
    normalized = head.weight.detach().clone()
    head(hidden)
    assert torch.equal(head.weight.detach(), normalized)  # once: a second eval forward changes nothing

    # train -> optimizer step -> eval must normalise the new weight again (flag reset by the training forward)
    head.train()
    head(hidden)
    with torch.no_grad():
        head.weight.mul_(torch.linspace(0.5, 3.0, VOCAB)[:, None])
    stepped = head.weight.detach().clone()
    head.eval()
    expected = hidden @ (stepped / stepped.norm(dim=-1, keepdim=True)).T
    torch.testing.assert_close(head(hidden).detach(), expected, atol=ATOL, rtol=1e-5)


def _labels(ids: torch.Tensor) -> torch.Tensor:
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, 2:5] = -100
    labels[1, -1] = -100
    return labels


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_logits_loss_and_grads_equal_full_path(kind):
    model = tiny_model(kind).train()
    ids = random_ids(2, 9)
    labels = _labels(ids)

    out = model(ids, labels=labels)
    assert out.logits is None
    out.loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    logits = model(ids).logits
    full_loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    full_loss.backward()
    torch.testing.assert_close(out.loss, full_loss, atol=ATOL, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(sparse_grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)

    model.zero_grad()
    model.config.supervised_logits_only = False  # the official full-logits path, as the benchmark baseline
    official = model(ids, labels=labels)
    assert official.logits.shape == (2, 9, VOCAB)
    official.loss.backward()
    torch.testing.assert_close(official.loss, out.loss, atol=ATOL, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(sparse_grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)
    model.config.supervised_logits_only = True

    model.eval()
    with torch.no_grad():
        eval_out = model(ids, labels=labels)
    assert eval_out.logits.shape == (2, 9, VOCAB)
    torch.testing.assert_close(eval_out.loss, full_loss.detach(), atol=ATOL, rtol=1e-5)


def test_num_items_in_batch_gives_global_token_mean():
    model = tiny_model("13b").train()
    ids = random_ids(2, 9)
    labels = _labels(ids)
    total = int((labels[:, 1:] != -100).sum())
    with torch.no_grad():
        whole = model(ids, labels=labels).loss
        halves = [
            model(ids[i : i + 1], labels=labels[i : i + 1], num_items_in_batch=total).loss for i in (0, 1)
        ]
        count0 = int((labels[0, 1:] != -100).sum())
        mean0 = model(ids[:1], labels=labels[:1]).loss
    torch.testing.assert_close(halves[0] + halves[1], whole, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(halves[0], mean0 * count0 / total, atol=ATOL, rtol=1e-5)


def test_trainer_passes_num_items_in_batch(tmp_path):
    model = tiny_model("7b")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    assert trainer.model_accepts_loss_kwargs
    assert trainer._loss_shifts_labels  # counts labels[..., 1:], the positions our loss trains


def test_z_loss_formula():
    model = tiny_model("7b", z_loss_weight=0.1).train()
    ids = random_ids(2, 9)
    labels = _labels(ids)
    out = model(ids, labels=labels)
    shift_logits = out.logits[:, :-1]
    ce = F.cross_entropy(shift_logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    z = 0.1 * shift_logits.max(-1).values.pow(2).mean()  # over all positions, ignored ones included
    torch.testing.assert_close(out.loss, ce + z, atol=ATOL, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_cache_equals_without_and_left_padding_works(kind):
    model = tiny_model(kind).eval()
    ids, mask = left_padded(random_ids(2, 6), [0, 2])
    settings = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = model.generate(ids, use_cache=True, **settings)
    uncached = model.generate(ids, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    alone = model.generate(ids[1:, 2:], max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(cached[1, 2:], alone[0])


def test_logits_to_keep_and_hidden_states():
    model = tiny_model("13b").eval()
    ids = random_ids(2, 6)
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
        last = model(ids, logits_to_keep=1).logits
    torch.testing.assert_close(last[:, 0], full.logits[:, -1])
    assert len(full.hidden_states) == model.config.num_hidden_layers + 1


# ---------------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------------


OFFICIAL_KEYS_PER_LAYER = [
    "input_layernorm.weight",
    "self_attn.W_pack.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
]


def official_keys(layers: int) -> set[str]:
    per_layer = {f"model.layers.{i}.{k}" for i in range(layers) for k in OFFICIAL_KEYS_PER_LAYER}
    return per_layer | {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_reload_with_official_names(kind, tmp_path):
    model = tiny_model(kind)
    raw_head = model.lm_head.weight.detach().clone()
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert set(tensors) == official_keys(2)
    hidden = model.config.hidden_size
    assert tensors["model.layers.0.self_attn.W_pack.weight"].shape == (3 * hidden, hidden)
    assert torch.equal(tensors["lm_head.weight"], raw_head)  # saved raw, as the released checkpoints

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, BaichuanForCausalLM)
    assert torch.equal(reloaded.lm_head.weight, raw_head)  # loads raw
    ids = random_ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_pytorch_model_bin_loads(sharded, tmp_path):
    """The official repos ship pytorch_model.bin (7B) or sharded .bin with an index (13B)."""
    model = tiny_model("7b").eval()
    model.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if sharded:
        names = sorted(state)
        shards = {
            "pytorch_model-00001-of-00002.bin": names[:8],
            "pytorch_model-00002-of-00002.bin": names[8:],
        }
        for file, keys in shards.items():
            torch.save({k: state[k] for k in keys}, tmp_path / file)
        weight_map = {k: file for file, keys in shards.items() for k in keys}
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = random_ids(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_4bit_loading_passes_the_strict_check(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    tiny_model("7b").save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, device_map="cpu")
    assert type(model.model.layers[0].self_attn.W_pack).__name__ == "Linear4bit"
    assert torch.isfinite(model(random_ids(1, 4)).logits).all()


@pytest.mark.parametrize(
    "damage, named",
    [
        (
            lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
            "missing tensors: model.layers.1.mlp.up_proj.weight",
        ),
        (lambda t: t.update(extra=torch.zeros(2)), "unexpected tensors: extra"),
        (
            lambda t: t.update({"model.norm.weight": torch.ones(3)}),
            "mis-shaped tensors: model.norm.weight",
        ),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_strict_loading_names_the_bad_tensor(damage, named, tmp_path):
    model = tiny_model("7b")
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    damage(tensors)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises((ValueError, RuntimeError), match=named.replace(".", r"\.")):
        BaichuanForCausalLM.from_pretrained(tmp_path)


OFFICIAL_7B_JSON = {
    "architectures": ["BaichuanForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_baichuan.BaichuanConfig",
        "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
    },
    "tokenizer_class": "BaichuanTokenizer",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_max_length": 4096,
    "model_type": "baichuan",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.29.2",
    "use_cache": True,
    "vocab_size": 125696,
}


def official_13b_json() -> dict:
    config = {k: v for k, v in OFFICIAL_7B_JSON.items() if k != "max_position_embeddings"}
    config.update(hidden_size=5120, intermediate_size=13696, num_attention_heads=40, num_hidden_layers=40)
    config["gradient_checkpointing"] = False
    return config


def test_config_detection_from_official_json(tmp_path):
    (tmp_path / "7b").mkdir()
    (tmp_path / "7b" / "config.json").write_text(json.dumps(OFFICIAL_7B_JSON))
    (tmp_path / "13b").mkdir()
    (tmp_path / "13b" / "config.json").write_text(json.dumps(official_13b_json()))

    seven = AutoConfig.from_pretrained(tmp_path / "7b")
    thirteen = AutoConfig.from_pretrained(tmp_path / "13b")
    assert isinstance(seven, BaichuanConfig) and isinstance(thirteen, BaichuanConfig)
    assert (seven.position_embedding, seven.max_position_embeddings) == ("rope", 4096)
    assert (thirteen.position_embedding, thirteen.max_position_embeddings) == ("alibi", None)

    thirteen.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "max_position_embeddings" not in saved
    assert saved["position_embedding"] == "alibi"
    assert saved["auto_map"] == OFFICIAL_7B_JSON["auto_map"]
    assert saved["tokenizer_class"] == "BaichuanTokenizer"
    assert AutoConfig.from_pretrained(tmp_path / "saved").position_embedding == "alibi"


def test_official_13b_gradient_checkpointing_key_is_ignored():
    config = tiny_config("13b", gradient_checkpointing=False)
    model = BaichuanForCausalLM(config)
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)
    assert "gradient_checkpointing" not in config.to_dict()


def test_state_dict_has_only_official_tensors():
    for kind in KINDS:
        model = tiny_model(kind)
        assert set(model.state_dict()) == official_keys(2)
        assert model.model.embed_tokens.padding_idx == 0


# ---------------------------------------------------------------------------------------------------------------
# Gradient checkpointing and LoRA
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_gives_equal_grads(kind):
    model = tiny_model(kind).train()
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = _labels(ids)

    def grads():
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_lora_with_reentrant_checkpointing_trains_adapters():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("13b").train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    peft_model = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=8, target_modules=["W_pack"], lora_dropout=0.0)
    )
    ids = random_ids(2, 8)
    peft_model(input_ids=ids, labels=ids).loss.backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(lora_grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
