#!/usr/bin/env bash
# System packages from Debian's repositories: libpython3.X for the pip-installed tritonserver's Python
# backend stub (it embeds libpython), and headless Chromium with its driver and a font with Arabic glyphs for
# the web UI's browser test, and openssl for the TLS test's certificate. Each is installed only when missing.
set -euo pipefail
PY=${PYTHON:-python3}
ver=$($PY -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
packages=()
ldconfig -p 2>/dev/null | grep -q "libpython${ver}.so.1.0" || packages+=("libpython${ver}")
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || packages+=(fonts-dejavu-core)
command -v openssl >/dev/null || packages+=(openssl)  # the TLS test makes its certificate
[ ${#packages[@]} -eq 0 ] && exit 0
echo "installing ${packages[*]}" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
