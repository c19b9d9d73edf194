"""--streaming: rows packed on the fly are the map-style packer's rows, in an order fixed by the seed, and a run
resumed from a checkpoint continues at the right row."""

import itertools
import json
import shutil

import pytest
from fakes import CharTokenizer
from helpers import official, write_records

from finetune.data.dataset import tokenize_data
from finetune.data.options import DataOptions
from finetune.data.packing import pack
from finetune.data.streaming import StreamingRows, window_order


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    records = [
        official(("human", f"问{i}" * (1 + i % 7)), ("gpt", "答" * (3 + (i * 37) % 50)), id=str(i))
        for i in range(300)
    ]
    records[5] = official(("human", "x" * 200), ("gpt", "cut"), id="dropped")  # no trainable token within 64
    return write_records(tmp_path_factory.mktemp("stream") / "d.json", records)


def options(path):
    return DataOptions(data_path=[path], template="baichuan2")


def stream(path, **kwargs):
    return StreamingRows(CharTokenizer(), options(path), 64, **{"packing": True, "seed": 0, **kwargs})


def rows(dataset, n):
    return [
        tuple(tuple(row[k]) for k in ("input_ids", "labels", "position_ids"))
        for row in itertools.islice(dataset, n)
    ]


def test_one_window_streams_the_map_style_packed_rows_in_the_seeds_order(corpus):
    packed, stats = pack(tokenize_data(CharTokenizer(), options(corpus), 64)[0], 64)
    expected = rows(packed, len(packed))
    streamed = rows(stream(corpus, buffer=1000), stats["rows"])
    assert streamed == [expected[i] for i in window_order(0, 0, 0, stats["rows"])]
    # The next pass over the corpus: the same rows in another order.
    second = rows(stream(corpus, buffer=1000), 2 * stats["rows"])[stats["rows"] :]
    assert sorted(second) == sorted(expected) and second != streamed


def test_the_order_is_fixed_by_the_seed(corpus):
    assert rows(stream(corpus, buffer=64), 50) == rows(stream(corpus, buffer=64), 50)
    assert rows(stream(corpus, buffer=64, seed=1), 50) != rows(stream(corpus, buffer=64), 50)


def test_windows_pack_their_own_conversations(corpus, tmp_path):
    """Window w packs conversations [w * buffer, (w + 1) * buffer): the map-style rows of that slice."""
    records = json.loads(open(corpus, encoding="utf-8").read())
    first_window = write_records(tmp_path / "w0.json", records[:100])
    packed, stats = pack(tokenize_data(CharTokenizer(), options(first_window), 64)[0], 64)
    expected = rows(packed, len(packed))
    assert rows(stream(corpus, buffer=100), stats["rows"]) == [
        expected[i] for i in window_order(0, 0, 0, len(expected))
    ]


def test_unpacked_stream_yields_the_samples(corpus):
    samples = tokenize_data(CharTokenizer(), options(corpus), 64)[0].dataset()
    streamed = list(itertools.islice(stream(corpus, buffer=1000, packing=False), len(samples)))
    order = window_order(0, 0, 0, len(samples))
    assert [s["input_ids"] for s in streamed] == [samples[int(i)]["input_ids"] for i in order]


def test_streamed_training_resumes_at_the_right_row(tiny7b, tmp_path, in_repo_root):
    """Four steps straight, against two steps, a checkpoint, and a resumed run: the same losses at steps 3 and 4,
    so the resumed run skipped exactly the rows already trained on (each step's rows differ, and so would the
    loss of any other rows)."""
    from finetune import sft

    data = tmp_path / "chat.json"
    shutil.copy("data/sample_chat.json", data)
    common = [
        "--model_name_or_path", str(tiny7b), "--data_path", str(data), "--streaming", "True",
        "--streaming_buffer", "24", "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--model_max_length", "256", "--logging_steps", "1", "--report_to", "none", "--learning_rate", "1e-3",
        "--save_strategy", "steps", "--save_steps", "2", "--disable_tqdm", "True", "--seed", "3",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    assert sft.main([*common, "--output_dir", str(straight)]) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    assert sft.main([*common, "--output_dir", str(resumed), "--resume_from_checkpoint", "True"]) == 0

    def losses(out):
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return {row["step"]: row["loss"] for row in history if "loss" in row}

    assert losses(resumed) == losses(straight)
    assert len(set(losses(straight).values())) == 4


def test_dataloader_workers_share_the_windows_and_never_hang(corpus):
    """Two DataLoader workers tokenize alternate windows (worker 0 window 0, worker 1 window 1 of two), and the
    loader takes a row from each in turn; a worker left without a window ends instead of waiting forever."""
    import torch

    single = rows(stream(corpus, buffer=150), 400)
    first_window = len(rows(stream(corpus, buffer=150).window_rows(0, 0, _window(corpus, 0, 150)), 1000))
    loader = rows(
        torch.utils.data.DataLoader(stream(corpus, buffer=150), batch_size=None, num_workers=2), 100
    )
    assert loader[0::2] == single[:50]
    assert loader[1::2] == single[first_window : first_window + 50]
    alone = torch.utils.data.DataLoader(stream(corpus, buffer=1000), batch_size=None, num_workers=2)
    assert rows(alone, 10) == rows(stream(corpus, buffer=1000), 10)


def _window(path, index, size):
    from finetune.data.formats import load_conversations

    return load_conversations(path)[index * size : (index + 1) * size]
