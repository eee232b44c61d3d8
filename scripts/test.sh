#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine with Python 3.11+ and pip,
# then runs the linter and the tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=()
command -v redis-server >/dev/null || debian_packages+=(redis-server)
command -v prometheus >/dev/null || debian_packages+=(prometheus)
# the C extension gateway._chainhash (block hashing), built by pip install below; its test fails without it
command -v gcc >/dev/null || debian_packages+=(gcc)
[ -e /usr/include/xxhash.h ] || debian_packages+=(libxxhash-dev)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || debian_packages+=(python3-dev)
if ((${#debian_packages[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${debian_packages[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
