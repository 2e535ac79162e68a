"""Shared fixtures: everything offline, on the CPU, from real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
QWEN_DIR = SHARED / "qwen3-embedding-0.6b"
KO_DATA = SHARED / "data" / "ko"


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    if not (QWEN_DIR / "tokenizer.json").is_file():
        pytest.fail(f"{QWEN_DIR} is missing: the tests need ../shared (CI has it)")
    return QWEN_DIR


@pytest.fixture(scope="session")
def ko_data() -> Path:
    if not KO_DATA.is_dir():
        pytest.fail(f"{KO_DATA} is missing: the tests need ../shared (CI has it)")
    return KO_DATA


@pytest.fixture(autouse=True, scope="session")
def _koemb_cache(tmp_path_factory):
    # Never write caches into ../shared or the user's home during tests.
    os.environ["KOEMB_CACHE"] = str(tmp_path_factory.mktemp("koemb-cache"))


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine an OpenMP
    barrier waiting for a busy core makes each op ~50x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
