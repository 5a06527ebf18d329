"""The run directory: where each file lives, the run records and their checks, and the resume check.

A run's record (``runs/<run_id>/record.json``) is written last, atomically, and carries the
settings that decided what it computed plus their fingerprint. Resuming trusts a record only when
it passes ``validate_record``: its schema and value ranges hold, its norm/batch/seed are those of
its folder, and its fingerprint is the one the current settings give. Anything else is a
RunDirectoryError naming the file, so a record of other settings is never reused nor averaged in,
whether or not ``config.json`` is still there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .config import ConfigError, ExperimentConfig
from .storage import (RunDirectoryError, is_temporary_name, read_text, remove_file, safe_directory, write_atomic,
                      write_json)

RECORD_KEYS = ("run_id", "norm", "batch_size", "seed", "eval_error", "batch_stat_error", "diverged")

# Part of every fingerprint. Bump it when a change of the training code changes what a run
# computes under the same settings (the protocol), so that older records are refused on resume.
FINGERPRINT_VERSION = 1


def write_json_atomic(path: Path, data: Any, root: Optional[Path] = None) -> None:
    """``data`` as JSON through ``storage.write_atomic`` (see there); ``root``: the run directory
    the path must stay in (default: the file's own folder)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n", root)


def run_dir(out: Path, run_id: str) -> Path:
    return out / "runs" / run_id


def record_path(out: Path, run_id: str) -> Path:
    return run_dir(out, run_id) / "record.json"


def prepare_run_dir(out: Path, run_id: str) -> Path:
    """The run's folder, created inside ``out`` without following links, with no stale
    ``metrics.jsonl`` in it (the run rewrites it; a link there would be written through) and no
    temporary file left by a write that was killed (only this run writes in its folder)."""
    folder = safe_directory(out, run_dir(out, run_id))
    remove_file(out, folder / "metrics.jsonl")
    for name in os.listdir(folder):
        if is_temporary_name(name):
            remove_file(out, folder / name)
    return folder


# ---- the record's fingerprint ----

def run_settings(config: ExperimentConfig, spec: Any) -> dict[str, Any]:
    """What decides a run's numbers: the sweep's settings that change what a run computes
    (``config.run_identity()``: everything but the grid, worker count and output path), the run's
    own fields (norm, batch size, seed) and the fingerprint version. Library versions, thread
    counts and the CPU are left out on purpose: they change rounding, not the experiment, and a
    resume across them stays possible (they are kept in the record's ``provenance``)."""
    settings = dict(config.run_identity())
    settings.update(dataclasses.asdict(spec))
    settings["fingerprint_version"] = FINGERPRINT_VERSION
    return settings


def _canonical(value: Any) -> Any:
    # 2 and 2.0 are the same setting (--epochs 2 is a float, epochs=2 in Python an int)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the settings as canonical JSON (sorted keys, no whitespace, integral floats as integers)."""
    text = json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ---- record validation ----

def _number(low: float, high: float) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok and low <= value <= high else f"a finite number in [{low:g}, {high:g}]"
    return check


def _count(minimum: int = 0) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f"an integer >= {minimum}"
    return check


def _optional(inner: Callable[[Any], Optional[str]]) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        if value is None:
            return None
        expected = inner(value)
        return None if expected is None else f"null or {expected}"
    return check


def _of_type(kind: type, label: str) -> Callable[[Any], Optional[str]]:
    return lambda value: None if isinstance(value, kind) else label


_ANY_FINITE = _number(-math.inf, math.inf)
_NON_NEGATIVE = _number(0.0, math.inf)
_FRACTION = _number(0.0, 1.0)         # errors are shares of the test set (0.25 = 25 %)

# Every field a record must have, with what its value must be.
RECORD_SCHEMA: dict[str, Callable[[Any], Optional[str]]] = {
    "run_id": _of_type(str, "a string"), "norm": _of_type(str, "a string"),
    "batch_size": _count(1), "seed": _count(0),
    "steps": _count(0), "samples": _count(0), "planned_samples": _count(1),
    "peak_lr": _number(0.0, math.inf),
    "diverged": _of_type(bool, "true or false"), "diverged_at_samples": _optional(_count(1)),
    "eval_error": _FRACTION, "batch_stat_error": _FRACTION, "train_eval_gap": _number(-1.0, 1.0),
    "final_train_loss": _optional(_NON_NEGATIVE), "loss_at_quarter": _optional(_NON_NEGATIVE),
    "samples_to_target": _optional(_count(1)),
    "train_seconds": _NON_NEGATIVE, "seconds": _NON_NEGATIVE,
    "norm_kwargs": _of_type(dict, "an object"),
    "settings": _of_type(dict, "an object"), "fingerprint": _of_type(str, "a string"),
}


def _problems(record: Any, spec: Any, expected: dict[str, Any]) -> list[str]:
    if not isinstance(record, dict):
        return [f"it holds a JSON {type(record).__name__}, not an object"]
    missing = [key for key in RECORD_SCHEMA if key not in record]
    if missing:
        return [f"field(s) {', '.join(missing)} missing" + (
            " (written before run records carried a settings fingerprint: which settings computed it "
            "cannot be checked)" if "fingerprint" in missing else "")]
    problems = [f"{key} is {record[key]!r}, expected {wanted}" for key, check in RECORD_SCHEMA.items()
                if (wanted := check(record[key])) is not None]
    if problems:
        return problems
    own = {"run_id": spec.run_id, **dataclasses.asdict(spec)}
    problems += [f"{key} is {record.get(key)!r} but the run's folder is {spec.run_id} ({key} {value!r})"
                 for key, value in own.items() if record.get(key) != value]
    if record["samples"] > record["planned_samples"]:
        problems.append(f"samples {record['samples']} exceed planned_samples {record['planned_samples']}")
    if record["samples"] != record["steps"] * record["batch_size"]:
        problems.append(f"samples {record['samples']} are not steps {record['steps']} x batch size")
    if record["diverged"] != (record["diverged_at_samples"] is not None):
        problems.append(f"diverged {record['diverged']} disagrees with diverged_at_samples "
                        f"{record['diverged_at_samples']!r}")
    if problems:
        return problems
    stored = record["settings"]
    if fingerprint(stored) != record["fingerprint"]:
        return ["its fingerprint does not match its settings (the file was edited)"]
    if record["fingerprint"] != fingerprint(expected):
        keys = sorted(set(stored) | set(expected))
        differ = [f"{key}: {stored.get(key)!r} there, {expected.get(key)!r} now"
                  for key in keys if stored.get(key) != expected.get(key)]
        return [f"it was computed with other settings ({'; '.join(differ)}); resuming would mix incomparable runs"]
    return []


def validate_record(record: Any, spec: Any, config: ExperimentConfig, path: Path) -> dict[str, Any]:
    """``record`` when it is a valid record of run ``spec`` under ``config``; else a
    RunDirectoryError naming ``path`` and every problem found."""
    problems = _problems(record, spec, run_settings(config, spec))
    if problems:
        raise RunDirectoryError(f"{path} is not a valid run record: {'; '.join(problems)}. It is not used: delete "
                                "that run's folder to recompute the run (or use another --out)")
    return record


# ---- reading and writing records ----

def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> float:
        raise ValueError(f"{constant} is not a JSON number")
    return json.loads(text, parse_constant=refuse)


def read_record(out: Path, run_id: str) -> Optional[dict[str, Any]]:
    """The record as stored, unchecked, or None when the run never finished (no record, or a
    truncated or otherwise unparseable one); ``finished_record`` is the checked reader."""
    try:
        record = json.loads(read_text(record_path(out, run_id), out))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        return None
    return record


def finished_record(out: Path, spec: Any, config: ExperimentConfig) -> Optional[dict[str, Any]]:
    """The record of run ``spec`` when it finished under ``config``'s settings; None when it never
    finished (no record, or one cut short: records are written atomically, so only damage from
    outside truncates one, and redoing the run is the repair); a RunDirectoryError naming the file
    for a readable record that fails ``validate_record`` (including NaN or infinite values)."""
    path = record_path(out, spec.run_id)
    try:
        text = read_text(path, out)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as error:
        raise RunDirectoryError(f"{path} is not a valid run record (not UTF-8 text: {error}). It is not used: "
                                "delete that run's folder to recompute the run (or use another --out)") from None
    try:
        record = _strict_json(text)
    except json.JSONDecodeError:
        return None
    except (ValueError, RecursionError) as error:
        raise RunDirectoryError(f"{path} is not a valid run record: {error}. It is not used: delete that run's "
                                "folder to recompute the run (or use another --out)") from None
    return validate_record(record, spec, config, path)


def write_record(out: Path, spec: Any, config: ExperimentConfig, record: dict[str, Any]) -> dict[str, Any]:
    """Stamp ``record`` with its settings, fingerprint and provenance, check it as a resume will,
    and write it atomically inside ``out`` (strict JSON). Returns the stamped record."""
    settings = run_settings(config, spec)
    record = {**record, "settings": settings, "fingerprint": fingerprint(settings),
              "provenance": {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}}
    validate_record(record, spec, config, record_path(out, spec.run_id))
    write_json(record_path(out, spec.run_id), record, root=out)
    return record


# ---- the sweep-level resume check ----

def check_resume(out: Path, config: ExperimentConfig) -> bool:
    """True when ``out`` already holds a sweep; a ConfigError when its settings differ from ``config``
    in anything that changes what a run computes (the grid itself may differ). Each record is
    checked again on its own (``finished_record``): this check only fails early and clearly."""
    path = out / "config.json"
    try:
        text = read_text(path, out)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        previous = ExperimentConfig.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ConfigError(f"{path} exists but cannot be read as an experiment config ({error}); "
                          "use another --out or remove it") from error
    old, new = previous.run_identity(), config.run_identity()
    differ = [f"{key}: {old[key]!r} there, {new[key]!r} now" for key in old if old[key] != new[key]]
    if differ:
        raise ConfigError(f"{out} holds a sweep with other settings ({'; '.join(differ)}); resuming would mix "
                          "incomparable runs. Use the same settings, or another --out")
    return True
