"""gemma4-ref: a readable NumPy/Numba reference of Google's Gemma 4, checked against transformers.

>>> import gemma4_ref
>>> model = gemma4_ref.load_model()          # the embedded default model in data/
>>> model.generate([2, 818, 5279], max_new_tokens=8, temperature=0.0)
"""

import os

# OpenBLAS's threads spin after each BLAS call for 2^28 cycles (about 0.1 s) before they sleep.
# Prefill ends its BLAS products and goes on with Numba's matvecs (the KV-shared layers' last
# token, the head), which then shared the 2 cores with spinning threads: on E2B those matvecs
# took 185 ms instead of 112. 2^10 cycles is a fraction of a microsecond. OpenBLAS reads this
# when NumPy loads it, so it applies only where gemma4_ref is imported before NumPy (the CLI,
# the bench); set the variable yourself otherwise.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "10")

import numba  # noqa: E402

# Numba's thread pool. OpenMP (GNU libgomp) wakes its threads fastest, which decode needs: a
# step is ~280 short parallel calls, and with Numba's `workqueue` pool a 2-core Xeon VM lost
# 0.3-0.6 ms waking threads on many of them (E2B bf16: 0.32 s a step against 0.25 with OpenMP).
# But libgomp's idle threads spin, by default for long enough to fight OpenBLAS's threads for
# the cores during prefill (2x slower there). A short spin (GOMP_SPINCOUNT=10000, a few
# microseconds) keeps most of the fast wake-up and none of the fight. Where libgomp cannot load,
# Numba falls back to `workqueue`. NUMBA_THREADING_LAYER and GOMP_SPINCOUNT still override.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

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
