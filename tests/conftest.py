"""Shared fixtures: the tiny random model (seconds, offline) and the embedded SmolLM2 (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED_DATA

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on shared cores: one thread avoids OpenMP oversubscription (restored afterwards).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} not present beside the repository")
    return SHARED_DATA


@pytest.fixture
def tiny():
    from innerpissa.models import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def smollm2():
    from innerpissa.models import load_model, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(f"embedded SmolLM2 unavailable: {e}")
    return load_model("smollm2")
