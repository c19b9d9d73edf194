"""Preflight for multi-node launches: hostfile parsing, host filters (pinned to DeepSpeed's own),
the env file, the ssh probe (through a fake `ssh` on PATH), judging, the table and the CLI."""

from __future__ import annotations

import os
import re
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

from finetune.launch.env_file import (
    EnvFileError,
    format_env_file,
    forwarded_env,
    merge_env,
    parse_env_file,
    parse_env_pairs,
)
from finetune.launch.hostfile import HostfileError, parse_hostfile, read_hostfile, resolve_active_hosts
from finetune.launch.preflight import (
    HostCheck,
    LaunchError,
    build_parser,
    deepspeed_command,
    format_table,
    host_problems,
    hostprobe,
    main,
    master_address,
    probe_over_ssh,
    split_argv,
    ssh_command,
    training_paths,
    validate_args,
)

# A stand-in for ssh: the host is the argument before the remote command. "down" refuses,
# "slow" never answers, "nopython" lacks the interpreter; any other host runs the command here.
FAKE_SSH = """#!/bin/sh
prev=; last=
for arg; do prev=$last; last=$arg; done
case "$prev" in
  down) echo "ssh: connect to host down port 22: Connection refused" >&2; exit 255 ;;
  slow) sleep 60; exit 0 ;;
  nopython) echo "sh: 1: /no/python: not found" >&2; exit 127 ;;
esac
exec sh -c "$last"
"""


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return ssh


# ---------------------------------------------------------------- hostfile


def test_parse_hostfile_keeps_order_and_skips_comments():
    text = "# two nodes\n\nworker-1 slots=8\n  worker-0   slots=4 max_slots=4\n"
    hosts = parse_hostfile(text, "hf")
    assert list(hosts.items()) == [("worker-1", 8), ("worker-0", 4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a slots=1\nb\n", "hf line 2: expected 'HOST slots=N', got 'b'"),
        ("a slots=1\n\nb gpus=2\n", "hf line 3: expected 'HOST slots=N', got 'b gpus=2'"),
        ("a slots=0\n", "hf line 1: slots must be a positive integer, got 'slots=0'"),
        ("a slots=4x\n", "hf line 1: slots must be a positive integer, got 'slots=4x'"),
        ("a slots=2 # gpu node\n", "hf line 1: unexpected field '#' after 'slots=2'"),
        ("a slots=1\n# c\nb slots=1\na slots=2\n", "hf line 4: host 'a' is already listed on line 1"),
        ("# nothing\n\n", "hf: no hosts"),
    ],
)
def test_parse_hostfile_errors_name_the_line(text, message):
    with pytest.raises(HostfileError) as err:
        parse_hostfile(text, "hf")
    assert str(err.value).startswith(message)


def test_read_hostfile_missing_is_an_error_not_a_local_fallback(tmp_path):
    with pytest.raises(HostfileError, match="hostfile .*nope not found"):
        read_hostfile(tmp_path / "nope")


FILTER_CASES = [
    {},
    {"include": "a"},
    {"include": "b:0,2"},
    {"include": "c@a:1"},
    {"include": "a@b:1@b:3"},
    {"exclude": "b"},
    {"exclude": "b:0,3"},
    {"exclude": "a:0,1@c"},
    {"num_nodes": 2},
    {"num_gpus": 1},
    {"num_nodes": 1, "num_gpus": 3},
]


@pytest.mark.parametrize("case", FILTER_CASES, ids=lambda c: repr(c))
def test_host_filters_match_deepspeed(case):
    from deepspeed.launcher import runner

    pool = {"a": 2, "b": 4, "c": 1}
    expected = runner.parse_inclusion_exclusion(pool, case.get("include", ""), case.get("exclude", ""))
    expected = runner.apply_num_nodes_and_gpus(expected, case.get("num_nodes", -1), case.get("num_gpus", -1))
    active = resolve_active_hosts(pool, **case)
    assert list(active.items()) == list(expected.items())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ({"include": "z"}, "--include 'z': host 'z' is not in the hostfile"),
        ({"include": "b:7"}, "--include 'b:7': host 'b' has slots 0..3, not '7'"),
        ({"exclude": "a:x"}, "--exclude 'a:x': host 'a' has slots 0..1, not 'x'"),
        ({"include": "a", "exclude": "b"}, "--include and --exclude are mutually exclusive"),
        ({"include": "a", "num_nodes": 1}, "--num_nodes/--num_gpus cannot be combined"),
        ({"exclude": "a@b@c"}, "no hosts left"),
    ],
)
def test_host_filter_errors(case, message):
    with pytest.raises(HostfileError, match=message):
        resolve_active_hosts({"a": 2, "b": 4, "c": 1}, **case)


