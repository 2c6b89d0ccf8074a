"""Shared pytest fixtures: repository paths, the shared real data (``../shared/data`` next to the repo), threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Root folder of the repository."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data``; tests that need it are skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture(scope="session")
def hippocampus_dir(shared_data_dir: Path) -> Path:
    """The MSD Task04 Hippocampus subset (Decathlon layout with a dataset.json)."""
    path = shared_data_dir / "msd_hippocampus"
    if not (path / "dataset.json").is_file():
        pytest.skip(f"{path}/dataset.json not found")
    return path


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread, as in a DataLoader worker (small tensor ops lose to thread hand-offs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
