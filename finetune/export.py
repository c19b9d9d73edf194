"""Merge a LoRA adapter into its base model and write a full model in the base checkpoint's format.

    python -m finetune.export --adapter output/lora --output output/merged [--dtype bf16] [--fold_norm_head]
    python -m finetune.export --model output/full --output output/b1-style --fold_norm_head

The output directory is a drop-in replacement for the base directory: the base's tensor names (checked
against the base checkpoint), its config.json (auto_map kept; only the dtype field follows ``--dtype``), its
tokenizer files, generation_config.json and remote-code ``*.py`` files copied byte for byte, and the weights
as safetensors shards ``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``.

``--fold_norm_head`` (Baichuan2 only) stores ``lm_head.weight`` with L2-normalised rows, the offline
conversion of the official README that lets engines written for Baichuan 1 (a plain linear head) serve the
model. Baichuan2 itself normalises the head in forward, and normalising is idempotent, so the folded model
gives the same logits here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from finetune import exits
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
from finetune.outputs import local_model_dir

WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SAFE_INDEX = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"


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
            return list(json.loads((model_dir / index).read_text(encoding="utf-8"))["weight_map"])
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


def load_merged(model_dir: Path, adapter: str | None, dtype: torch.dtype) -> torch.nn.Module:
    """The model of ``model_dir`` in ``dtype``, with ``adapter`` merged into its weights when given."""
    from transformers import AutoModelForCausalLM

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


def copy_model_files(source: Path, output_dir: Path) -> list[str]:
    """Copy every top-level file of ``source`` but its weights and config.json: tokenizer files,
    generation_config.json, remote-code ``*.py``, license and model card."""
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name != "config.json":
            if not is_weight_file(path.name):
                shutil.copy2(path, output_dir / path.name)
                copied.append(path.name)
    return copied


def write_config(source: Path, output_dir: Path, dtype: torch.dtype) -> None:
    """The source's config.json unchanged (auto_map, field set, version stamp) except its dtype field."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
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
    fold_head: bool = False,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Write the merged (``adapter``) or re-exported (``model``) full model to ``output``; returns its path."""
    if (adapter is None) == (model is None):
        raise ExportError("give exactly one of --adapter (merge a LoRA adapter) or --model (a full model)")
    source = base_dir_of(adapter, base) if adapter is not None else Path(model)
    if not (source / "config.json").is_file():
        raise ExportError(f"{source}: not a model directory (no config.json)")
    output_dir = Path(output)
    check_output_dir(output_dir, [source] + ([Path(adapter)] if adapter else []))
    check_model_dir(source)  # names a truncated or corrupt file before anything reads it
    names = checkpoint_tensor_names(source)
    if fold_head and LM_HEAD not in names:
        raise ExportError(f"{source}: --fold_norm_head needs a checkpoint with {LM_HEAD}")
    target = DTYPES[dtype] if dtype else config_dtype(read_json(source / "config.json"))

    merged = load_merged(source, adapter, target)
    if fold_head and getattr(merged.config, "model_type", None) != "baichuan":
        raise ExportError(f"{source}: --fold_norm_head applies to Baichuan2 checkpoints (NormHead) only")
    tensors = select_tensors(merged.state_dict(), names, source)
    if fold_head:
        tensors = fold_norm_head(tensors)
    tensors = cast(tensors, target)
    del merged

    output_dir.mkdir(parents=True, exist_ok=True)
    shards = write_safetensors_shards(tensors, output_dir, max_shard_size)
    write_config(source, output_dir, target)
    copied = copy_model_files(source, output_dir)
    what = f"merged {adapter} into {source}" if adapter else f"re-exported {source}"
    print(
        f"{what}: {len(tensors)} tensors ({config_name(target)}{', NormHead folded' if fold_head else ''}) "
        f"in {len(shards)} safetensors shard(s) + config.json + {', '.join(copied) or 'no other files'} → {output_dir}"
    )
    return output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m finetune.export", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="LoRA output directory (adapter_config.json + adapter weights)")
    source.add_argument("--model", help="a full model directory to re-export (e.g. with --fold_norm_head)")
    parser.add_argument("--output", required=True, help="directory to create (must be absent or empty)")
    parser.add_argument("--base", help="base model directory, when the adapter's recorded base has moved")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="weights dtype (default: the source config's, bf16 for Baichuan2)",
    )
    parser.add_argument(
        "--fold_norm_head",
        action="store_true",
        help="store lm_head.weight L2-normalised per row (Baichuan 1-style head, for engines that expect it)",
    )
    parser.add_argument(
        "--max_shard_size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        export(
            args.output,
            adapter=args.adapter,
            model=args.model,
            base=args.base,
            dtype=args.dtype,
            fold_head=args.fold_norm_head,
            max_shard_size=args.max_shard_size,
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
