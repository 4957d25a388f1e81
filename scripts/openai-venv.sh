#!/usr/bin/env bash
# Creates target/openai-venv with the pinned official `openai` client
# (tests/openai/requirements.txt), from PyPI. A no-op when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/openai-venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
  echo "python3 venv support is needed for the openai client tests; installing python3-venv" >&2
  (apt-get update -qq && apt-get install -y -qq python3-venv) >&2
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/openai/requirements.txt
