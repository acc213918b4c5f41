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

from .audio import AudioTower  # noqa: E402
from .audio_features import AudioFeatures, log_mel_features, read_wav  # noqa: E402
from .errors import CheckpointError, ConfigError, Gemma4Error, InputError  # noqa: E402
from .image import ProcessedImage, process_image  # noqa: E402
from .model import DEFAULT_MODEL, Model, load_model  # noqa: E402
from .unified import UnifiedFrontEnd, process_unified_image  # noqa: E402
from .video import ProcessedVideo, process_video  # noqa: E402
from .vision import VisionTower  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "AudioFeatures",
    "AudioTower",
    "CheckpointError",
    "ConfigError",
    "Gemma4Error",
    "InputError",
    "Model",
    "ProcessedImage",
    "ProcessedVideo",
    "UnifiedFrontEnd",
    "VisionTower",
    "load_model",
    "log_mel_features",
    "process_image",
    "process_unified_image",
    "process_video",
    "read_wav",
]
__version__ = "0.1.0"
