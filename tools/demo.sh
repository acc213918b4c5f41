#!/usr/bin/env bash
# The main job on a fresh machine: make a virtual environment with the runtime dependencies,
# install gemma4-ref into it, and generate text with the embedded model in data/.
# Extra arguments go to `gemma4-ref generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
if [ "$#" -eq 0 ]; then
    set -- --prompt "ROMEO. But soft, what light" --max-new-tokens 50 --seed 0
fi
exec .venv/bin/gemma4-ref generate "$@"
