"""gemma4-ref: a readable NumPy/Numba reference of Google's Gemma 4, checked against transformers.

>>> import gemma4_ref
>>> model = gemma4_ref.load_model()          # the embedded default model in data/
>>> model.generate([2, 818, 5279], max_new_tokens=8, temperature=0.0)
"""

import os

import numba

# Numba's default OpenMP thread pool spins while it waits, and fights OpenBLAS's threads for
# the cores: on a busy 2-core machine a prefill ran 10-20x slower than with the simple
# `workqueue` pool. Chosen before any kernel runs; NUMBA_THREADING_LAYER still overrides it.
numba.config.THREADING_LAYER = os.environ.get("NUMBA_THREADING_LAYER", "workqueue")

from .errors import CheckpointError, ConfigError, Gemma4Error, InputError  # noqa: E402
from .model import DEFAULT_MODEL, Model, load_model  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "ConfigError",
    "Gemma4Error",
    "InputError",
    "Model",
    "load_model",
]
__version__ = "0.1.0"
