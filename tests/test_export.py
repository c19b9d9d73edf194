"""finetune.export: merged logits = adapter-on-base logits, the base's format kept (with the portable remote
code, marked special tokens and a chat template), NormHead folding by default, only known files copied, the
--portable repair of an official download, errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from adapters import make_adapter
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import finetune  # noqa: F401  (registers the Baichuan classes with the Auto classes)
from finetune.export import checkpoint_tensor_names, export, main
from finetune.models.baichuan.portable import DIRECTORY, REMOTE_CODE_FILES
from finetune.remote_code import CHAT_TEMPLATE
from finetune.tiny import write_tiny_checkpoint

REMOTE_CODE = {
    "configuration_baichuan.py": "# official remote code stand-in\n",
    "modeling_baichuan.py": "# official remote code stand-in\n",
    "tokenization_baichuan.py": "# official remote code stand-in\n",
}
INPUT_IDS = torch.tensor(
    [[195, 40, 41, 42, 196, 50, 51, 5, 60, 61, 62, 63], [195, 70, 71, 196, 80, 81, 82, 83, 84, 85, 2, 2]]
)


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=INPUT_IDS % model.config.vocab_size).logits.float()


def adapter_on_base_logits(base_dir, adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return logits_of(PeftModel.from_pretrained(base, str(adapter_dir)).eval())


def load_logits(model_dir):
    return logits_of(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval())


@pytest.fixture(scope="module", params=[("7b", "bin"), ("13b", "sharded")], ids=["7b-bin", "13b-sharded"])
def baichuan(request, tmp_path_factory):
    """A tiny Baichuan2 base carrying stand-ins for the official remote-code files, and a W_pack adapter."""
    arch, fmt = request.param
    root = tmp_path_factory.mktemp(f"export-{arch}")
    base = write_tiny_checkpoint(root / "base", arch=arch, fmt=fmt)
    for name, text in REMOTE_CODE.items():
        (base / name).write_text(text, encoding="utf-8")
    (base / "generation_utils.py").write_text("# official helper stand-in\n", encoding="utf-8")
    (base / "Community License for Baichuan 2 Model.pdf").write_bytes(b"%PDF stand-in")
    (base / "optimizer_state.pt.tmp").write_bytes(b"stray")  # a stray file a user left in the directory
    adapter = make_adapter(base, root / "adapter", ["W_pack"])
    return base, adapter, root


def test_merged_logits_equal_adapter_on_base(baichuan):
    base, adapter, root = baichuan
    out = export(str(root / "merged-fp32"), adapter=str(adapter), dtype="fp32", max_shard_size="100KB")
    expected = adapter_on_base_logits(base, adapter)
    torch.testing.assert_close(load_logits(out), expected, atol=1e-5, rtol=1e-5)
    assert (load_logits(base) - expected).abs().max() > 1e-3, "the adapter must change the logits"


def test_output_is_the_base_format(baichuan, capsys):
    base, adapter, root = baichuan
    out = export(str(root / "merged-format"), adapter=str(adapter), dtype="fp32", max_shard_size="100KB")
    assert "left out (not a known model file): optimizer_state.pt.tmp" in capsys.readouterr().out
    base_names = checkpoint_tensor_names(base)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert list(index["weight_map"]) == base_names
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    stored = {}
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as f:
            stored |= {name: shard for name in f.keys()}
    assert stored == index["weight_map"]
    assert index["metadata"]["total_size"] == 4 * sum(
        AutoModelForCausalLM.from_pretrained(str(out)).get_parameter(n).numel() for n in base_names
    )
    assert not list(out.glob("*.bin"))
    # Known files only: the official helper .py and the stray file stay behind, the license comes along.
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("model-")) == sorted(
        [
            *REMOTE_CODE_FILES,
            "Community License for Baichuan 2 Model.pdf",
            "config.json",
            "generation_config.json",
            "model.safetensors.index.json",
            "special_tokens_map.json",
            "tokenizer.model",
            "tokenizer_config.json",
        ]
    )
    for name in REMOTE_CODE_FILES:  # ours, not the base's
        assert (out / name).read_bytes() == (DIRECTORY / name).read_bytes(), name
    for name in ["tokenizer.model", "generation_config.json", "Community License for Baichuan 2 Model.pdf"]:
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    base_tokenizer_config = json.loads((base / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == CHAT_TEMPLATE
    assert {k: v for k, v in tokenizer_config.items() if k in base_tokenizer_config} == base_tokenizer_config
    marked = {
        int(i): t["content"] for i, t in tokenizer_config["added_tokens_decoder"].items() if t["special"]
    }
    assert marked == {0: "<unk>", 1: "<s>", 2: "</s>", 195: "<reserved_106>", 196: "<reserved_107>"}
    config, base_config = (
        json.loads((out / "config.json").read_text()),
        json.loads((base / "config.json").read_text()),
    )
    assert config == {**base_config, "torch_dtype": "float32"}
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_baichuan.BaichuanForCausalLM"


def test_bf16_export(baichuan):
    base, adapter, root = baichuan
    out = export(str(root / "merged-bf16"), adapter=str(adapter), dtype="bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(str(out / "model-00001-of-00001.safetensors"), framework="pt") as f:
        assert {f.get_tensor(n).dtype for n in f.keys()} == {torch.bfloat16}
    torch.testing.assert_close(load_logits(out), adapter_on_base_logits(base, adapter), atol=0.05, rtol=0.05)


def stored_head(model_dir):
    with safe_open(str(model_dir / "model-00001-of-00001.safetensors"), framework="pt") as f:
        return f.get_tensor("lm_head.weight")


def test_norm_head_folded_by_default(baichuan, capsys):
    base, adapter, root = baichuan
    raw = root / "raw-head"
    assert (
        main(["--adapter", str(adapter), "--output", str(raw), "--dtype", "fp32", "--no_fold_norm_head"]) == 0
    )
    assert "NormHead folded" not in capsys.readouterr().out
    folded = export(str(root / "folded-head"), adapter=str(adapter), dtype="fp32")
    assert "NormHead folded" in capsys.readouterr().out
    raw_head, head = stored_head(raw), stored_head(folded)
    assert not torch.allclose(raw_head.norm(dim=-1), torch.ones(raw_head.shape[0]), atol=1e-3)
    torch.testing.assert_close(head.norm(dim=-1), torch.ones(head.shape[0]))
    torch.testing.assert_close(head, F.normalize(raw_head, dim=-1))
    # NormHead normalises in forward and normalising is idempotent: folding leaves the logits unchanged.
    torch.testing.assert_close(load_logits(folded), load_logits(raw), atol=1e-5, rtol=1e-5)


def test_a_plain_linear_head_gives_the_logits_only_when_folded(baichuan):
    """What llama.cpp's converter does with Baichuan2: lm_head.weight becomes output.weight of a plain linear
    head (no normalisation). Logits h @ W.T from the stored head equal the model's for the default export."""
    base, adapter, root = baichuan
    folded = export(str(root / "plain-folded"), adapter=str(adapter), dtype="fp32")
    raw = export(str(root / "plain-raw"), adapter=str(adapter), dtype="fp32", fold_head=False)
    model = AutoModelForCausalLM.from_pretrained(str(folded), dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model.model(input_ids=INPUT_IDS % model.config.vocab_size).last_hidden_state
    expected = logits_of(model)
    torch.testing.assert_close(hidden @ stored_head(folded).T, expected, atol=1e-5, rtol=1e-5)
    assert (hidden @ stored_head(raw).T - expected).abs().max() > 1e-2


def test_reexport_full_model_folds_the_head(baichuan):
    base, _, root = baichuan
    out = export(str(root / "base-folded"), model=str(base))
    torch.testing.assert_close(stored_head(out).norm(dim=-1), torch.ones(stored_head(out).shape[0]))
    torch.testing.assert_close(load_logits(out), load_logits(base), atol=1e-5, rtol=1e-5)


def test_portable_copy_of_an_official_download(baichuan, capsys):
    base, _, root = baichuan
    out = root / "portable"
    assert main(["--portable", str(base), "--output", str(out)]) == 0
    assert "hard-linked" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in base.iterdir())
    for path in base.iterdir():
        if path.name in REMOTE_CODE_FILES:
            assert (out / path.name).read_bytes() == (DIRECTORY / path.name).read_bytes()
        else:  # config.json, tokenizer files, weights, the official helper, the stray file: all unchanged
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    for weights in base.glob("pytorch_model*.bin"):
        assert (out / weights.name).stat().st_ino == weights.stat().st_ino
    copied = root / "portable-copied"
    assert main(["--portable", str(base), "--output", str(copied), "--copy_weights"]) == 0
    for weights in base.glob("pytorch_model*.bin"):
        assert (copied / weights.name).stat().st_ino != weights.stat().st_ino
    assert main(["--portable", str(root / "adapter"), "--output", str(root / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not a Baichuan2 model directory" in err


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama with tied embeddings (its checkpoint stores no lm_head) and a q/v adapter."""
    root = tmp_path_factory.mktemp("export-llama")
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(root / "base"))
    adapter = make_adapter(root / "base", root / "adapter", ["q_proj", "v_proj"])
    return root / "base", adapter, root


def test_generic_model_merge(llama):
    base, adapter, root = llama
    out = export(str(root / "merged"), adapter=str(adapter))
    assert list(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) == (
        checkpoint_tensor_names(base)
    )
    assert "lm_head.weight" not in checkpoint_tensor_names(out)
    torch.testing.assert_close(load_logits(out), adapter_on_base_logits(base, adapter), atol=1e-5, rtol=1e-5)


def test_fold_norm_head_refuses_other_models(llama, capsys):
    base, _, root = llama
    assert main(["--model", str(base), "--output", str(root / "x"), "--fold_norm_head"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "lm_head.weight" in err


def test_errors_are_one_line(baichuan, capsys, tmp_path):
    base, adapter, _ = baichuan
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    cases = [
        (["--adapter", str(adapter), "--output", str(tmp_path / "busy")], "not empty"),
        (["--adapter", str(base), "--output", str(tmp_path / "a")], "not a LoRA adapter directory"),
        (["--adapter", str(adapter), "--base", str(tmp_path), "--output", str(tmp_path / "b")], "--base DIR"),
    ]
    for argv, problem in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and problem in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
