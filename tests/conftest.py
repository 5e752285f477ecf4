"""Suite-wide settings: no test may reach the network (hub weights come from the cache or fail)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A feature cache of its own for each test module."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny convolutions: on a shared 2-core machine a second
    OpenMP thread only spins (5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
