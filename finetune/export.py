"""Merge a LoRA adapter into its base model and write a full model in the base checkpoint's format.

    python -m finetune.export --adapter output/lora --output output/merged [--dtype bf16] [--no_fold_norm_head]
    python -m finetune.export --model output/full --output output/exported
    python -m finetune.export --portable /models/Baichuan2-7B-Chat --output /models/Baichuan2-7B-Chat-portable

The output directory is a drop-in replacement for the base directory: the base's tensor names (checked
against the base checkpoint), its config.json (only the dtype field follows ``--dtype``), its tokenizer
files, generation_config.json, license and README copied, and the weights as safetensors shards
``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``. Other files of the base are left
out (and named). A Baichuan2 export carries this project's portable remote code instead of the base's (it
loads with ``trust_remote_code=True`` on transformers 4.33 and 5), its special tokens marked in the
tokenizer files and a chat template (`finetune.remote_code`); another model keeps its own ``*.py``.

Baichuan2's ``lm_head.weight`` is stored with L2-normalised rows by default (``--no_fold_norm_head`` keeps it
raw): the offline conversion of the official README. Engines with a plain linear head (llama.cpp, engines
written for Baichuan 1) then compute the right logits; Baichuan2's own code and vLLM normalise the head
again, which is idempotent, so their logits are unchanged.

``--portable SRC`` repairs an official Baichuan2 download for current transformers: a copy of SRC with its
three remote-code files replaced by the portable ones and everything else as it was, the weights hard-linked
(symlinked across file systems; ``--copy_weights`` copies them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path

import torch

from finetune import exits
from finetune.adapter_files import check_adapter_base
from finetune.dtypes import DTYPES, config_dtype, config_name
from finetune.jsonfile import read_json, write_json
from finetune.loading import (
    LoadError,
    adapter_base,
    check_model_dir,
    is_adapter_dir,
    load_errors,
    require_finite,
)
from finetune.models.baichuan.portable import REMOTE_CODE_FILES
from finetune.outputs import local_model_dir
from finetune.remote_code import is_baichuan_dir, mark_tokenizer_files, ship_remote_code

WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SAFE_INDEX = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"
# What an export copies from its source besides config.json and the weights (shell patterns).
KNOWN_FILES = (
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "README*",
    "LICENSE*",
    "NOTICE*",
    "*icense*",  # the official release: "Community License for Baichuan 2 Model.pdf"
)
REMOTE_CODE_PATTERN = "*.py"


class ExportError(Exception):
    """The export cannot run; the message is one line naming the path and the problem."""


# ---------------------------------------------------------------- reading the source


def base_dir_of(adapter: str, base: str | None) -> Path:
    """The local base directory an adapter merges into: ``base`` when given, else the one its config records."""
    if not is_adapter_dir(adapter):
        raise ExportError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)")
    recorded = base or adapter_base(adapter)
    path = local_model_dir(recorded)  # a directory, or a hub id's cached snapshot
    if path is None or not (path / "config.json").is_file():
        raise ExportError(
            f"{adapter}: base model {recorded!r} is not a local model directory; pass --base DIR"
        )
    return path


def checkpoint_tensor_names(model_dir: Path) -> list[str]:
    """The tensor names stored in a checkpoint directory (index, safetensors or a single .bin), in file order."""
    for index in WEIGHT_INDEXES:
        if (model_dir / index).is_file():
            return list(read_json(model_dir / index)["weight_map"])
    if (model_dir / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            return list(f.keys())
    if (model_dir / "pytorch_model.bin").is_file():
        # mmap: read the key table, not the tensors
        return list(
            torch.load(model_dir / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
        )
    raise ExportError(f"{model_dir}: no model weights (safetensors, pytorch_model.bin or an index)")


def load_merged(
    model_dir: Path, adapter: str | None, dtype: torch.dtype, allow_base_mismatch: bool = False
) -> torch.nn.Module:
    """The model of ``model_dir`` in ``dtype``, with ``adapter`` merged into its weights when given (an error
    when the adapter's recorded base fingerprint does not match ``model_dir``, unless allowed)."""
    from transformers import AutoModelForCausalLM

    if adapter is not None:
        check_adapter_base(adapter, model_dir, allow_base_mismatch)
    check_model_dir(model_dir)
    with load_errors(model_dir):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    require_finite(model, model_dir)
    if adapter is not None:
        from peft import PeftModel

        check_model_dir(adapter)
        with load_errors(adapter):
            model = PeftModel.from_pretrained(model, adapter)
        require_finite(model, adapter)  # names the adapter's own tensor, before the merge hides it
        # The merge runs in the export dtype, so a bf16 base is not held twice in fp32 (peft forms each B·A
        # in fp32 on CPU, then rounds once when adding it); --dtype fp32 merges exactly.
        model = model.merge_and_unload()
    return model.eval()


# ---------------------------------------------------------------- what gets written


def select_tensors(
    state_dict: Mapping[str, torch.Tensor], names: list[str], source: Path
) -> dict[str, torch.Tensor]:
    """The tensors to write, under exactly the checkpoint's names and in its order.

    A name the model lacks, or a model tensor the checkpoint does not store, is an error naming them, except
    a tensor tied to one that is written (a tied output head shares the embedding's storage).
    """
    missing = [n for n in names if n not in state_dict]
    stored = set(names)
    kept = {state_dict[n].data_ptr() for n in stored if n in state_dict}
    extra = [n for n, t in state_dict.items() if n not in stored and t.data_ptr() not in kept]
    if missing or extra:
        parts = [
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(extra)}" if extra else "",
        ]
        raise ExportError(
            f"{source}: merged model does not match the checkpoint's tensor names: {'; '.join(p for p in parts if p)}"
        )
    return {n: state_dict[n] for n in names}


