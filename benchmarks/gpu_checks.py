"""GPU checks run on a lent GPU (not in CI): flex_attention (compiled) against sdpa on packed rows, with
gradients, for 7B (RoPE) and 13B (ALiBi) shapes; then packed-row training throughput per backend.

    python benchmarks/gpu_checks.py
"""

import time

import torch

from finetune.models.baichuan import BaichuanConfig, BaichuanForCausalLM


def packed_positions(lengths, device):
    return torch.cat([torch.arange(n) for n in lengths])[None].to(device)


def equivalence(arch: str) -> None:
    torch.manual_seed(0)
    heads = 8 if arch == "rope" else 10
    config = BaichuanConfig(
        vocab_size=1000,
        hidden_size=64 * heads,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=heads,
        position_embedding=arch,
    )
    model = BaichuanForCausalLM(config).cuda().train()
    # Row lengths that are and are not multiples of flex's 128-token blocks, and rows shorter than one block:
    # torch 2.13's compiled flex on a CPU is wrong for some of those (why it is never compiled there).
    for lengths in ([300, 500, 224], [300, 500, 201], [40], [24, 16], [72]):
        ids = torch.randint(3, 1000, (1, sum(lengths)), device="cuda")
        pos = packed_positions(lengths, "cuda")
        results = {}
        for backend in ("sdpa", "flex_attention"):
            model.config._attn_implementation = backend
            model.zero_grad()
            out = model(input_ids=ids, position_ids=pos, labels=ids)
            out.loss.backward()
            grad = model.model.layers[0].self_attn.W_pack.weight.grad.clone()
            results[backend] = (out.loss.detach(), grad)
        loss_diff = (results["sdpa"][0] - results["flex_attention"][0]).abs().item()
        grad_diff = (results["sdpa"][1] - results["flex_attention"][1]).abs().max().item()
        print(
            f"{arch} rows {lengths}: flex vs sdpa packed fp32 loss diff {loss_diff:.2e}, "
            f"W_pack grad max diff {grad_diff:.2e}"
        )


def packed_throughput(arch: str, layers: int = 8, seq: int = 4096) -> None:
    shape = dict(
        hidden_size=4096, intermediate_size=11008, num_attention_heads=32, max_position_embeddings=4096
    )
    if arch == "alibi":
        shape = dict(hidden_size=5120, intermediate_size=13696, num_attention_heads=40)
    config = BaichuanConfig(vocab_size=125696, num_hidden_layers=layers, position_embedding=arch, **shape)
    config.use_cache = False
    with torch.device("cuda"):
        model = BaichuanForCausalLM._from_config(config, dtype=torch.bfloat16).train()
    lengths = [200 + (i * 37) % 300 for i in range(40)]
    while sum(lengths) > seq:
        lengths.pop()
    lengths.append(seq - sum(lengths))
    ids = torch.randint(3, 125696, (1, seq), device="cuda")
    pos = packed_positions(lengths, "cuda")
    for backend in ("sdpa", "flex_attention"):
        model.config._attn_implementation = backend
        for _ in range(2):
            model(input_ids=ids, position_ids=pos, labels=ids).loss.backward()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            model(input_ids=ids, position_ids=pos, labels=ids).loss.backward()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 4
        print(
            f"{arch} {layers} layers, packed row of {len(lengths)} samples, seq {seq}, {backend}: "
            f"{seq / seconds:,.0f} tokens/s (full fwd+bwd)"
        )
    del model
    torch.cuda.empty_cache()


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__)
    # The model compiles flex for one row length at a time; the checks below use ten (lengths x archs), which
    # past dynamo's default limit of 8 would silently compare uncompiled flex instead of the kernel.
    torch._dynamo.config.recompile_limit = 64
    for arch in ("rope", "alibi"):
        equivalence(arch)
    for arch in ("rope", "alibi"):
        packed_throughput(arch)
