"""The run directory: where each file lives, atomic writes, and the resume check."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from .config import ConfigError, ExperimentConfig

RECORD_KEYS = ("run_id", "norm", "batch_size", "seed", "eval_error", "batch_stat_error", "diverged")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, then rename: a reader (or a resumed sweep)
    sees the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run_dir(out: Path, run_id: str) -> Path:
    return out / "runs" / run_id


def record_path(out: Path, run_id: str) -> Path:
    return run_dir(out, run_id) / "record.json"


def read_record(out: Path, run_id: str) -> Optional[dict[str, Any]]:
    """The finished run's record, or None when the run never finished (no record, or an unreadable one)."""
    try:
        with open(record_path(out, run_id)) as handle:
            record = json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        return None
    return record


def check_resume(out: Path, config: ExperimentConfig) -> bool:
    """True when ``out`` already holds a sweep; a ConfigError when its settings differ from ``config``
    in anything that changes what a run computes (the grid itself may differ)."""
    path = out / "config.json"
    if not path.exists():
        return False
    try:
        with open(path) as handle:
            previous = ExperimentConfig.from_dict(json.load(handle))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ConfigError(f"{path} exists but cannot be read as an experiment config ({error}); "
                          "use another --out or remove it") from error
    old, new = previous.run_identity(), config.run_identity()
    differ = [f"{key}: {old[key]!r} there, {new[key]!r} now" for key in old if old[key] != new[key]]
    if differ:
        raise ConfigError(f"{out} holds a sweep with other settings ({'; '.join(differ)}); resuming would mix "
                          "incomparable runs. Use the same settings, or another --out")
    return True
