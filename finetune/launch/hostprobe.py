"""Facts about one host that a multi-node launch depends on, gathered in well under a second.

The launcher sends this file's source over ssh (`python - REQUEST_JSON`) and reads one JSON line back,
so it must import only the standard library and must not import the packages it reports on
(importing torch alone takes seconds): versions come from installed package metadata.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata

PACKAGES = ("torch", "deepspeed", "transformers")
_COMMAND_TIMEOUT_S = 5


def _run(argv: list[str], cwd: str | None = None) -> str | None:
    """stdout of a helper command, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _accelerator_count() -> int | None:
    """Visible GPUs (nvidia-smi) or NPUs (npu-smi); None on a host with neither tool."""
    listing = _run(["nvidia-smi", "-L"])
    if listing is not None:
        return sum(line.startswith("GPU ") for line in listing.splitlines())
    info = _run(["npu-smi", "info", "-l"])
    if info is not None:
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Total Count" and value.strip().isdigit():
                return int(value.strip())
    return None


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as torch's TCPStore uses it: a port in TIME_WAIT is usable, a listening one is not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _exists(cwd: str, path: str) -> bool:
    """A file or directory, or a glob (as data paths may be) matching at least one."""
    full = os.path.join(cwd, path)
    return os.path.exists(full) or (any(char in path for char in "*?[") and bool(glob.glob(full)))


def probe(cwd: str, paths: list[str], port: int | None = None) -> dict:
    """`paths` are relative to `cwd`, as the launched ranks see them; `port` is checked when given."""
    facts = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "packages": {name: _version(name) for name in PACKAGES},
        "cwd_exists": os.path.isdir(cwd),
        "commit": None,
        "paths": {},
        "port_free": None,
        "addresses": (_run(["hostname", "-I"]) or "").split(),
        "accelerators": _accelerator_count(),
    }
    if facts["cwd_exists"]:
        commit = _run(["git", "rev-parse", "HEAD"], cwd=cwd)
        facts["commit"] = commit.strip() if commit else None
        facts["paths"] = {path: _exists(cwd, path) for path in paths}
    if port is not None:
        facts["port_free"] = _port_free(port)
    return facts


def main(argv: list[str]) -> None:
    request = json.loads(argv[0])
    print(json.dumps(probe(request["cwd"], request["paths"], request.get("port"))))


if __name__ == "__main__":
    main(sys.argv[1:])
