import pytest
import torch

CPU_BACKENDS = ("reference", "native")

# pytest-xdist runs one worker per core; torch's own intra-op threads on top of that oversubscribe
# the cores and make small native calls tens of times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
