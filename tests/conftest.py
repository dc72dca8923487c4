"""Shared test setup: small thread counts (tests run two at a time on 2 cores) and data locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KDLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CIFAR-100 / MNIST folder beside the repo (../shared/data); tests needing it skip without it."""
    if not (SHARED_DATA / "cifar-100-python").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
