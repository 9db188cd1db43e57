import os

import pytest

# Two shared cores: one torch thread per test process keeps timings sane and results exact.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _single_thread():
    import torch

    torch.set_num_threads(1)
    yield
