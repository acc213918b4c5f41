"""Shared fixtures: the tiny random Gemma 4 checkpoints, built once per session."""

from __future__ import annotations

import pytest
from tiny_models import TinyStore


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    """Lazily built tiny checkpoints (see tests/tiny_models.py) and their reference outputs."""
    return TinyStore(tmp_path_factory.mktemp("tiny_gemma4"))


@pytest.fixture(scope="session")
def ct_models(tmp_path_factory: pytest.TempPathFactory):
    """Lazily built checkpoints quantized by compressed-tensors (see tests/int4_models.py)."""
    from int4_models import QuantStore

    return QuantStore(tmp_path_factory.mktemp("int4_gemma4"))
