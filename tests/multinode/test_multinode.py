"""`make test-multinode`: preflight and the real `deepspeed --hostfile` launcher (pdsh over ssh) across
two loopback hosts, one rank each: world size 2, node ranks 0 and 1, a LoRA run on a tiny Baichuan2
checkpoint that completes and saves once. An unreachable third host (with data missing everywhere)
must stop the launch in seconds, naming each host and problem. The torchrun recipe runs as two nodes.
Run with `-s` (run.sh does) to see the preflight tables and each host's node rank and world size."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.multinode

TRAIN_TIMEOUT_S = 300
PREFLIGHT_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _launch(cluster, hostfile: Path, launch_args: list[str], train_args: list[str], timeout: int):
    cmd = [
        sys.executable,
        "-m",
        "finetune.launch",
        "--hostfile",
        str(hostfile),
        *launch_args,
        "--",
        *train_args,
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=cluster.env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _show(title: str, lines: list[str]) -> None:
    print(f"\n--- {title}")
    print("\n".join(lines))


def _preflight_lines(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("preflight:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("preflight: env"))
    return lines[start : end + 1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "baichuan2-7b-tiny"
    subprocess.run(
        [sys.executable, "-m", "finetune.tiny", "--arch", "7b", "--output", str(out)], cwd=REPO, check=True
    )
    return out


def _train_args(model: Path, output_dir: Path, data: str = "data/sample_chat.json") -> list[str]:
    return [
        "--model_name_or_path", str(model),
        "--data_path", data,
        "--output_dir", str(output_dir),
        "--deepspeed", "ds_configs/zero2.json",
        "--use_lora", "True",
        "--max_steps", "2",
        "--per_device_train_batch_size", "1",
        "--model_max_length", "256",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        # Info logs on every rank, so that "Saving model checkpoint" shows who wrote the output.
        "--log_level", "info",
        "--log_level_replica", "info",
    ]  # fmt: skip


def test_two_hosts_train_with_world_size_two(loopback_cluster, tiny_model, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    output_dir = tmp_path / "out"
    port = _free_port()
    launch_args = ["--master_addr", "127.0.0.1", "--master_port", str(port), "--env", "GLOO_SOCKET_IFNAME=lo"]
    done = _launch(
        loopback_cluster, hostfile, launch_args, _train_args(tiny_model, output_dir), TRAIN_TIMEOUT_S
    )
    output = done.stdout + done.stderr
    (tmp_path / "launch.log").write_text(output)
    assert done.returncode == 0, output[-6000:]

    preflight = _preflight_lines(done.stdout)
    assert preflight[0] == f"preflight: 2 hosts, world size 2, master 127.0.0.1:{port}, pdsh over ssh"
    rows = {line.split()[0]: line for line in preflight if line.startswith("127.0.0.")}
    assert sorted(rows) == ["127.0.0.1", "127.0.0.2"]
    assert all(row.endswith("  ok") for row in rows.values())

    # DeepSpeed's runner: one pdsh command to both hosts, carrying the env file's exports.
    runner_cmd = next(line for line in output.splitlines() if "cmd = pdsh" in line)
    assert "-w 127.0.0.1,127.0.0.2" in runner_cmd
    assert "export GLOO_SOCKET_IFNAME=lo;" in runner_cmd and "export HF_HUB_OFFLINE=1;" in runner_cmd
    # Each host's deepspeed.launch (pdsh prefixes its lines with the host) knows its node rank and the world.
    node_ranks = {
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^(127\.0\.0\.\d): .*nnodes=2, num_local_procs=1, node_rank=(\d)", output, re.M)
    }
    assert node_ranks == {("127.0.0.1", 0), ("127.0.0.2", 1)}
    world_sizes = re.findall(r"^(127\.0\.0\.\d): .*dist_world_size=(\d+)", output, re.M)
    assert sorted(world_sizes) == [("127.0.0.1", "2"), ("127.0.0.2", "2")]

    # The Trainer on each host sees both ranks.
    batches = re.findall(
        r"^(127\.0\.0\.\d): .*global batch (\d+) rows = 1 per device x 1 accumulation x (\d+) ranks",
        output,
        re.M,
    )
    assert sorted(batches) == [("127.0.0.1", "2", "2"), ("127.0.0.2", "2", "2")]
    # Saved once, by global rank 0 on node 0, as a LoRA adapter (staged, then moved into output_dir).
    saves = re.findall(
        rf"^(127\.0\.0\.\d): .*Saving model checkpoint to {re.escape(str(output_dir))}/\.staging-final$",
        output,
        re.M,
    )
    assert saves == ["127.0.0.1"]
    assert (output_dir / "adapter_config.json").is_file()
    assert (output_dir / "adapter_model.safetensors").is_file()
    _show("preflight", preflight)
    _show("launcher", [runner_cmd[:160] + " ...", *(f"{h}: node_rank={r}" for h, r in sorted(node_ranks))])
    _show("world", [f"{h}: dist_world_size={w}" for h, w in sorted(world_sizes)])


def test_unreachable_host_fails_fast_and_launches_nothing(loopback_cluster, tiny_model, tmp_path):
    """127.0.0.3 has no sshd, and the data path exists nowhere: every host's problem is named."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n127.0.0.3 slots=1\n")
    output_dir = tmp_path / "out"
    start = time.monotonic()
    done = _launch(
        loopback_cluster,
        hostfile,
        ["--timeout", "5", "--master_port", str(_free_port())],
        _train_args(tiny_model, output_dir, data="data/not_here.json"),
        PREFLIGHT_TIMEOUT_S,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stdout + done.stderr
    failures = [line for line in done.stderr.splitlines() if line.startswith("preflight: FAIL")]
    port = loopback_cluster.port
    assert failures == [
        f"preflight: FAIL (launch node {socket.gethostname()}): missing data/not_here.json",
        "preflight: FAIL 127.0.0.1: missing data/not_here.json",
        "preflight: FAIL 127.0.0.2: missing data/not_here.json",
        f"preflight: FAIL 127.0.0.3: ssh failed: ssh: connect to host 127.0.0.3 port {port}: Connection refused",
    ]
    # The checks themselves (not the interpreter start) take seconds: the refused host does not wait.
    took = re.search(r"^preflight: failed \(checks took (\d+\.\d)s\); not launching$", done.stderr, re.M)
    assert took and float(took.group(1)) < 10
    assert "+ deepspeed" not in done.stdout and not output_dir.exists()
    _show(
        f"unreachable host: exit {done.returncode} after {elapsed:.1f}s",
        [*_preflight_lines(done.stdout), *failures, took.group(0)],
    )


def test_torchrun_recipe_on_two_nodes(tiny_model, tmp_path):
    """recipes/multinode/torchrun.sh started once per node (no ssh): both ranks train one job."""
    output_dir = tmp_path / "out"
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "NNODES": "2",
        "GPUS_PER_NODE": "1",
        "RECIPE": "recipes/demo/tiny_lora.yaml",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    overrides = ["--model_name_or_path", str(tiny_model), "--output_dir", str(output_dir)]
    overrides += ["--max_steps", "2", "--per_device_train_batch_size", "1", "--model_max_length", "256"]
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as sink:
            procs.append(
                subprocess.Popen(
                    ["bash", "recipes/multinode/torchrun.sh", *overrides],
                    cwd=REPO,
                    env={**env, "NODE_RANK": str(rank)},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [proc.wait(timeout=TRAIN_TIMEOUT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(text[-3000:] for text in texts)
    world = "global batch 2 rows = 1 per device x 1 accumulation x 2 ranks"
    assert all(world in text for text in texts)
    assert (output_dir / "adapter_model.safetensors").is_file()
    _show("torchrun recipe", [f"node {rank}: {world}" for rank in (0, 1)])
