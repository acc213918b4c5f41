#!/usr/bin/env bash
# The whole test suite on a fresh machine: make a virtual environment with the test, notebook and
# book extras (torch 2.13.0 CPU, transformers >= 5.24, compressed-tensors, pytest, nbval, ruff,
# Jupyter Book), lint and format-check the code and notebooks, then run every test: the live
# parity tests against transformers, every notebook (nbval) and the book in headless Chromium.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-test
.venv-test/bin/pip install --quiet --upgrade pip
.venv-test/bin/pip install --quiet -e ".[test,notebooks,book]"
.venv-test/bin/ruff check .
.venv-test/bin/ruff format --check .
exec .venv-test/bin/python -m pytest "$@"
