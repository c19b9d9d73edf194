"""Preflight checks for a multi-node run, then DeepSpeed's own launcher with the same arguments.

    python -m finetune.launch --hostfile HOSTFILE [--check-only] [launcher options] -- [SCRIPT.py] ARGS...

Before 16 nodes sit idle waiting for one that cannot start, every host in the hostfile (after
--include/--exclude/--num_nodes) is reached over ssh, concurrently and with a timeout, exactly as
DeepSpeed's pdsh runner will reach it (`--ssh_port`, `PDSH_SSH_ARGS_APPEND`). Each host must run the
launch node's Python, torch, deepspeed and transformers versions at the same repo commit, see the
model / data / DeepSpeed-config paths, and node 0 must have the master port free. One table is
printed; any failure exits 1 naming the host and the problem. Without --check-only the launcher then
runs: `deepspeed --hostfile HOSTFILE ... SCRIPT ARGS` (SCRIPT defaults to finetune/sft.py).

Environment for the ranks (NCCL/HCCL interface, buffer sizes, HF offline flags) travels in DeepSpeed's
env file (finetune/launch/env_file.py); --env KEY=VALUE and --forward-env PATTERN add to it, and
--write-env-file saves it for plain `deepspeed` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from finetune.launch import hostprobe
from finetune.launch.env_file import DEFAULT_FORWARD, EnvFileError, collect_env, format_env_file
from finetune.launch.hostfile import HostfileError, read_hostfile, resolve_active_hosts

DEFAULT_SCRIPT = Path(__file__).resolve().parents[1] / "sft.py"
DEFAULT_MASTER_PORT = 29500
# Flags of finetune/sft.py (and the official fine-tune.py) naming files every rank opens.
PATH_FLAGS = ("config", "model_name_or_path", "data_path", "eval_data_path", "deepspeed")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SSH_FAILED = 255  # ssh's own exit status for connection and authentication failures
_NOT_FOUND = 127  # the remote shell's status for a missing executable


class LaunchError(ValueError):
    """A launch that cannot start; the message is one line for the user."""


# ---------------------------------------------------------------- what the ranks will open


def _flag_values(argv: list[str]) -> dict[str, list[str]]:
    """`--name v1 [v2 ...]` and `--name=v` groups; the last occurrence wins, as in argparse."""
    values: dict[str, list[str]] = {}
    current = None
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            values[name] = [value] if eq else []
            current = None if eq else name
        elif current is not None:
            values[current].append(token)
    return values


def training_paths(script: str, train_args: list[str]) -> tuple[list[str], list[str]]:
    """Paths (or globs) every host must have, relative to the launch directory, and notes on what
    is skipped. Values come from the command line, else from the `--config` recipe, as
    finetune/sft.py resolves them. A model that is not a local path here is taken as a hub id."""
    cli = _flag_values(train_args)
    config: dict = {}
    config_path = (cli.get("config") or [None])[0]
    if config_path and Path(config_path).is_file():
        try:
            loaded = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise LaunchError(f"{config_path}: not valid YAML ({str(err).splitlines()[0]})") from None
        config = loaded if isinstance(loaded, dict) else {}
    paths, notes = [script], []
    for flag in PATH_FLAGS:
        if cli.get(flag) == [] or cli.get(flag) == [""]:
            raise LaunchError(f"--{flag} is given without a value")
        values = cli[flag] if flag in cli else config.get(flag)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str) or not value or value in paths:
                continue
            if flag == "model_name_or_path" and not os.path.exists(value) and _HUB_ID.fullmatch(value):
                notes.append(f"model {value!r} is not a local path here: taken as a hub id, not checked")
                continue
            paths.append(value)
    return paths, notes


# ---------------------------------------------------------------- reaching the hosts


def ssh_command(
    host: str, remote: str, timeout: int, ssh_port: int | None, environ: Mapping[str, str]
) -> list[str]:
    """ssh as pdsh will run it for DeepSpeed, but never prompting and never waiting past `timeout`."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
    if ssh_port is not None:
        argv += ["-p", str(ssh_port)]
    argv += shlex.split(environ.get("PDSH_SSH_ARGS_APPEND", ""))
    return [*argv, host, remote]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def probe_over_ssh(
    host: str, request: dict, timeout: int, ssh_port: int | None, environ: Mapping[str, str]
) -> dict:
    """The host's facts (hostprobe.probe), or {"error": one line} when it cannot be asked."""
    remote = f"{shlex.quote(sys.executable)} - {shlex.quote(json.dumps(request))}"
    argv = ssh_command(host, remote, timeout, ssh_port, environ)
    source = Path(hostprobe.__file__).read_text(encoding="utf-8")
    # Own session, so a stalled ssh and anything it started (ProxyCommand, ...) die together.
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as err:
        return {"error": f"cannot run ssh ({err.strerror})"}
    try:
        # ConnectTimeout bounds the connection; this bounds a host that connects and then stalls.
        stdout, stderr = proc.communicate(source, timeout=2 * timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"no answer within {2 * timeout}s"}
    if proc.returncode == _SSH_FAILED:
        return {"error": f"ssh failed: {_last_line(stderr) or 'exit 255'}"}
    if proc.returncode == _NOT_FOUND:
        return {"error": f"python {sys.executable} not found there (every host needs the same venv path)"}
    try:
        return json.loads(_last_line(stdout))
    except json.JSONDecodeError:
        detail = _last_line(stderr) or f"exit {proc.returncode}"
        return {"error": f"host probe failed: {detail}"}


