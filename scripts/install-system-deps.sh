#!/usr/bin/env bash
# System libraries the pip-installed tritonserver needs: its Python backend stub embeds libpython3.X.
set -euo pipefail
PY=${PYTHON:-python3}
ver=$($PY -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
if ldconfig -p 2>/dev/null | grep -q "libpython${ver}.so.1.0"; then
  exit 0
fi
echo "installing libpython${ver} for the Triton Python backend stub" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "libpython${ver}" >/dev/null
