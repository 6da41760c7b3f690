#!/usr/bin/env bash
# Install Triton's `perf_analyzer` into $VENV/opt/perf_analyzer without touching the venv's tritonclient.
#
# The binary ships inside tritonclient's manylinux wheels; from 2.52 on it needs glibc 2.38, so we take it
# from the 2.48.0 wheel (it talks to newer servers over gRPC). It links libb64 (Debian: libb64-0d) and
# libcudart.so.12 (even on CPU), which we take from the pip package nvidia-cuda-runtime-cu12 and place
# beside the binary; captioning/bench/perf_analyzer.py puts that folder on LD_LIBRARY_PATH. Idempotent.
set -euo pipefail
VENV=${VENV:-.venv}
TRITONCLIENT_VERSION=${TRITONCLIENT_VERSION:-2.48.0}
DEST="$VENV/opt/perf_analyzer"
PIP="$VENV/bin/pip"

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! ldconfig -p 2>/dev/null | grep -q "libb64.so.0d"; then
  echo "installing libb64-0d for perf_analyzer" >&2
  $SUDO apt-get install -y -qq libb64-0d >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq libb64-0d >/dev/null
  }
fi

if [ -x "$DEST/perf_analyzer" ] && [ -e "$DEST/libcudart.so.12" ]; then
  exit 0
fi

echo "installing perf_analyzer (tritonclient $TRITONCLIENT_VERSION wheel) into $DEST" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PIP" download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
  --dest "$tmp" "tritonclient==$TRITONCLIENT_VERSION" nvidia-cuda-runtime-cu12
mkdir -p "$tmp/unpacked"
for wheel in "$tmp"/*.whl; do
  "$VENV/bin/python" -m zipfile -e "$wheel" "$tmp/unpacked"
done
binary=$(find "$tmp/unpacked" -path "*/data/bin/perf_analyzer" -type f | head -n1)
cudart=$(find "$tmp/unpacked" -name "libcudart.so.12" | head -n1)
if [ -z "$binary" ] || [ -z "$cudart" ]; then
  echo "perf_analyzer or libcudart.so.12 not found in the downloaded wheels" >&2
  exit 1
fi
mkdir -p "$DEST.tmp"
install -m 0755 "$binary" "$DEST.tmp/perf_analyzer"
install -m 0644 "$cudart" "$DEST.tmp/libcudart.so.12"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
LD_LIBRARY_PATH="$DEST" "$DEST/perf_analyzer" --version >/dev/null 2>&1 || \
  LD_LIBRARY_PATH="$DEST" "$DEST/perf_analyzer" --help >/dev/null
echo "perf_analyzer installed: $DEST/perf_analyzer" >&2
