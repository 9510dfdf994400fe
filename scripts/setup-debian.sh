#!/usr/bin/env bash
# Installs the Debian packages moeflux needs to build and test. Idempotent: does nothing (and
# needs no network) when they are all present. Run as root or with sudo available.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  nlohmann-json3-dev   # JSON (config.json, safetensors headers, manifests)
  libcli11-dev         # command-line parsing
  libpcre2-dev         # tokenizer regexes (Unicode classes, look-ahead)
  libicu-dev           # Unicode normalization
  libreadline-dev      # line editing and history in `moeflux chat`
  liburing-dev         # io_uring expert reads
  libcpp-httplib-dev   # the HTTP server of `moeflux serve` (docs/SERVER.md says why this one)
  curl                 # scripts and raw-HTTP checks of the server
  nodejs               # the OpenAI Node SDK test of the server (tests/server_sdk, npm ci)
  libgtest-dev libgmock-dev  # tests
  python3              # fixture checks in the test suite
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm: Debian packages it apart from nodejs; NodeSource's nodejs carries it (and conflicts with
# Debian's npm package), so it is installed only when the command is missing.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "[setup] installing: ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
