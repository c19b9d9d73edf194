"""Write a tiny random Baichuan2 checkpoint in the official directory layout, for demos and tests.

    python -m finetune.tiny --arch 7b --output output/tiny-7b [--seed 0] [--format bin|safetensors|sharded]

The directory looks like a real Baichuan2 download (config.json with auto_map, generation_config.json,
tokenizer.model + tokenizer_config.json + special_tokens_map.json, weights under the official tensor names)
except that the remote-code .py files are absent: it loads only through `import finetune`'s registration.
The tokenizer is a small SentencePiece BPE trained with the official settings on the repo's sample data, with
the official special ids (0 <unk>, 1 <s>, 2 </s>, 5 "\\n", 195/196 chat markers).
"""

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from finetune.data.constants import (
    ASSISTANT_TOKEN_ID,
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    OFFICIAL_CHAT_GENERATION,
    PAD_TOKEN_ID,
    USER_TOKEN_ID,
)
from finetune.dtypes import parse_dtype
from finetune.jsonfile import read_json, write_json

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FORMATS = ("bin", "safetensors", "sharded")
# Config-style names, as config.json spells them (finetune.dtypes parses them).
DTYPES = ("float32", "bfloat16")
NUM_SHARDS = 3  # the official 13B release has three

# Official piece layout: 3 <SEP>, 4 <CLS>, 5 "\n", 101.. <reserved_12>.. (so 195 = <reserved_106>, the user
# marker, and 196 = <reserved_107>, the assistant marker). What official ids 6-100 hold is not recorded, so they
# are named fillers here; byte-fallback pieces follow the user-defined ones, then the learned merges.
USER_DEFINED_PIECES = (
    ["<SEP>", "<CLS>", "\n"]
    + [f"<unused_{i}>" for i in range(6, 101)]
    + [f"<reserved_{i - 89}>" for i in range(101, 197)]
)
SENTENCEPIECE_SETTINGS: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": 4000,
    "hard_vocab_limit": False,  # a small corpus may support fewer merges; take what it gives
    "character_coverage": 1.0,  # every corpus character gets a piece; unseen ones use byte fallback
    "normalization_rule_name": "identity",
    "add_dummy_prefix": False,
    "remove_extra_whitespaces": False,
    "split_digits": True,
    "byte_fallback": True,
    "max_sentencepiece_length": 32,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "unk_piece": "<unk>",
    "bos_piece": "<s>",
    "eos_piece": "</s>",
    "user_defined_symbols": USER_DEFINED_PIECES,
    # determinism: one thread, corpus order as given, no sampling
    "num_threads": 1,
    "shuffle_input_sentence": False,
    "input_sentence_size": 0,
}

# Used only when the repo's data/ directory holds no text (e.g. the package installed elsewhere).
FALLBACK_CORPUS = (
    "你好！有什么可以帮你的吗？",
    "请写一篇关于气候变化对海洋生态影响的短文。",
    "好的，以下是你要求的文章：海水温度升高使珊瑚白化，海洋逐渐酸化。",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支，它让计算机从数据中学习规律。",
    "请把这句话翻译成英文：我喜欢读书。",
    "Hello! How can I help you today?",
    "Please write a short poem about the sea and the moon.",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models are trained on data to make predictions.",
    "In 2023, the model was trained on 2.6 trillion tokens.",
    "def add(a, b): return a + b",
    "The answer is 42; the price is $3.99 (about ¥28).",
)

ARCHS: dict[str, dict[str, Any]] = {
    # Official field sets (docs/BAICHUAN2.md, "Models") at tiny sizes; 13B keeps a head count that is not a power of two
    # so the interleaved ALiBi slopes are exercised.
    "7b": {
        "hidden_size": 64,
        "intermediate_size": 172,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 4096,
    },
    "13b": {
        "hidden_size": 80,
        "intermediate_size": 172,
        "num_attention_heads": 5,
        "num_hidden_layers": 2,
        "gradient_checkpointing": False,
    },
}
# The release's own version stamp, so the files read like a download rather than like our output.
OFFICIAL_TRANSFORMERS_VERSION = "4.29.2"
# generation_config.json of the official Chat checkpoints.
GENERATION_CONFIG = {
    "assistant_token_id": ASSISTANT_TOKEN_ID,
    "bos_token_id": BOS_TOKEN_ID,
    "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": PAD_TOKEN_ID,
    "user_token_id": USER_TOKEN_ID,
    **OFFICIAL_CHAT_GENERATION,
    "transformers_version": OFFICIAL_TRANSFORMERS_VERSION,
}
MODEL_MAX_LENGTH = 4096


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _read_json_values(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(text)]


