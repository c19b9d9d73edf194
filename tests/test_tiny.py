"""finetune.tiny: official directory layout, config per arch, determinism, tensor names, loadability."""

import json
import logging

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import finetune  # noqa: F401  (registers the Baichuan classes with the Auto classes)
from finetune.models.baichuan import BaichuanForCausalLM
from finetune.tiny import FALLBACK_CORPUS, corpus_lines, main, write_tiny_checkpoint

COMMON_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
}
OFFICIAL_CONFIG_KEYS = {
    "architectures",
    "auto_map",
    "bos_token_id",
    "eos_token_id",
    "hidden_act",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "model_max_length",
    "model_type",
    "num_attention_heads",
    "num_hidden_layers",
    "pad_token_id",
    "rms_norm_eps",
    "tie_word_embeddings",
    "tokenizer_class",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    "vocab_size",
}
ARCH_ONLY_KEYS = {"7b": {"max_position_embeddings"}, "13b": {"gradient_checkpointing"}}


def expected_shapes(config):
    h, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {
        "model.embed_tokens.weight": (vocab, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (vocab, h),
    }
    for i in range(config["num_hidden_layers"]):
        shapes |= {
            f"model.layers.{i}.input_layernorm.weight": (h,),
            f"model.layers.{i}.self_attn.W_pack.weight": (3 * h, h),
            f"model.layers.{i}.self_attn.o_proj.weight": (h, h),
            f"model.layers.{i}.post_attention_layernorm.weight": (h,),
            f"model.layers.{i}.mlp.gate_proj.weight": (inner, h),
            f"model.layers.{i}.mlp.up_proj.weight": (inner, h),
            f"model.layers.{i}.mlp.down_proj.weight": (h, inner),
        }
    return shapes


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def load_weights(directory):
    """The tensors a checkpoint directory holds, whatever its format."""
    if (directory / "model.safetensors").exists():
        return load_file(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").exists():
        return torch.load(directory / "pytorch_model.bin", weights_only=True)
    index = read_json(directory / "pytorch_model.bin.index.json")
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors |= torch.load(directory / shard, weights_only=True)
    return tensors


@pytest.fixture(
    scope="module",
    params=[(arch, fmt) for arch in ("7b", "13b") for fmt in ("bin", "safetensors", "sharded")],
)
def checkpoint(request, tmp_path_factory):
    """Every arch × weight format: for what the format changes (files, loading)."""
    arch, fmt = request.param
    return arch, fmt, write_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{arch}-{fmt}"), arch=arch, fmt=fmt)


@pytest.fixture(scope="module", params=["7b", "13b"])
def arch_checkpoint(request, tiny7b, tiny13b):
    """One checkpoint per arch: for what the weight format does not change (configs, tokenizer)."""
    return request.param, {"7b": tiny7b, "13b": tiny13b}[request.param]


def test_layout(checkpoint):
    arch, fmt, directory = checkpoint
    weight_files = {
        "bin": {"pytorch_model.bin"},
        "safetensors": {"model.safetensors"},
        "sharded": {f"pytorch_model-0000{k}-of-00003.bin" for k in (1, 2, 3)}
        | {"pytorch_model.bin.index.json"},
    }[fmt]
    assert {p.name for p in directory.iterdir()} == COMMON_FILES | weight_files


def test_config_has_the_official_fields_of_its_arch(arch_checkpoint):
    arch, directory = arch_checkpoint
    config = read_json(directory / "config.json")
    assert set(config) == OFFICIAL_CONFIG_KEYS | ARCH_ONLY_KEYS[arch]
    assert config["architectures"] == ["BaichuanForCausalLM"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_baichuan.BaichuanConfig",
        "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
    }
    assert (config["model_type"], config["tokenizer_class"]) == ("baichuan", "BaichuanTokenizer")
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 1, 2)
    assert config["model_max_length"] == 4096
    assert config["tie_word_embeddings"] is False
    heads = config["num_attention_heads"]
    assert heads == {"7b": 4, "13b": 5}[arch]
    assert config["hidden_size"] % heads == 0
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    assert config["vocab_size"] == sp.get_piece_size()


def test_generation_config_is_the_official_chat_one(arch_checkpoint):
    generation = read_json(arch_checkpoint[1] / "generation_config.json")
    generation.pop("transformers_version")
    assert generation == {
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "user_token_id": 195,
        "assistant_token_id": 196,
        "max_new_tokens": 2048,
        "temperature": 0.3,
        "top_k": 5,
        "top_p": 0.85,
        "repetition_penalty": 1.05,
        "do_sample": True,
    }


def test_tokenizer_config_is_the_official_one(arch_checkpoint):
    arch, directory = arch_checkpoint
    config = read_json(directory / "tokenizer_config.json")
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]}
    assert config["tokenizer_class"] == "BaichuanTokenizer"
    assert config["model_max_length"] == 4096
    assert config["clean_up_tokenization_spaces"] is False
    assert config["sp_model_kwargs"] == {}
    assert config["pad_token"]["content"] == config["unk_token"]["content"] == "<unk>"
    assert config["eos_token"]["content"] == "</s>"
    assert ("bos_token" in config, "use_fast" in config) == {"7b": (False, True), "13b": (True, False)}[arch]
    special = read_json(directory / "special_tokens_map.json")
    assert {name: token["content"] for name, token in special.items()} == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
    }


