#!/usr/bin/env bash
# Install checkov (the Kubernetes-manifest and Dockerfile policy scanner) into its own virtual environment,
# $VENV/tools/checkov, so its many pinned dependencies (boto3, networkx<2.7, packaging<24, ...) never meet the
# project's. The project venv's interpreter is the base (the same Python 3.11 everywhere). Idempotent: a stamp
# records the installed version; a second run with the same CHECKOV_VERSION does nothing.
#   bash scripts/install-checkov.sh            # then: .venv/tools/checkov/bin/checkov --version
# tests/deploy/test_manifests.py runs it on the rendered overlays, KServe and both Dockerfiles (deploy/.checkov.yaml).
set -euo pipefail
VENV=${VENV:-.venv}
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
DEST="$VENV/tools/checkov"
STAMP="$DEST/.installed-$CHECKOV_VERSION"

if [ -f "$STAMP" ] && [ -x "$DEST/bin/checkov" ]; then
  exit 0
fi

if [ -x "$VENV/bin/python" ]; then
  BASE_PYTHON="$VENV/bin/python"
else
  BASE_PYTHON=${PYTHON:-python3}
fi

echo "installing checkov $CHECKOV_VERSION into $DEST" >&2
rm -rf "$DEST"
"$BASE_PYTHON" -m venv "$DEST"
"$DEST/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
"$DEST/bin/checkov" --version >/dev/null
touch "$STAMP"
echo "checkov installed: $DEST/bin/checkov" >&2
