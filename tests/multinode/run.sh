#!/usr/bin/env bash
# `make test-multinode`: preflight + the real `deepspeed --hostfile` launcher (pdsh over ssh) across two
# loopback hosts, 127.0.0.1 and 127.0.0.2, each with one CPU rank (gloo). The sshd, its keys and configs
# live in a pytest temp dir (tests/multinode/conftest.py); ~/.ssh and /etc/ssh are not touched.
# Installs openssh-server and pdsh when missing (Debian/Ubuntu, as root).
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
[[ -x /usr/sbin/sshd ]] || command -v sshd >/dev/null || missing+=(openssh-server)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v pdsh >/dev/null || missing+=(pdsh)
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "test-multinode needs ${missing[*]}: install them (apt-get install ${missing[*]}) and rerun" >&2
        exit 1
    fi
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# -s shows the preflight table and each host's node rank / world size; the training logs stay captured.
exec .venv/bin/python -m pytest -m multinode -s -q -p no:cacheprovider tests/multinode "$@"
