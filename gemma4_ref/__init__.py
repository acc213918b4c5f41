"""gemma4-ref: a readable NumPy/Numba reference of Google's Gemma 4, checked against transformers.

>>> import gemma4_ref
>>> model = gemma4_ref.load_model()          # the embedded default model in data/
>>> model.generate([2, 818, 5279], max_new_tokens=8, temperature=0.0)
"""

from .errors import CheckpointError, ConfigError, Gemma4Error, InputError
from .model import DEFAULT_MODEL, Model, load_model

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
