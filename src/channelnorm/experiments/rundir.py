"""The run directory: where each file lives, the run records and their checks, and the resume check.

A run's record (``runs/<run_id>/record.json``) is written last, atomically, and carries the
settings that decided what it computed plus their fingerprint. Resuming trusts a record only when
it passes ``validate_record``: its schema and value ranges hold, its norm/batch/seed are those of
its folder, its fingerprint is that of its settings, and those are the current training settings
(the analysis thresholds may differ: a reused record is re-analysed under the current ones).
Anything else is a RunDirectoryError naming the file, so a record of other settings is never
reused nor averaged in, whether or not ``config.json`` is still there.

Every file of a run directory is read through ``storage.read_json`` and checked here
(``read_config``, ``read_environment``, ``finished_record``). ``run_kind.json`` says which command
wrote the directory: ``compare`` and ``tune`` each refuse the other's (``claim_run_kind``).
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

from .config import ANALYSIS_FIELDS, ConfigError, ExperimentConfig
from .environment import CODE_PATH_FIELDS
from .grid import EVALS, PROTOCOLS, RunKey
from .outcome import analysed, converged, is_curve_point, steps_to_target
from .stats import is_finite_number
from .storage import (NotJsonError, RunDirectoryError, is_temporary_name, read_json, remove_file, safe_directory,
                      write_atomic, write_json)
from .tuned_lrs import run_lr

RECORD_KEYS = ("run_id", "norm", "protocol", "norm_batch", "sgd_batch", "seed", "errors", "converged")

# What a finished compare run writes at the top of its run directory.
OUTPUTS = ("config.json", "environment.json", "results.csv", "results.json", "variants.json", "analysis.json",
           "error_vs_batch.png", "curves.png", "report.md")

# What kind of run a run directory holds (``run_kind.json``): ``compare`` and ``tune`` both write
# ``report.md``, so neither may write into the other's directory.
KIND_FILE = "run_kind.json"
KINDS = ("compare", "tune")
# the files that tell a directory written before ``run_kind.json`` existed
_KIND_EVIDENCE = {"compare": ("config.json", "results.json", "runs"), "tune": ("tuning.json",)}


# Part of every fingerprint. Bump it when a change of the training code changes what a run
# computes under the same settings (the protocol), so that older records are refused on resume.
FINGERPRINT_VERSION = 3      # 2: protocol v2 (cells, wide grouped training, three evaluations);
                             # 3: v3 (curves read with per-batch statistics, variant cells)


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

def run_settings(config: ExperimentConfig, spec: RunKey) -> dict[str, Any]:
    """What decides a run's numbers: the sweep's settings that change what a run computes
    (``config.run_identity()``: everything but the grid, worker count and output path), the run's
    own fields (norm, protocol, normalization batch, SGD batch, seed), the peak learning rate it
    trains with (``config.lrs`` or the committed tuned defaults) and the fingerprint version.
    Library versions, thread counts and the CPU are left out on purpose: they change rounding, not
    the experiment, and a resume across them stays possible (they are kept in ``provenance``)."""
    settings = dict(config.run_identity())
    # the run's own fields under one key: the cell's SGD batch is not the config's (coupled cells)
    settings["run"] = dataclasses.asdict(spec)
    # the learning rate it trains with, which the committed tuning (``tuned_lrs``) decides too
    settings["peak_lr"] = run_lr(spec, config)
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
        # is_finite_number: an integer too large for a float is not finite (math.isfinite would raise)
        return None if is_finite_number(value) and low <= value <= high else f"a finite number in [{low:g}, {high:g}]"
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
_PERCENT = _number(0.0, 100.0)        # errors are percentages of the test set (25.0 = 25 %)


def _one_of(*choices: str) -> Callable[[Any], Optional[str]]:
    return lambda value: None if value in choices else f"one of {', '.join(choices)}"


def _errors(value: Any) -> Optional[str]:
    wanted = f"an object with exactly the evaluations {', '.join(EVALS)}, each in [0, 100] %"
    if not isinstance(value, dict) or set(value) != set(EVALS):
        return wanted
    return None if all(_PERCENT(value[name]) is None for name in EVALS) else wanted


def _curve(value: Any) -> Optional[str]:
    wanted = "a list of [step >= 0, error in [0, 100] %] pairs"
    if not isinstance(value, (list, tuple)):
        return wanted
    return None if all(is_curve_point(point) for point in value) else wanted


def new_record(cell, member, plan, log, errors: dict[str, float], config: ExperimentConfig,
               seconds: tuple[float, float], members: int) -> dict[str, Any]:
    """The record of one seed of a trained cell (``RECORD_SCHEMA`` below says what each field must
    be; ``write_record`` adds the settings and their fingerprint)."""
    curve = [(e["step"], e["error"]) for e in log.entries if e["kind"] == "curve"]
    diverged = log.diverged_at is not None
    return {
        "run_id": cell.run_id(member.seed), "cell_id": cell.cell_id, "norm": cell.norm, "protocol": cell.protocol,
        "norm_batch": cell.norm_batch, "sgd_batch": cell.sgd_batch, "batch_size": cell.norm_batch,
        "seed": member.seed, "lr_scale": cell.lr_scale, "frozen_tail": cell.frozen_tail,
        "frozen_tail_step": plan.frozen_tail_step, "peak_lr": member.peak_lr, "steps": plan.steps,
        "samples": plan.steps * cell.sgd_batch, "diverged": diverged, "diverged_at_step": log.diverged_at,
        "final_train_loss": log.final_train_loss,
        "converged": converged(log.final_train_loss, diverged, config.converged_loss),
        "errors": errors,                                   # test error %, per evaluation
        "eval_error": errors["ema"], "batch_stat_error": errors["batch"],
        "curve": curve, "curve_statistics": "batch", "steps_to_target": steps_to_target(curve, config.target_error),
        "cell_train_seconds": round(seconds[0], 2), "cell_eval_seconds": round(seconds[1], 2),
        "members_in_cell": members, "torch_threads": torch.get_num_threads(),
    }


# Every field a record must have, with what its value must be.
RECORD_SCHEMA: dict[str, Callable[[Any], Optional[str]]] = {
    "run_id": _of_type(str, "a string"), "cell_id": _of_type(str, "a string"), "norm": _of_type(str, "a string"),
    "protocol": _one_of(*PROTOCOLS), "norm_batch": _count(1), "sgd_batch": _count(1), "batch_size": _count(1),
    "seed": _count(0), "lr_scale": _number(0.0, math.inf), "frozen_tail": _of_type(bool, "true or false"),
    "peak_lr": _number(0.0, math.inf), "steps": _count(0), "samples": _count(0),
    "diverged": _of_type(bool, "true or false"), "diverged_at_step": _optional(_count(1)),
    "frozen_tail_step": _optional(_count(0)),
    "final_train_loss": _optional(_NON_NEGATIVE), "converged": _of_type(bool, "true or false"),
    "errors": _errors, "eval_error": _PERCENT, "batch_stat_error": _PERCENT,
    "curve": _curve, "curve_statistics": _one_of("batch"), "steps_to_target": _optional(_count(0)),
    "cell_train_seconds": _NON_NEGATIVE, "cell_eval_seconds": _NON_NEGATIVE,
    "members_in_cell": _count(1), "torch_threads": _count(1),
    "settings": _of_type(dict, "an object"), "fingerprint": _of_type(str, "a string"),
}


def _problems(record: Any, spec: RunKey, expected: dict[str, Any]) -> list[str]:
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
    own = {"run_id": spec.run_id, "cell_id": spec.cell_id, **dataclasses.asdict(spec)}
    problems += [f"{key} is {record.get(key)!r} but the run's folder is {spec.run_id} ({key} {value!r})"
                 for key, value in own.items() if record.get(key) != value]
    if record["batch_size"] != record["norm_batch"]:
        problems.append(f"batch_size {record['batch_size']} is not norm_batch {record['norm_batch']}")
    if record["samples"] != record["steps"] * record["sgd_batch"]:
        problems.append(f"samples {record['samples']} are not steps {record['steps']} x SGD batch")
    if record["diverged"] != (record["diverged_at_step"] is not None):
        problems.append(f"diverged {record['diverged']} disagrees with diverged_at_step "
                        f"{record['diverged_at_step']!r}")
    if record["converged"] and (record["diverged"] or record["final_train_loss"] is None):
        problems.append("converged is true for a run that diverged or has no final training loss")
    if record["eval_error"] != record["errors"]["ema"] or record["batch_stat_error"] != record["errors"]["batch"]:
        problems.append("eval_error/batch_stat_error disagree with errors['ema']/errors['batch']")
    if problems:
        return problems
    stored = record["settings"]
    if fingerprint(stored) != record["fingerprint"]:
        return ["its fingerprint does not match its settings (the file was edited)"]
    # The analysis thresholds decide no number the run computed: a record trained under others is
    # re-analysed (``outcome.analysed``), not refused.
    trained, wanted = _training_settings(stored), _training_settings(expected)
    if fingerprint(trained) != fingerprint(wanted):
        keys = sorted(set(trained) | set(wanted))
        differ = [f"{key}: {trained.get(key)!r} there, {wanted.get(key)!r} now"
                  for key in keys if trained.get(key) != wanted.get(key)]
        return [f"it was computed with other settings ({'; '.join(differ)}); resuming would mix incomparable runs"]
    return []


def _training_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A record's settings without the analysis thresholds."""
    return {key: value for key, value in settings.items() if key not in ANALYSIS_FIELDS}