def fold_norm_head(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Baichuan 1-style head: ``lm_head.weight`` rows scaled to unit L2 norm (computed in fp32)."""
    head = tensors[LM_HEAD]
    return {**tensors, LM_HEAD: torch.nn.functional.normalize(head.float(), dim=-1).to(head.dtype)}


def cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype``, each its own contiguous storage (safetensors refuses shared storage)."""
    return {
        n: (t.to(dtype) if t.is_floating_point() else t).detach().contiguous().clone()
        for n, t in tensors.items()
    }


def write_safetensors_shards(
    tensors: dict[str, torch.Tensor], output_dir: Path, max_shard_size: str | int
) -> list[str]:
    """Write ``model-0000k-of-0000n.safetensors`` (n ≥ 1) and the index mapping every tensor to its shard."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    count = len(split.filename_to_tensors)
    weight_map: dict[str, str] = {}
    files = []
    for k, names in enumerate(split.filename_to_tensors.values(), start=1):
        filename = f"model-{k:05d}-of-{count:05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(output_dir / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, filename))
        files.append(filename)
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": {n: weight_map[n] for n in tensors}}
    write_json(output_dir / SAFE_INDEX, index)
    return files


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name in WEIGHT_INDEXES


def copy_model_files(source: Path, output_dir: Path, remote_code: bool) -> tuple[list[str], list[str]]:
    """Copy the known top-level files of ``source`` (tokenizer files, generation_config.json, license, README;
    with ``remote_code``, its ``*.py``). Returns (copied, left out): weights and config.json are written
    separately, anything else unknown stays behind."""
    patterns = KNOWN_FILES + ((REMOTE_CODE_PATTERN,) if remote_code else ())
    copied, left_out = [], []
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name == "config.json":
            continue
        if is_weight_file(path.name):
            continue
        if any(fnmatch(path.name, pattern) for pattern in patterns):
            shutil.copy2(path, output_dir / path.name)
            copied.append(path.name)
        elif not path.name.endswith(".py"):
            left_out.append(path.name)
    return copied, left_out


def write_config(source: Path, output_dir: Path, dtype: torch.dtype) -> None:
    """The source's config.json unchanged (auto_map, field set, version stamp) except its dtype field."""
    config = read_json(source / "config.json")
    # transformers 5 writes "dtype", older readers (the official code, vLLM, FastChat) read "torch_dtype"
    for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]:
        config[key] = config_name(dtype)
    write_json(output_dir / "config.json", config, sort_keys=True)


def check_output_dir(output_dir: Path, sources: list[Path]) -> None:
    if any(output_dir.resolve() == s.resolve() for s in sources):
        raise ExportError(f"{output_dir}: is a source directory; choose a new output directory")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ExportError(f"{output_dir}: exists and is not empty; choose a new output directory")


# ---------------------------------------------------------------- entry point


def export(
    output: str,
    adapter: str | None = None,
    model: str | None = None,
    base: str | None = None,
    dtype: str | None = None,
    fold_head: bool | None = None,
    max_shard_size: str | int = "5GB",
    allow_base_mismatch: bool = False,
) -> Path:
    """Write the merged (``adapter``) or re-exported (``model``) full model to ``output``; returns its path.
    ``fold_head`` None: fold the NormHead of a Baichuan2 model (and of nothing else)."""
    if (adapter is None) == (model is None):
        raise ExportError("give exactly one of --adapter (merge a LoRA adapter) or --model (a full model)")
    source = base_dir_of(adapter, base) if adapter is not None else Path(model)
    if not (source / "config.json").is_file():
        raise ExportError(f"{source}: not a model directory (no config.json)")
    output_dir = Path(output)
    check_output_dir(output_dir, [source] + ([Path(adapter)] if adapter else []))
    check_model_dir(source)  # names a truncated or corrupt file before anything reads it
    baichuan = is_baichuan_dir(source)
    if fold_head and not baichuan:
        raise ExportError(
            f"{source}: --fold_norm_head applies to Baichuan2 checkpoints ({LM_HEAD} of a NormHead) only"
        )
    fold_head = baichuan if fold_head is None else fold_head
    names = checkpoint_tensor_names(source)
    if fold_head and LM_HEAD not in names:
        raise ExportError(f"{source}: --fold_norm_head needs a checkpoint with {LM_HEAD}")
    target = DTYPES[dtype] if dtype else config_dtype(read_json(source / "config.json"))

    merged = load_merged(source, adapter, target, allow_base_mismatch)
    tensors = select_tensors(merged.state_dict(), names, source)
    if fold_head:
        tensors = fold_norm_head(tensors)
    tensors = cast(tensors, target)
    del merged

    output_dir.mkdir(parents=True, exist_ok=True)
    shards = write_safetensors_shards(tensors, output_dir, max_shard_size)
    write_config(source, output_dir, target)
    copied, left_out = copy_model_files(source, output_dir, remote_code=not baichuan)
    marked = False
    if baichuan:
        copied += ship_remote_code(output_dir)
        marked = mark_tokenizer_files(output_dir)
        left_out = [name for name in left_out if name not in REMOTE_CODE_FILES]
    what = f"merged {adapter} into {source}" if adapter else f"re-exported {source}"
    print(
        f"{what}: {len(tensors)} tensors ({config_name(target)}{', NormHead folded' if fold_head else ''}) "
        f"in {len(shards)} safetensors shard(s) + config.json + {', '.join(copied) or 'no other files'} → {output_dir}"
        + ("; special tokens marked, chat template added" if marked else "")
        + (f"; left out (not a known model file): {', '.join(left_out)}" if left_out else "")
    )
    return output_dir