def test_tokenizer_pieces_follow_the_official_layout(arch_checkpoint):
    sp = spm.SentencePieceProcessor(model_file=str(arch_checkpoint[1] / "tokenizer.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert pieces[:6] == ["<unk>", "<s>", "</s>", "<SEP>", "<CLS>", "\n"]
    assert pieces[101] == "<reserved_12>"
    assert (pieces[195], pieces[196]) == ("<reserved_106>", "<reserved_107>")
    assert pieces[197:453] == [f"<0x{b:02X}>" for b in range(256)]
    assert sp.is_control(1) and sp.is_control(2) and sp.is_unknown(0)
    assert all(sp.encode(pieces[i]) == [i] for i in range(3, 197))  # user-defined: matched in text
    assert len(set(pieces)) == len(pieces) >= 2000
    # Official encoding behaviour: no dummy prefix, whitespace kept, digits split, markers matched in text.
    assert sp.encode("<reserved_106>你好\n<reserved_107>")[:1] == [195]
    assert sp.encode("\n") == [5]
    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]
    assert sp.decode(sp.encode("  two spaces ")) == "  two spaces "


def test_tensors_have_official_names_shapes_and_init(checkpoint):
    _, _, directory = checkpoint
    config = read_json(directory / "config.json")
    tensors = load_weights(directory)
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected_shapes(config)
    assert len(tensors) == 3 + 7 * config["num_hidden_layers"]
    assert all(t.dtype == torch.float32 for t in tensors.values())
    embed = tensors["model.embed_tokens.weight"]
    assert torch.count_nonzero(embed[0]) == 0
    assert abs(embed[1:].std().item() - 0.02) < 0.002
    assert torch.equal(tensors["model.norm.weight"], torch.ones(config["hidden_size"]))


def test_sharded_index_matches_the_shards(tmp_path):
    directory = write_tiny_checkpoint(tmp_path / "sharded", arch="13b", fmt="sharded")
    index = read_json(directory / "pytorch_model.bin.index.json")
    tensors = load_weights(directory)
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for shard in set(index["weight_map"].values()):
        names = {name for name, file in index["weight_map"].items() if file == shard}
        assert set(torch.load(directory / shard, weights_only=True)) == names


def test_formats_hold_the_same_tensors(tmp_path):
    formats = [
        load_weights(write_tiny_checkpoint(tmp_path / fmt, fmt=fmt))
        for fmt in ("bin", "safetensors", "sharded")
    ]
    for other in formats[1:]:
        assert other.keys() == formats[0].keys()
        assert all(torch.equal(other[name], formats[0][name]) for name in formats[0])


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    first = write_tiny_checkpoint(tmp_path / "a", arch="13b", seed=3)
    second = write_tiny_checkpoint(tmp_path / "b", arch="13b", seed=3)
    other = write_tiny_checkpoint(tmp_path / "c", arch="13b", seed=4)
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name
    assert (first / "tokenizer.model").read_bytes() == (other / "tokenizer.model").read_bytes()
    assert not torch.equal(load_weights(first)["lm_head.weight"], load_weights(other)["lm_head.weight"])


def test_bfloat16_weights_and_config(tmp_path):
    directory = write_tiny_checkpoint(tmp_path / "bf16", dtype="bfloat16")
    assert read_json(directory / "config.json")["torch_dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_weights(directory).values())


def test_auto_model_loads_every_format_without_remote_code(checkpoint):
    _, _, directory = checkpoint
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert type(model) is BaichuanForCausalLM
    loaded, stored = model.state_dict(), load_weights(directory)
    assert set(stored) <= set(loaded)
    for name, tensor in stored.items():
        if name == "lm_head.weight":  # NormHead may normalise rows at load; logits are the same either way
            assert torch.allclose(F.normalize(loaded[name], dim=-1), F.normalize(tensor, dim=-1), atol=1e-6)
        else:
            assert torch.equal(loaded[name], tensor), name


def test_corpus_is_the_repo_data_or_the_fallback(tmp_path, caplog):
    assert corpus_lines(tmp_path / "missing") == list(FALLBACK_CORPUS)
    (tmp_path / "chat.json").write_text(
        json.dumps([{"id": "1", "conversations": [{"from": "human", "value": "第一行\n第二行"}]}]),
        encoding="utf-8",
    )
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "more.jsonl").write_text(
        '{"text": "hello"}\n\n{"text": ["a", "b"]}\n', encoding="utf-8"
    )
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        lines = corpus_lines(tmp_path)
    assert lines == ["1", "human", "第一行", "第二行", "hello", "a", "b"]
    assert "broken.json" in caplog.text


def test_fallback_corpus_still_gives_the_official_special_pieces(tmp_path):
    directory = write_tiny_checkpoint(tmp_path / "out", data_dir=tmp_path / "missing")
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in (0, 1, 2, 5, 195, 196)] == [
        "<unk>",
        "<s>",
        "</s>",
        "\n",
        "<reserved_106>",
        "<reserved_107>",
    ]
    assert read_json(directory / "config.json")["vocab_size"] == sp.get_piece_size()


def test_cli_writes_a_checkpoint_and_refuses_a_non_empty_dir(tmp_path, capsys):
    assert (
        main(["--arch", "13b", "--output", str(tmp_path / "out"), "--format", "sharded", "--seed", "1"]) == 0
    )
    assert "tiny Baichuan2-13B" in capsys.readouterr().out
    assert (tmp_path / "out" / "pytorch_model.bin.index.json").is_file()
    assert main(["--arch", "7b", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err
