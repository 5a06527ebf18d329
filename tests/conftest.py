import pytest
import torch

CPU_BACKENDS = ("reference", "native")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