# ---------------------------------------------------------------- training paths


def test_training_paths_from_cli_and_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("models/tiny").mkdir(parents=True)
    Path("run.yaml").write_text(
        "model_name_or_path: models/tiny\ndata_path: [data/a.json]\neval_data_path: data/dev.json\n"
    )
    args = ["--config", "run.yaml", "--data_path", "data/b.json", "data/c/*.jsonl", "--deepspeed=ds.json"]
    paths, notes = training_paths("train.py", [*args, "--use_lora", "True"])
    assert paths == [
        "train.py",
        "run.yaml",
        "models/tiny",
        "data/b.json",
        "data/c/*.jsonl",
        "data/dev.json",
        "ds.json",
    ]
    assert notes == []


def test_probe_checks_globs_relative_to_the_launch_directory(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "0.jsonl").write_text("")
    paths = ["shards", "shards/*.jsonl", "shards/*.parquet", str(tmp_path / "shards" / "0.jsonl")]
    found = hostprobe.probe(str(tmp_path), paths)["paths"]
    assert list(found.values()) == [True, True, False, True]


def test_training_paths_skip_hub_ids_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths, notes = training_paths("train.py", ["--model_name_or_path", "baichuan-inc/Baichuan2-7B-Base"])
    assert paths == ["train.py"]
    assert notes == [
        "model 'baichuan-inc/Baichuan2-7B-Base' is not a local path here: taken as a hub id, not checked"
    ]


@pytest.mark.parametrize("args", [["--model_name_or_path", "--data_path", "d.json"], ["--data_path="]])
def test_training_paths_flag_without_value(args):
    with pytest.raises(LaunchError, match=r"^--\w+ is given without a value$"):
        training_paths("train.py", args)


def test_training_paths_bad_config_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("a: [1,\n")
    with pytest.raises(LaunchError, match=r"^bad.yaml: not valid YAML"):
        training_paths("train.py", ["--config", "bad.yaml"])


# ---------------------------------------------------------------- env file


def test_env_layers_merge_in_deepspeed_order_and_round_trip():
    environ = {"NCCL_SOCKET_IFNAME": "eth0", "HF_HUB_OFFLINE": "1", "HOME": "/root", "HCCL_BUFFSIZE": "120"}
    forwarded = forwarded_env(environ, ["NCCL_*", "HF_*", "HCCL_*"])
    assert forwarded == {"HCCL_BUFFSIZE": "120", "HF_HUB_OFFLINE": "1", "NCCL_SOCKET_IFNAME": "eth0"}
    from_file = parse_env_file("NCCL_SOCKET_IFNAME=ib0\nPATH=/opt/venv/bin:$PATH\n", "~/.deepspeed_env")
    merged = merge_env(forwarded, from_file, parse_env_pairs(["HCCL_BUFFSIZE=200"]))
    assert merged == {
        "HCCL_BUFFSIZE": "200",
        "HF_HUB_OFFLINE": "1",
        "NCCL_SOCKET_IFNAME": "ib0",
        "PATH": "/opt/venv/bin:$PATH",
    }
    assert parse_env_file(format_env_file(merged), "written") == merged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=1\n\nB=2\n", "line 2: expected KEY=VALUE, got ''"),
        ("# note\nA=1\n", "line 1: expected KEY=VALUE, got '# note'"),
        ("A=1\n1BAD=2\n", "line 2: expected KEY=VALUE"),
    ],
)
def test_env_file_errors_name_the_line(text, message):
    with pytest.raises(EnvFileError, match=f"^.deepspeed_env {message}"):
        parse_env_file(text, ".deepspeed_env")


