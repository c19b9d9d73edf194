#!/usr/bin/env bash
# Run by `make test` first: the page test (tests/test_serve.py, marker browser) drives Debian's Chromium
# through chromedriver, and needs a CJK font for the Chinese replies to render. Installs what is missing
# (Debian/Ubuntu, as root); elsewhere says what to install, and that test skips.
set -euo pipefail

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
fc-list :lang=zh family 2>/dev/null | grep -q . || missing+=(fonts-wqy-zenhei)  # any Chinese font will do
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "tests/browser/install.sh: the page test needs ${missing[*]} (apt-get install ${missing[*]}); it skips without them" >&2
    exit 0
fi
echo "installing ${missing[*]} for the page test"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
