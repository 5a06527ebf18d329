"""What the numbers were measured on: versions, machine, git revision, load."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch


# what decides the CPU code path a run took (torch's capability and the overrides that chose it)
CODE_PATH_FIELDS = ("cpu_capability", "aten_cpu_capability_env", "onednn_max_cpu_isa_env")


def git_revision() -> Optional[str]:
    """The checkout's commit (with ``-dirty`` when the package's own files have uncommitted changes,
    new files not yet added included: result files written elsewhere in the checkout do not count),
    or None outside git, and None when the package's files are not tracked there (an installed copy
    inside another project's checkout)."""
    here = Path(__file__).resolve().parent.parent
    try:
        # fails (exit 1) for an untracked or ignored copy: the enclosing repository's commit is not ours
        subprocess.run(["git", "ls-files", "--error-unmatch", "--", "__init__.py"], cwd=here, capture_output=True,
                       timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_model() -> Optional[str]:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else None."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def describe_environment(device: str, workers: int) -> dict[str, Any]:
    from .. import __version__

    info: dict[str, Any] = {
        "channelnorm": __version__, "git": git_revision(), "torch": torch.__version__,
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
        "processor": platform.processor() or None, "cpu_count": os.cpu_count(), "device": device,
        "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        # oneDNN (the convolutions) picks its own instruction set; this caps it
        "onednn_max_cpu_isa_env": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        # every cell computes with one torch thread, in a worker process or in the main one (sweep.py)
        "torch_threads_per_worker": 1, "workers": workers,
        "torch_default_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info
