import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton's interpreter runs the kernels on CPU tensors; it must be on before the
# kernels are built (when channelnorm.ops.triton is first imported), so it is set here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist runs one worker per core; torch's own intra-op threads on top of that oversubscribe
# the cores and make small native calls tens of times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def load_script():
    """``load_script(path)``: a Python file that is not part of a package (a benchmark script, a copied
    module), imported as a module of its own."""
    def load(path):
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