# ---------------------------------------------------------------- judging the answers


@dataclass
class HostCheck:
    host: str
    slots: list[int]
    facts: dict
    problems: list[str] = field(default_factory=list)


def host_problems(facts: dict, reference: dict, slots: list[int]) -> list[str]:
    """What would make this host fail or diverge from the launch node, one phrase each."""
    if "error" in facts:
        return [facts["error"]]
    problems = []
    if not facts["cwd_exists"]:
        problems.append("launch directory missing")
    if facts["python"] != reference["python"]:
        problems.append(f"python {facts['python']} (launch node {reference['python']})")
    for name, version in facts["packages"].items():
        expected = reference["packages"].get(name)
        if version is None:
            problems.append(f"{name} not installed")
        elif version != expected:
            problems.append(f"{name} {version} (launch node {expected})")
    if facts["commit"] != reference["commit"]:
        problems.append(
            f"repo at commit {_short(facts['commit'])} (launch node {_short(reference['commit'])})"
        )
    missing = [path for path, exists in facts["paths"].items() if not exists]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if facts["port_free"] is False:
        problems.append(f"master port {facts['port']} in use")
    count = facts["accelerators"]
    if count is not None and slots and max(slots) >= count:
        problems.append(f"slots {slots} but {count} accelerators visible")
    return problems


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "-"


def _slots(check: HostCheck) -> str:
    return str(len(check.slots)) if check.slots else "-"


def _cell(check: HostCheck) -> list[str]:
    facts = check.facts
    if "error" in facts:
        return [check.host, _slots(check), *["-"] * 7, "FAIL: " + facts["error"]]
    paths = facts["paths"]
    port = {None: "-", True: "free", False: "in use"}[facts["port_free"]]
    return [
        check.host,
        _slots(check),
        facts["python"],
        *(facts["packages"][name] or "missing" for name in hostprobe.PACKAGES),
        _short(facts["commit"]),
        f"{sum(paths.values())}/{len(paths)}",
        port,
        "ok" if not check.problems else "FAIL: " + "; ".join(check.problems),
    ]


def format_table(checks: list[HostCheck]) -> str:
    header = ["HOST", "SLOTS", "PYTHON", *(n.upper() for n in hostprobe.PACKAGES), "COMMIT", "PATHS", "PORT"]
    rows = [[*header, "STATUS"], *(_cell(check) for check in checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows
    )


# ---------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.launch",
        description="Check every host of a DeepSpeed hostfile, then launch training with `deepspeed`.",
        epilog="Training arguments follow '--'; a first one ending in .py replaces finetune/sft.py.",
    )
    ds = parser.add_argument_group("passed to the deepspeed launcher (same meaning)")
    ds.add_argument("-H", "--hostfile", required=True, help="lines of 'HOST slots=N'")
    ds.add_argument("-i", "--include", default="", help="e.g. 'worker-0@worker-1:0,2'")
    ds.add_argument("-e", "--exclude", default="", help="e.g. 'worker-1:0'")
    ds.add_argument("--num_nodes", type=int, default=-1, help="use the first N hosts")
    ds.add_argument("--num_gpus", type=int, default=-1, help="use slots 0..N-1 on each host")
    ds.add_argument("--master_addr", default="", help="node 0's address (default: its first `hostname -I`)")
    ds.add_argument("--master_port", type=int, default=DEFAULT_MASTER_PORT)
    ds.add_argument("--ssh_port", type=int, default=None)
    ds.add_argument("--no_ssh", action="store_true", help="run this node only (every node runs the command)")
    ds.add_argument("--node_rank", type=int, default=-1, help="this node's rank, with --no_ssh")
    own = parser.add_argument_group("preflight")
    own.add_argument("--check-only", action="store_true", help="run the checks, print the table, exit")
    own.add_argument("--timeout", type=int, default=10, help="seconds to connect to a host (default: 10)")
    own.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set on every rank")
    own.add_argument(
        "--forward-env",
        action="append",
        default=[],
        metavar="PATTERN",
        help=f"forward these variables from here (glob; always: {' '.join(DEFAULT_FORWARD)})",
    )
    own.add_argument("--write-env-file", metavar="PATH", help="also save the merged env file here")
    return parser