def test_env_values_that_cannot_survive_the_remote_shell_are_refused():
    with pytest.raises(EnvFileError, match="environment variable X:"):
        merge_env({"X": 'say "hi"'})
    with pytest.raises(EnvFileError, match="--env 'NOEQUALS': expected KEY=VALUE"):
        parse_env_pairs(["NOEQUALS"])


# ---------------------------------------------------------------- ssh and the probe


def test_ssh_command_matches_pdsh_options_and_never_prompts():
    argv = ssh_command("node1", "true", 7, 2222, {"PDSH_SSH_ARGS_APPEND": "-F /tmp/cfg -o LogLevel=ERROR"})
    assert argv == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=7",
        "-p",
        "2222",
        "-F",
        "/tmp/cfg",
        "-o",
        "LogLevel=ERROR",
        "node1",
        "true",
    ]


def test_probe_over_ssh_returns_the_hosts_facts(fake_ssh, tmp_path):
    (tmp_path / "data.json").write_text("[]")
    request = {"cwd": str(tmp_path), "paths": ["data.json", "missing.json"], "port": None}
    facts = probe_over_ssh("node1", request, 5, None, os.environ)
    local = hostprobe.probe(str(tmp_path), ["data.json", "missing.json"])
    assert facts["paths"] == {"data.json": True, "missing.json": False}
    assert facts["packages"] == local["packages"]
    assert facts["python"] == local["python"]
    assert facts["executable"] == sys.executable


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("down", "ssh failed: ssh: connect to host down port 22: Connection refused"),
        ("nopython", f"python {sys.executable} not found there"),
        ("slow", "no answer within 2s"),
    ],
)
def test_probe_over_ssh_fails_fast_with_one_line(fake_ssh, tmp_path, host, error):
    start = time.monotonic()
    facts = probe_over_ssh(host, {"cwd": str(tmp_path), "paths": []}, 1, None, os.environ)
    assert time.monotonic() - start < 5
    assert facts["error"].startswith(error)


def test_probe_reports_a_port_in_use():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert hostprobe.probe(os.getcwd(), [], port)["port_free"] is False
    assert hostprobe.probe(os.getcwd(), [], free_port())["port_free"] is True


# ---------------------------------------------------------------- judging and the table

REFERENCE = {
    "hostname": "login",
    "python": "3.11.7",
    "packages": {"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0"},
    "cwd_exists": True,
    "commit": "c5d36bc4b8aa",
    "paths": {"train.py": True, "data.json": True},
    "port_free": None,
    "port": None,
    "addresses": ["10.0.0.1"],
    "accelerators": 8,
}


def _facts(**changes):
    return {**REFERENCE, **changes}


@pytest.mark.parametrize(
    ("facts", "problems"),
    [
        (_facts(), []),
        (_facts(python="3.10.12"), ["python 3.10.12 (launch node 3.11.7)"]),
        (
            _facts(packages={"torch": "2.1.0", "deepspeed": None, "transformers": "5.24.0"}),
            ["torch 2.1.0 (launch node 2.13.0)", "deepspeed not installed"],
        ),
        (_facts(commit="0123456789abcdef"), ["repo at commit 0123456789 (launch node c5d36bc4b8)"]),
        (_facts(paths={"train.py": True, "data.json": False}), ["missing data.json"]),
        (_facts(port_free=False, port=29500), ["master port 29500 in use"]),
        (_facts(accelerators=4), ["slots [0, 1, 2, 3, 4, 5, 6, 7] but 4 accelerators visible"]),
        (
            _facts(cwd_exists=False, commit=None, paths={}),
            ["launch directory missing", "repo at commit - (launch node c5d36bc4b8)"],
        ),
        ({"error": "ssh failed: timeout"}, ["ssh failed: timeout"]),
    ],
)
def test_host_problems(facts, problems):
    assert host_problems(facts, REFERENCE, list(range(8))) == problems