def corpus_lines(data_dir: Path = DATA_DIR) -> list[str]:
    """Every line of every string value in data_dir/**/*.json(l), in sorted file order; the fallback corpus if
    there is none. A file that does not parse is skipped with a warning: it only costs the tokenizer some text."""
    lines = []
    paths = sorted([*data_dir.rglob("*.json"), *data_dir.rglob("*.jsonl")]) if data_dir.is_dir() else []
    for path in paths:
        try:
            values = _read_json_values(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("%s: skipped for the tiny tokenizer corpus (%s)", path, exc)
            continue
        for text in _strings(values):
            # The trainer reads one sentence per item; "\n" is a user-defined piece, so nothing is lost.
            lines.extend(line for line in text.split("\n") if line.strip())
    return lines or list(FALLBACK_CORPUS)


def train_tokenizer_model(lines: list[str]) -> bytes:
    """Train the tiny SentencePiece BPE in memory; the same lines always give the same bytes."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, minloglevel=2, **SENTENCEPIECE_SETTINGS
    )
    return model.getvalue()


def tiny_tokenizer_model(data_dir: Path = DATA_DIR) -> bytes:
    """The tiny tokenizer.model for the corpus in data_dir. Training takes a few tens of milliseconds on the
    sample data, so it is not cached: nothing on disk can go stale."""
    return train_tokenizer_model(corpus_lines(data_dir))


def model_config(arch: str, vocab_size: int, dtype: str = "float32") -> dict[str, Any]:
    """config.json of a tiny Baichuan2 with the official field set for `arch` (7B has max_position_embeddings,
    13B does not; 13B has gradient_checkpointing)."""
    return {
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "model_max_length": MODEL_MAX_LENGTH,
        "model_type": "baichuan",
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "tokenizer_class": "BaichuanTokenizer",
        "torch_dtype": dtype,
        "transformers_version": OFFICIAL_TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": vocab_size,
        **ARCHS[arch],
    }


def _token(content: str, single_word: bool) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": single_word,
    }


def tokenizer_files(arch: str) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json as shipped: 7B lists use_fast and omits bos_token, 13B
    lists bos_token and marks the special tokens single_word (docs/BAICHUAN2.md, "Tokenizer")."""
    single_word = arch == "13b"
    special = {"unk_token": "<unk>", "pad_token": "<unk>", "eos_token": "</s>"}
    if arch == "13b":
        special["bos_token"] = "<s>"
    config: dict[str, Any] = {
        "add_bos_token": False,
        "add_eos_token": False,
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "sp_model_kwargs": {},
        "tokenizer_class": "BaichuanTokenizer",
        **{name: {"__type": "AddedToken", **_token(text, single_word)} for name, text in special.items()},
    }
    if arch == "7b":
        config["use_fast"] = False
    tokens_map = {
        name: _token(text, single_word)
        for name, text in {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
        }.items()
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": tokens_map}


def random_state_dict(config: dict[str, Any], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Official tensor names and shapes (docs/BAICHUAN2.md, "Models"): N(0, 0.02) matrices, unit norms, and a zero
    embedding row 0 (padding_idx, the pad id)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * config["initializer_range"]).to(dtype)

    embed = normal(vocab, hidden)
    embed[0] = 0
    tensors = {"model.embed_tokens.weight": embed}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        tensors[f"{layer}.input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        tensors[f"{layer}.self_attn.W_pack.weight"] = normal(3 * hidden, hidden)
        tensors[f"{layer}.self_attn.o_proj.weight"] = normal(hidden, hidden)
        tensors[f"{layer}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        tensors[f"{layer}.mlp.gate_proj.weight"] = normal(inner, hidden)
        tensors[f"{layer}.mlp.up_proj.weight"] = normal(inner, hidden)
        tensors[f"{layer}.mlp.down_proj.weight"] = normal(hidden, inner)
    tensors["model.norm.weight"] = torch.ones(hidden, dtype=dtype)
    tensors["lm_head.weight"] = normal(vocab, hidden)
    return tensors


def _shards(tensors: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    """Split in key order the way save_pretrained's max_shard_size does, with the limit at 1/count of the total;
    a tensor larger than the limit gets a shard of its own."""
    limit = -(-sum(t.numel() * t.element_size() for t in tensors.values()) // count)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def write_weights(tensors: dict[str, torch.Tensor], output_dir: Path, fmt: str) -> list[Path]:
    """pytorch_model.bin (the official 7B format), model.safetensors, or pytorch_model-0000k-of-0000n.bin shards
    with pytorch_model.bin.index.json (the official 13B format)."""
    if fmt == "bin":
        torch.save(tensors, output_dir / "pytorch_model.bin")
        return [output_dir / "pytorch_model.bin"]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, output_dir / "model.safetensors", metadata={"format": "pt"})
        return [output_dir / "model.safetensors"]
    shards = _shards(tensors, NUM_SHARDS)
    weight_map, paths = {}, []
    for k, shard in enumerate(shards, start=1):
        path = output_dir / f"pytorch_model-{k:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, path)
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    write_json(output_dir / "pytorch_model.bin.index.json", index, sort_keys=True)
    return [*paths, output_dir / "pytorch_model.bin.index.json"]


def write_tiny_checkpoint(
    output_dir: str | os.PathLike,
    arch: str = "7b",
    seed: int = 0,
    fmt: str = "bin",
    dtype: str = "float32",
    data_dir: Path = DATA_DIR,
) -> Path:
    """Write a tiny random Baichuan2 checkpoint directory; the same arguments always give the same bytes."""
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r}: expected one of {', '.join(ARCHS)}")
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir}: exists and is not empty")
    output_dir.mkdir(parents=True, exist_ok=True)

    sp_model = tiny_tokenizer_model(data_dir)
    (output_dir / "tokenizer.model").write_bytes(sp_model)
    for name, value in tokenizer_files(arch).items():
        write_json(output_dir / name, value, sort_keys=True)
    vocab_size = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
    config = model_config(arch, vocab_size, dtype)
    write_json(output_dir / "config.json", config, sort_keys=True)
    write_json(output_dir / "generation_config.json", GENERATION_CONFIG, sort_keys=True)
    write_weights(random_state_dict(config, seed, parse_dtype(dtype, allow_auto=False)), output_dir, fmt)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), required=True, help="7b: RoPE; 13b: ALiBi")
    parser.add_argument("--output", required=True, help="directory to create (must be empty or absent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, default="bin", dest="fmt")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    args = parser.parse_args(argv)
    try:
        path = write_tiny_checkpoint(
            args.output, arch=args.arch, seed=args.seed, fmt=args.fmt, dtype=args.dtype
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = read_json(path / "config.json")
    print(f"wrote tiny Baichuan2-{args.arch.upper()} ({args.fmt}, vocab {config['vocab_size']}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
