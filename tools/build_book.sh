#!/usr/bin/env bash
# Build the book (book/ + the executed notebooks in notebooks/) into book/_build/html, offline.
# Jupyter Book 1.0.4 renders the outputs committed in the notebooks; nothing is executed.
# Needs the `book` extra: pip install -e ".[book]". The Python to use is $PYTHON, else the
# first of .venv-test/bin/python, .venv/bin/python and python3 that has jupyter_book.
# Extra arguments go to `jupyter-book build` (e.g. --all to rebuild every page).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    for candidate in .venv-test/bin/python .venv/bin/python python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "import jupyter_book" 2>/dev/null
        then
            PYTHON=$candidate
            break
        fi
    done
fi
if [[ -z "${PYTHON:-}" ]] || ! "$PYTHON" -c "import jupyter_book" 2>/dev/null; then
    echo "build_book.sh: jupyter-book is not installed; run: pip install -e '.[book]'" >&2
    exit 2
fi
# The chapters live in notebooks/; Sphinx reads them through this symlink inside its source dir.
[[ -L book/notebooks ]] || ln -sfn ../notebooks book/notebooks
exec "$PYTHON" -c "import sys; from jupyter_book.cli.main import main; sys.exit(main())" \
    build book --builder html --keep-going "$@"