def split_argv(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(launcher options, training script, training arguments)."""
    if "--" not in argv:
        return argv, str(DEFAULT_SCRIPT), []
    cut = argv.index("--")
    train = argv[cut + 1 :]
    if train and train[0].endswith(".py"):
        return argv[:cut], train[0], train[1:]
    return argv[:cut], str(DEFAULT_SCRIPT), train


def validate_args(args: argparse.Namespace, hosts: dict[str, list[int]]) -> None:
    if not 0 < args.master_port < 65536:
        raise LaunchError(f"--master_port {args.master_port}: not a TCP port")
    if args.timeout < 1:
        raise LaunchError("--timeout must be at least 1 second")
    if args.no_ssh:
        if not 0 <= args.node_rank < len(hosts):
            raise LaunchError(f"--no_ssh needs --node_rank in 0..{len(hosts) - 1} ({len(hosts)} hosts)")
        if not args.master_addr:
            raise LaunchError("--no_ssh needs --master_addr (node 0's address, the same on every node)")


def deepspeed_command(
    args: argparse.Namespace, master_addr: str, script: str, train_args: list[str]
) -> list[str]:
    """The `deepspeed` invocation, through this interpreter so every host runs the same venv.
    Preflight already reached every host with the ssh options pdsh uses, so DeepSpeed's own
    check (plain `ssh`, which ignores PDSH_SSH_ARGS_APPEND) is skipped."""
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", f"--hostfile={args.hostfile}"]
    for flag in ("include", "exclude"):
        if getattr(args, flag):
            cmd.append(f"--{flag}={getattr(args, flag)}")
    for flag in ("num_nodes", "num_gpus"):
        if getattr(args, flag) > 0:
            cmd.append(f"--{flag}={getattr(args, flag)}")
    cmd += [f"--master_addr={master_addr}", f"--master_port={args.master_port}"]
    if args.ssh_port is not None:
        cmd.append(f"--ssh_port={args.ssh_port}")
    cmd += ["--no_ssh", f"--node_rank={args.node_rank}"] if args.no_ssh else ["--no_ssh_check"]
    return [*cmd, script, *train_args]


def run_checks(
    args: argparse.Namespace, hosts: dict[str, list[int]], paths: list[str], environ: Mapping[str, str]
) -> list[HostCheck]:
    """The launch node (the reference) first, then every host, probed concurrently over ssh.
    With --no_ssh only this node can be seen: it is hostfile entry `node_rank`, and node 0 owns the port."""
    cwd = os.getcwd()
    names = list(hosts)
    if args.no_ssh:
        port = args.master_port if args.node_rank == 0 else None
        facts = hostprobe.probe(cwd, paths, port) | {"port": port}
        this = HostCheck(f"{names[args.node_rank]} (this node)", hosts[names[args.node_rank]], facts)
        this.problems = host_problems(facts, facts, this.slots)
        return [this]
    reference = hostprobe.probe(cwd, paths) | {"port": None}
    launch_node = HostCheck(f"(launch node {reference['hostname']})", [], reference)
    launch_node.problems = host_problems(reference, reference, [])

    def ask(index: int) -> HostCheck:
        port = args.master_port if index == 0 else None
        request = {"cwd": cwd, "paths": paths, "port": port}
        facts = probe_over_ssh(names[index], request, args.timeout, args.ssh_port, environ) | {"port": port}
        check = HostCheck(names[index], hosts[names[index]], facts)
        check.problems = host_problems(facts, reference, check.slots)
        return check

    with ThreadPoolExecutor(max_workers=min(32, len(names))) as pool:
        return [launch_node, *pool.map(ask, range(len(names)))]


def master_address(args: argparse.Namespace, checks: list[HostCheck]) -> str:
    """--master_addr, else DeepSpeed's own default: the first address `hostname -I` prints on node 0."""
    if args.master_addr:
        return args.master_addr
    node0 = checks[1]
    addresses = node0.facts.get("addresses") or []
    if not addresses and "error" not in node0.facts:
        node0.problems.append("`hostname -I` printed no address: pass --master_addr")
    return addresses[0] if addresses else "?"


def training_ranks(runner_pid: int) -> list:
    """The training processes DeepSpeed's local launcher (`deepspeed.launcher.launch`) started under the
    runner: the ranks of this node. Empty when the ranks run on other hosts (pdsh) or have not started."""
    import psutil

    ranks = []
    try:
        descendants = psutil.Process(runner_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for process in descendants:
        try:
            parent = process.parent()
            if parent is not None and "deepspeed.launcher.launch" in " ".join(parent.cmdline()):
                ranks.append(process)
        except psutil.Error:
            continue
    return ranks


def run_launcher(cmd: list[str], env: dict[str, str]) -> int:
    """Run deepspeed in its own session and wait for it; when it ends, nothing it started is left running.

    SIGTERM or SIGINT (Ctrl-C) sent here goes to the training ranks themselves: each finishes its step, the
    ranks save a checkpoint together and exit 75, which DeepSpeed's launcher passes back (signalling the
    launcher instead would make it give the ranks 30 s, then kill them, and exit 1). Ranks on other hosts
    (pdsh) are reached through the runner, which stops them itself. A second signal kills everything at once
    (exit 130)."""
    import psutil

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        if len(received) > 1:
            _kill_group(proc.pid)
            return
        for target in training_ranks(proc.pid) or [proc]:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                target.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _kill_group(proc.pid)  # whatever outlived the runner: no orphans keep training
    return 130 if len(received) > 1 else status


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def print_report(
    args: argparse.Namespace,
    hosts: dict[str, list[int]],
    checks: list[HostCheck],
    master: str,
    notes: list[str],
    env_entries: dict[str, str],
) -> None:
    world = sum(len(slots) for slots in hosts.values())
    mode = f"--no_ssh, node rank {args.node_rank}" if args.no_ssh else "pdsh over ssh"
    count = f"{len(hosts)} host" + ("s" if len(hosts) > 1 else "")
    print(f"preflight: {count}, world size {world}, master {master}:{args.master_port}, {mode}")
    print(format_table(checks))
    for note in notes:
        print(f"preflight: note: {note}")
    print(f"preflight: env for every rank: {' '.join(env_entries) or '(none)'}")


def launch(cmd: list[str], env_entries: dict[str, str], environ: Mapping[str, str], no_ssh: bool) -> int:
    print("+ deepspeed " + shlex.join(cmd[3:]), flush=True)
    with tempfile.TemporaryDirectory(prefix="finetune-launch-") as tmp:
        env_file = Path(tmp) / "deepspeed_env"
        env_file.write_text(format_env_file(env_entries), encoding="utf-8")
        # DeepSpeed joins DS_ENV_FILE onto ~ and ./; an absolute path makes both name this file.
        env = {**environ, "DS_ENV_FILE": str(env_file)}
        if no_ssh:
            env.update(env_entries)  # a local launch inherits the environment instead of reading the file
        return run_launcher(cmd, env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own_argv, script, train_args = split_argv(argv)
    args = build_parser().parse_args(own_argv)
    environ = dict(os.environ)
    try:
        hosts = resolve_active_hosts(
            read_hostfile(args.hostfile), args.include, args.exclude, args.num_nodes, args.num_gpus
        )
        validate_args(args, hosts)
        paths, notes = training_paths(script, train_args)
        env_entries = collect_env(environ, args.forward_env, args.env)
    except (HostfileError, EnvFileError, LaunchError) as err:
        print(f"preflight: error: {err}", file=sys.stderr)
        return 2

    start = time.monotonic()
    checks = run_checks(args, hosts, paths, environ)
    master = master_address(args, checks)
    elapsed = time.monotonic() - start
    print_report(args, hosts, checks, master, notes, env_entries)
    failures = [(check.host, problem) for check in checks for problem in check.problems]
    for host, problem in failures:
        print(f"preflight: FAIL {host}: {problem}", file=sys.stderr)
    if failures:
        print(f"preflight: failed (checks took {elapsed:.1f}s); not launching", file=sys.stderr)
        return 1
    if args.write_env_file:
        Path(args.write_env_file).write_text(format_env_file(env_entries), encoding="utf-8")
        print(f"preflight: wrote {args.write_env_file}")
    print(
        f"preflight: all checks passed in {elapsed:.1f}s; "
        + ("--check-only, not launching" if args.check_only else "launching")
    )
    if args.check_only:
        return 0
    return launch(deepspeed_command(args, master, script, train_args), env_entries, environ, args.no_ssh)


if __name__ == "__main__":
    sys.exit(main())