def validate_record(record: Any, spec: RunKey, config: ExperimentConfig, path: Path) -> dict[str, Any]:
    """``record`` when it is a valid record of run ``spec`` under ``config``; else a
    RunDirectoryError naming ``path`` and every problem found."""
    problems = _problems(record, spec, run_settings(config, spec))
    if problems:
        raise RunDirectoryError(f"{path} is not a valid run record: {'; '.join(problems)}. It is not used: delete "
                                "that run's folder to recompute the run (or use another --out)")
    return record


# ---- reading and writing records ----

def read_record(out: Path, run_id: str) -> Optional[dict[str, Any]]:
    """The record as stored, unchecked, or None when the run never finished (no record, or a
    truncated or otherwise unparseable one); ``finished_record`` is the checked reader."""
    try:
        record = read_json(record_path(out, run_id), out, object)
    except (FileNotFoundError, NotJsonError):
        return None
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        return None
    return record


def finished_record(out: Path, spec: RunKey, config: ExperimentConfig) -> Optional[dict[str, Any]]:
    """The record of run ``spec`` when it finished under ``config``'s training settings, with
    ``converged`` and ``steps_to_target`` under ``config``'s analysis thresholds; None when it never
    finished (no record, or one cut short: records are written atomically, so only damage from
    outside truncates one, and redoing the run is the repair); a RunDirectoryError naming the file
    for a readable record that fails ``validate_record`` (including NaN or infinite values)."""
    path = record_path(out, spec.run_id)
    try:
        # any top-level type: validate_record names what it holds instead
        record = read_json(path, out, object)
    except (FileNotFoundError, NotJsonError):
        return None
    except RunDirectoryError as error:
        raise RunDirectoryError(f"{path} is not a valid run record: {error}. It is not used: delete that run's "
                                "folder to recompute the run (or use another --out)") from None
    return analysed(validate_record(record, spec, config, path), config)