def test_table_has_one_aligned_row_per_host():
    checks = [
        HostCheck("node-0", [0, 1], _facts(port_free=True)),
        HostCheck(
            "node-1", [0, 1], {"error": "ssh failed: Connection refused"}, ["ssh failed: Connection refused"]
        ),
    ]
    lines = format_table(checks).splitlines()
    assert len(lines) == 3
    assert lines[0].split() == [
        "HOST",
        "SLOTS",
        "PYTHON",
        "TORCH",
        "DEEPSPEED",
        "TRANSFORMERS",
        "COMMIT",
        "PATHS",
        "PORT",
        "STATUS",
    ]
    assert lines[1].split() == [
        "node-0",
        "2",
        "3.11.7",
        "2.13.0",
        "0.19.8",
        "5.24.0",
        "c5d36bc4b8",
        "2/2",
        "free",
        "ok",
    ]
    assert lines[2].startswith("node-1") and lines[2].endswith("FAIL: ssh failed: Connection refused")
    assert lines[0].index("STATUS") == lines[1].index("ok") == lines[2].index("FAIL")


@pytest.mark.parametrize(
    ("master_addr", "addresses", "expected", "problems"),
    [
        ("n0", ["10.0.0.1"], "n0", []),
        ("", ["10.0.0.1", "fd00::1"], "10.0.0.1", []),
        ("", [], "?", ["`hostname -I` printed no address: pass --master_addr"]),
    ],
)
def test_master_address_defaults_to_node0_first_address(master_addr, addresses, expected, problems):
    args = build_parser().parse_args(["-H", "hf", "--master_addr", master_addr])
    node0 = HostCheck("node-0", [0], _facts(addresses=addresses))
    assert master_address(args, [HostCheck("(launch node)", [0], REFERENCE), node0]) == expected
    assert node0.problems == problems


# ---------------------------------------------------------------- command line


def test_split_argv_defaults_to_sft_and_accepts_a_script():
    own, script, train = split_argv(["--hostfile", "h", "--", "--data_path", "d.json"])
    assert (own, Path(script).name, train) == (["--hostfile", "h"], "sft.py", ["--data_path", "d.json"])
    assert split_argv(["-H", "h", "--", "train.py", "--x", "1"]) == (["-H", "h"], "train.py", ["--x", "1"])


