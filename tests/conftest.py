"""Shared test set-up: one torch thread for the whole suite (tiny models: on a shared 2-core machine torch's
thread team costs far more than the work, e.g. InceptionV3 at 75 px took 6 s with 2 threads vs 0.08 s with 1)."""

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