def link_or_copy(source: Path, target: Path, copy: bool) -> str:
    """Hard link ``target`` to ``source`` (same file system), else a symlink to it; ``copy`` copies instead.
    Returns how."""
    if copy:
        shutil.copy2(source, target)
        return "copied"
    try:
        os.link(source, target)
        return "hard-linked"
    except OSError:
        target.symlink_to(source.resolve())
        return "symlinked"


def make_portable(source: str, output: str, copy_weights: bool = False) -> Path:
    """Write a copy of an official Baichuan2 directory whose remote code works on current transformers: the
    portable configuration/modeling/tokenization files instead of the official ones, every other file as it
    was (weights linked, or copied with ``copy_weights``)."""
    source_dir, output_dir = Path(source), Path(output)
    if not is_baichuan_dir(source_dir):
        raise ExportError(
            f"{source_dir}: not a Baichuan2 model directory (config.json with model_type baichuan)"
        )
    check_output_dir(output_dir, [source_dir])
    output_dir.mkdir(parents=True, exist_ok=True)
    linked = {}
    for path in sorted(source_dir.iterdir()):
        if not path.is_file() or path.name in REMOTE_CODE_FILES:
            continue
        if is_weight_file(path.name) and path.name not in WEIGHT_INDEXES:
            linked[path.name] = link_or_copy(path, output_dir / path.name, copy_weights)
        else:
            shutil.copy2(path, output_dir / path.name)
    ship_remote_code(output_dir)
    ways = sorted(set(linked.values()))
    print(
        f"portable copy of {source_dir} → {output_dir}: remote code replaced ({', '.join(REMOTE_CODE_FILES)}), "
        f"{len(linked)} weight file(s) {'/'.join(ways) or 'none'}, every other file copied unchanged"
    )
    return output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m finetune.export", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="LoRA output directory (adapter_config.json + adapter weights)")
    source.add_argument("--model", help="a full model directory to re-export (e.g. to change the dtype)")
    source.add_argument(
        "--portable",
        metavar="SRC",
        help="an official Baichuan2 directory to copy with remote code that works on current transformers",
    )
    parser.add_argument("--output", required=True, help="directory to create (must be absent or empty)")
    parser.add_argument("--base", help="base model directory, when the adapter's recorded base has moved")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="weights dtype (default: the source config's, bf16 for Baichuan2)",
    )
    fold = parser.add_mutually_exclusive_group()
    fold.add_argument(
        "--fold_norm_head",
        dest="fold_norm_head",
        action="store_const",
        const=True,
        help="store lm_head.weight L2-normalised per row (the default for Baichuan2)",
    )
    fold.add_argument(
        "--no_fold_norm_head",
        dest="fold_norm_head",
        action="store_const",
        const=False,
        help="store Baichuan2's lm_head.weight as trained (raw rows, as the official release)",
    )
    parser.add_argument(
        "--max_shard_size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB"
    )
    parser.add_argument(
        "--copy_weights", action="store_true", help="--portable: copy the weights instead of linking them"
    )
    parser.add_argument(
        "--allow_base_mismatch",
        action="store_true",
        help="merge an adapter into a base it was not trained on",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.portable is not None:
            make_portable(args.portable, args.output, copy_weights=args.copy_weights)
            return exits.OK
        export(
            args.output,
            adapter=args.adapter,
            model=args.model,
            base=args.base,
            dtype=args.dtype,
            fold_head=args.fold_norm_head,
            max_shard_size=args.max_shard_size,
            allow_base_mismatch=args.allow_base_mismatch,
        )
    except (ExportError, LoadError, ValueError) as e:  # unreadable or mismatched checkpoints included
        print(f"error: {e}", file=sys.stderr)
        return exits.BAD_INPUT
    except OSError as e:  # writing the output: a full disk, permissions
        print(f"error: writing {args.output} failed: {e}", file=sys.stderr)
        return exits.FAILED
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
