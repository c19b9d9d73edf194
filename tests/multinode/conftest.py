"""Two ssh-reachable "hosts" on this machine: one sshd listening on 127.0.0.1 and 127.0.0.2.

Everything lives in a temp dir (host key, client key, authorized_keys, known_hosts, sshd_config,
ssh client config) and reaches DeepSpeed's pdsh runner through PDSH_SSH_ARGS_APPEND="-F <config>",
so ~/.ssh and /etc/ssh stay untouched. The one thing outside the temp dir is sshd's privilege
separation directory (/run/sshd), which its service would create and it refuses to start without.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOSTS = ("127.0.0.1", "127.0.0.2")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
_START_TIMEOUT_S = 15


@dataclass(frozen=True)
class LoopbackCluster:
    port: int
    ssh_config: Path
    sshd_log: Path

    def env(self) -> dict[str, str]:
        """The environment for `finetune.launch` / `deepspeed`: pdsh's ssh uses our client config."""
        return {**os.environ, "PDSH_SSH_ARGS_APPEND": f"-F {self.ssh_config}"}


def _free_port() -> int:
    """A port free on every loopback host (sshd binds each address separately)."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in HOSTS:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on all loopback hosts")


def _listening(port: int) -> bool:
    for host in HOSTS:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
    return True


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="session")
def loopback_cluster(tmp_path_factory) -> Iterator[LoopbackCluster]:
    missing = [tool for tool in ("ssh", "ssh-keygen", "pdsh") if shutil.which(tool) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append("sshd")
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run `make test-multinode` (installs openssh-server, pdsh)"
        )

    root = tmp_path_factory.mktemp("loopback-sshd")
    port = _free_port()
    host_key = _keygen(root / "host_key")
    (root / "authorized_keys").write_text(_keygen(root / "client_key") + "\n")
    (root / "known_hosts").write_text(",".join(f"[{h}]:{port}" for h in HOSTS) + f" {host_key}\n")
    (root / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                *(f"ListenAddress {host}" for host in HOSTS),
                f"HostKey {root / 'host_key'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                f"PidFile {root / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The temp dir's owner and modes are not ~/.ssh's; the keys are throwaway.
                "StrictModes no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    ssh_config = root / "ssh_config"
    ssh_config.write_text(
        "\n".join(
            [
                # 127.0.0.3 has no sshd: the "unreachable host" of the failure test.
                "Host 127.0.0.1 127.0.0.2 127.0.0.3",
                f"  Port {port}",
                f"  User {getpass.getuser()}",
                f"  IdentityFile {root / 'client_key'}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {root / 'known_hosts'}",
                "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes",
                "  BatchMode yes",
                "  LogLevel ERROR",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    log = root / "sshd.log"
    with open(log, "w") as log_file:
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=log_file)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _listening(port):
        if sshd.poll() is not None or time.monotonic() > deadline:
            sshd.kill()
            pytest.fail(f"sshd did not start on {', '.join(HOSTS)} port {port}: {log.read_text().strip()}")
        time.sleep(0.1)
    try:
        yield LoopbackCluster(port=port, ssh_config=ssh_config, sshd_log=log)
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