def test_deepspeed_command_is_what_deepspeed_parses():
    from deepspeed.launcher import runner

    args = build_parser().parse_args(["--hostfile", "hf", "--include", "a@b", "--master_port", "2345"])
    cmd = deepspeed_command(args, "10.0.0.1", "finetune/sft.py", ["--use_lora", "True"])
    assert cmd[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    parsed = runner.parse_args(cmd[3:])
    assert (parsed.hostfile, parsed.include, parsed.master_addr, parsed.master_port) == (
        "hf",
        "a@b",
        "10.0.0.1",
        2345,
    )
    assert parsed.no_ssh_check and not parsed.no_ssh
    assert (parsed.user_script, parsed.user_args) == ("finetune/sft.py", ["--use_lora", "True"])

    args = build_parser().parse_args(["-H", "hf", "--no_ssh", "--node_rank", "1", "--master_addr", "n0"])
    parsed = runner.parse_args(deepspeed_command(args, "n0", "s.py", [])[3:])
    assert parsed.no_ssh and parsed.node_rank == 1 and not parsed.no_ssh_check


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--master_port", "70000"], "--master_port 70000: not a TCP port"),
        (["--no_ssh", "--master_addr", "n0"], r"--no_ssh needs --node_rank in 0..1 \(2 hosts\)"),
        (["--no_ssh", "--node_rank", "1"], "--no_ssh needs --master_addr"),
    ],
)
def test_validate_args(argv, message):
    args = build_parser().parse_args(["-H", "hf", *argv])
    with pytest.raises(LaunchError, match=message):
        validate_args(args, {"a": [0], "b": [0]})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in [*os.environ]:
        if name.startswith(("HF_", "NCCL_", "HCCL_", "GLOO_", "TRANSFORMERS_")) or name in (
            "DS_ENV_FILE",
            "TOKENIZERS_PARALLELISM",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    Path("train.py").write_text("")
    Path("data.json").write_text("[]")
    return tmp_path


def test_main_check_only_passes_on_reachable_hosts(fake_ssh, workdir, capsys):
    Path("hostfile").write_text("node-a slots=2\nnode-b slots=1\n")
    port = free_port()
    argv = ["-H", "hostfile", "--check-only", "--master_addr", "10.1.2.3", "--master_port", str(port)]
    argv += ["--env", "NCCL_IB_DISABLE=1"]
    argv += ["--write-env-file", "written_env", "--", "train.py", "--data_path", "data.json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"preflight: 2 hosts, world size 3, master 10.1.2.3:{port}, pdsh over ssh" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("node-")}
    assert rows["node-a"][1:2] + rows["node-a"][-2:] == ["2", "free", "ok"]
    assert rows["node-b"][1:2] + rows["node-b"][-2:] == ["1", "-", "ok"]
    launch_node = next(line.split() for line in out.splitlines() if line.startswith("(launch node "))
    assert launch_node[3] == "-" and launch_node[-1] == "ok"
    assert re.search(r"^preflight: all checks passed in \d+\.\ds; --check-only, not launching$", out, re.M)
    assert parse_env_file(Path("written_env").read_text(), "written_env") == {"NCCL_IB_DISABLE": "1"}


def test_main_names_every_failing_host_and_does_not_launch(fake_ssh, workdir, capsys):
    Path("hostfile").write_text("node-a slots=1\ndown slots=1\nslow slots=1\n")
    start = time.monotonic()
    code = main(
        [
            "-H",
            "hostfile",
            "--timeout",
            "1",
            "--master_port",
            str(free_port()),
            "--",
            "train.py",
            "--data_path",
            "gone.json",
        ]
    )
    assert time.monotonic() - start < 10
    assert code == 1
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if line.startswith("preflight: FAIL")]
    assert (
        "preflight: FAIL down: ssh failed: ssh: connect to host down port 22: Connection refused" in failures
    )
    assert "preflight: FAIL slow: no answer within 2s" in failures
    assert "preflight: FAIL node-a: missing gone.json" in failures
    assert "launching" not in captured.out


@pytest.mark.parametrize(
    ("hostfile", "extra", "message"),
    [
        (
            "a slots=1\nb slots=two\n",
            [],
            "preflight: error: hostfile line 2: slots must be a positive integer",
        ),
        (
            "a slots=1\n",
            ["--include", "b"],
            "preflight: error: --include 'b': host 'b' is not in the hostfile",
        ),
    ],
)
def test_main_bad_input_is_one_line(workdir, capsys, hostfile, extra, message):
    Path("hostfile").write_text(hostfile)
    assert main(["-H", "hostfile", *extra, "--check-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_main_reads_the_deepspeed_env_files(fake_ssh, workdir, capsys):
    (workdir / "home").mkdir()
    (workdir / "home" / ".deepspeed_env").write_text("NCCL_SOCKET_IFNAME=eth0\nHCCL_BUFFSIZE=120\n")
    Path(".deepspeed_env").write_text("NCCL_SOCKET_IFNAME=ib0\n\n")
    Path("hostfile").write_text("node-a slots=1\n")
    assert main(["-H", "hostfile", "--check-only"]) == 2
    assert "/.deepspeed_env line 2: expected KEY=VALUE" in capsys.readouterr().err
    Path(".deepspeed_env").write_text("NCCL_SOCKET_IFNAME=ib0\n")
    argv = [
        "-H",
        "hostfile",
        "--check-only",
        "--master_port",
        str(free_port()),
        "--write-env-file",
        "out_env",
        "--",
        "train.py",
    ]
    assert main(argv) == 0
    written = parse_env_file(Path("out_env").read_text(), "out_env")
    assert list(written.items()) == [("NCCL_SOCKET_IFNAME", "ib0"), ("HCCL_BUFFSIZE", "120")]


def test_main_no_ssh_checks_only_this_node(workdir, capsys):
    Path("hostfile").write_text("node-a slots=1\nnode-b slots=1\n")
    port = free_port()
    argv = [
        "-H",
        "hostfile",
        "--no_ssh",
        "--node_rank",
        "0",
        "--master_addr",
        "node-a",
        "--master_port",
        str(port),
    ]
    assert main([*argv, "--check-only", "--", "train.py", "--data_path", "data.json"]) == 0
    out = capsys.readouterr().out
    assert f"preflight: 2 hosts, world size 2, master node-a:{port}, --no_ssh, node rank 0" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("node-")]
    assert [row[:3] + row[-2:] for row in rows] == [["node-a", "(this", "node)", "free", "ok"]]
