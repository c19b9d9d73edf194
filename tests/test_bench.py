"""The benchmark harness: `--quick` prints the expected tables with sane figures (no timing is asserted), and the
GPU module's FLOP count matches the architecture."""

import pytest
import torch

from benchmarks import bench, bench_gpu


def table(text: str, first_header: str) -> list[dict[str, str]]:
    """The markdown table whose header starts with `first_header`, as one dict per body row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%x"))


@pytest.fixture(scope="module")
def quick_output(tmp_path_factory) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench.main(["--quick", "--workdir", str(tmp_path_factory.mktemp("bench"))]) == 0
    return out.getvalue()


def test_quick_training_table(quick_output):
    rows = table(quick_output, "model")
    assert [(r["model"], r["setting"]) for r in rows] == [
        ("tiny-7b", "official"),
        ("tiny-7b", "padding"),
        ("tiny-7b", "packing"),
    ]
    numeric = ["steps", "computed positions", "real tokens", "supervised tokens", "fill", "epoch s"]
    numeric += ["epoch CPU s", "supervised tok per CPU s", "vs official", "peak RSS MiB"]
    for row in rows:
        assert all(number(row[column]) > 0 for column in numeric), row
        assert number(row["fill"]) <= 100
        assert (
            number(row["supervised tokens"]) < number(row["real tokens"]) <= number(row["computed positions"])
        )
    official, padding, packing = rows
    # Official: 16 samples, every one padded to 512.
    assert number(official["computed positions"]) == 16 * bench.MAX_LENGTH
    assert official["vs official"] == "1.00x" and official["packing eff."] == "-"
    # Padding and packing see the same samples (turn-aware truncation): only the layout differs.
    assert padding["real tokens"] == packing["real tokens"]
    assert padding["supervised tokens"] == packing["supervised tokens"]
    assert number(padding["computed positions"]) < number(official["computed positions"])
    assert 0 < number(packing["packing eff."]) <= 100


def test_quick_data_path_table(quick_output):
    ours, reference = table(quick_output, "conversations")
    assert (ours["path"], reference["path"]) == ("ours", "previous packer")
    assert ours["conversations"] == reference["conversations"] == "1,000"
    # Same samples, and the packed rows are the previous packer's exactly.
    assert ours["tokens"] == reference["tokens"] and ours["packed rows"] == reference["packed rows"]
    assert reference["rows identical"] == "yes"
    for column in ("tokens", "read s", "tokenise s", "pack s", "total s", "conversations/s", "tokens/s"):
        assert number(ours[column]) > 0, column
    assert number(ours["total s"]) >= number(ours["tokenise s"])
    assert number(ours["peak RSS MiB"]) > 0 and number(reference["pack s"]) > 0


def test_flops_per_token_counts_every_weight_but_the_embedding():
    shape = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 3}
    model = bench_gpu.build_model({**shape, "vocab_size": 100}, torch.device("cpu"), torch.float32)
    d, inner, layers, seq = 32, 48, 3, 64
    per_layer = 4 * d * d + 3 * d * inner + 2 * d  # W_pack + o_proj, MLP, two norms
    dense = layers * per_layer + d + 100 * d  # final norm, head
    attention = 12 * layers * d * seq
    assert bench_gpu.flops_per_token(model, model.config, seq) == 6 * dense + attention
    model.requires_grad_(False)  # a frozen base, as under LoRA: no weight gradients
    assert bench_gpu.flops_per_token(model, model.config, seq) == 4 * dense + attention
