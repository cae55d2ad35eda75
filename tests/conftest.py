import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

# Test tensors are small: one thread avoids oversubscribing a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