def write_record(out: Path, spec: RunKey, config: ExperimentConfig, record: dict[str, Any]) -> dict[str, Any]:
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
    in anything that changes what a run computes (the grid and the analysis thresholds may differ).
    Each record is checked again on its own (``finished_record``): this check only fails early and
    clearly."""
    path = out / "config.json"
    try:
        previous = read_config(path, out)
    except FileNotFoundError:
        return False
    except ConfigError as error:
        raise ConfigError(f"{error}; use another --out or remove it") from None
    old, new = previous.training_identity(), config.training_identity()   # thresholds may change
    differ = [f"{key}: {old[key]!r} there, {new[key]!r} now" for key in old if old[key] != new[key]]
    if differ:
        raise ConfigError(f"{out} holds a sweep with other settings ({'; '.join(differ)}); resuming would mix "
                          "incomparable runs. Use the same settings, or another --out")
    return True


def read_config(path: Path, root: Path) -> ExperimentConfig:
    """``config.json`` of a run directory as a config; FileNotFoundError when absent, a ConfigError
    naming the file when it is not a config this program wrote (not UTF-8, not JSON, not an object,
    unknown fields, values out of range)."""
    try:
        data = read_json(path, root, dict)
    except RunDirectoryError as error:
        raise type(error)(f"an experiment config cannot be read: {error}") from None
    try:
        return ExperimentConfig.from_dict(data)
    except (TypeError, ValueError, OverflowError) as error:
        raise ConfigError(f"{path} cannot be read as an experiment config ({error})") from None


def read_environment(path: Path, root: Path) -> dict[str, Any]:
    """``environment.json`` of a run directory; FileNotFoundError when absent, a RunDirectoryError
    naming the file when it is not what a run writes: an object whose CPU code path fields are
    strings or null, whose command is a string and whose sweep history is a list of objects."""
    environment = read_json(path, root, dict)
    problems = [f"{key} is {str(environment[key])[:80]}, expected a string or null" for key in CODE_PATH_FIELDS
                if environment.get(key) is not None and not isinstance(environment[key], str)]
    if not isinstance(environment.get("command", ""), str):
        problems.append(f"command is {str(environment['command'])[:80]}, expected a string")
    sweeps = environment.get("sweeps", [])
    if not (isinstance(sweeps, list) and all(isinstance(sweep, dict) for sweep in sweeps)):
        problems.append(f"sweeps is {str(sweeps)[:80]}, expected a list of objects (one per invocation)")
    if problems:
        raise RunDirectoryError(f"{path} is not an environment record this program wrote: {'; '.join(problems)}. "
                                "Remove it (its sweep history is lost) or use another --out")
    return environment


# ---- what kind of run a directory holds ----

def run_kind(out: Path) -> Optional[str]:
    """``compare`` or ``tune`` when ``out`` holds a run of that command (``run_kind.json``, or for a
    directory written before it existed, that command's own files), None for a new or foreign
    directory; a RunDirectoryError for a damaged ``run_kind.json`` or the files of both commands."""
    path = out / KIND_FILE
    try:
        recorded = read_json(path, out, dict)
    except FileNotFoundError:
        recorded = None
    if recorded is not None:
        if set(recorded) != {"kind"} or recorded["kind"] not in KINDS:
            raise RunDirectoryError(f"{path} must be {{\"kind\": \"compare\"}} or {{\"kind\": \"tune\"}}, got "
                                    f"{str(recorded)[:80]}; remove it (or use another --out)")
        return recorded["kind"]
    found = {kind: [name for name in names if os.path.lexists(out / name)] for kind, names in _KIND_EVIDENCE.items()}
    kinds = [kind for kind, names in found.items() if names]
    if len(kinds) > 1:
        raise RunDirectoryError(f"{out} holds the files of both a compare run ({', '.join(found['compare'])}) and a "
                                f"tune run ({', '.join(found['tune'])}); each command needs a run directory of its "
                                "own. Use another --out")
    return kinds[0] if kinds else None


def claim_run_kind(out: Path, kind: str, record: bool = True) -> None:
    """Refuse ``out`` when it holds a run of another command than ``kind`` (a RunDirectoryError
    naming the directory and the kind found: both commands write ``report.md``); else, with
    ``record``, write ``run_kind.json`` so that the other command refuses it from now on."""
    found = run_kind(out)
    if found is not None and found != kind:
        raise RunDirectoryError(f"--out {str(out)!r} holds a {found} run (channelnorm {found}); channelnorm {kind} "
                                f"never writes into it (both write report.md). Use another --out")
    if record and not os.path.lexists(out / KIND_FILE):
        write_json(out / KIND_FILE, {"kind": kind}, root=out)
