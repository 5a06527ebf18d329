"""Peak learning rates chosen by ``channelnorm tune``, per data set, kept as data in the package.

``tuned_lrs.json`` (shipped as package data) maps a data set (``dataset_key``) to the SGD batch its
rates were tuned at and the chosen peak learning rate per norm::

    {"synthetic": {"tuned_at_batch": 32, "rates": {"channel": 0.4, "group": 0.1, ...}}}

``channelnorm tune --write-defaults`` rewrites the entry of the data set it tuned on (atomically,
the other data sets' entries kept: ``write_defaults``). A test checks that the committed entry is
what the committed tuning results (``docs/results/tuning/tuning.json``) chose. Every read checks the
file: a rate that is not a finite number > 0, or an unknown norm, is an error naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .config import ConfigError, canonical_norm
from .stats import is_finite_number
from .storage import RunDirectoryError, parse_json, write_atomic

# The package's data file (read at every call, so a rewrite is seen at once; it is a few hundred bytes).
DEFAULTS_FILE = Path(__file__).with_name("tuned_lrs.json")
FALLBACK_LR = 0.1          # for a norm (or data set) the committed tuning did not cover: flagged as untuned
FALLBACK_AT_BATCH = 32     # the SGD batch FALLBACK_LR is meant for (scaled linearly like a tuned rate)
# norms that train at another norm's tuned rate: Ioffe (2017) trained batch renormalization at batch
# norm's rate (its bounds relax from plain batch norm over training), so it is not tuned on its own
RATE_OF = {"batch_renorm": "channel"}


@dataclass(frozen=True)
class TunedRates:
    """One data set's entry of ``tuned_lrs.json``.

    Args:
        tuned_at_batch: the SGD batch the tuning sweep trained at.
        rates: the chosen peak learning rate per canonical norm name, at ``tuned_at_batch``.
    """
    tuned_at_batch: int
    rates: Mapping[str, float]


def dataset_key(config: Any) -> str:
    """The data set ``config`` trains on, as ``tuned_lrs.json`` names it.

    Args:
        config: an ``ExperimentConfig`` (anything with ``data_dir``; its ``data`` field, where it
            has one, names the data set itself).

    Returns:
        ``config.data`` when set, else ``"synthetic"`` without a ``data_dir`` and ``"cifar10"`` with one.
    """
    data = getattr(config, "data", None)
    if data is not None:
        return str(data)
    return "synthetic" if config.data_dir is None else "cifar10"


def _entry(key: Any, entry: Any, path: Path) -> TunedRates:
    where = f"{path}: data set {key!r}:"
    if not (isinstance(key, str) and key):
        raise ConfigError(f"{path}: data sets must be named by non-empty strings, got {key!r}")
    if not (isinstance(entry, dict) and set(entry) == {"tuned_at_batch", "rates"}):
        raise ConfigError(f"{where} expected an object with exactly tuned_at_batch and rates, got {str(entry)[:80]}")
    batch, rates = entry["tuned_at_batch"], entry["rates"]
    if not (type(batch) is int and batch >= 1):
        raise ConfigError(f"{where} tuned_at_batch must be an integer >= 1, got {batch!r}")
    if not isinstance(rates, dict):
        raise ConfigError(f"{where} rates must map norm names to learning rates, got {str(rates)[:80]}")
    for norm, lr in rates.items():
        try:
            canonical = canonical_norm(norm)
        except ConfigError as error:
            raise ConfigError(f"{where} {error}") from None
        if canonical != norm:
            raise ConfigError(f"{where} norm {norm!r} is an alias; name it {canonical_norm(norm)!r}")
        if not (is_finite_number(lr) and lr > 0):
            raise ConfigError(f"{where} the rate of {norm!r} must be a finite number > 0, got {lr!r}")
    return TunedRates(batch, dict(rates))


def read_defaults(path: Optional[Path] = None) -> dict[str, TunedRates]:
    """Every data set's tuned rates in ``path`` (default: the package's ``tuned_lrs.json``), checked.

    Args:
        path: the file to read; None for ``DEFAULTS_FILE``.

    Returns:
        {data set: its ``TunedRates``}. A ConfigError naming the file when it cannot be read, is
        not strict JSON or holds anything but what ``write_defaults`` writes.
    """
    path = DEFAULTS_FILE if path is None else Path(path)
    try:
        data = parse_json(path.read_text(encoding="utf-8"), path, dict)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"the tuned learning rates in {path} cannot be read: {error}") from None
    except RunDirectoryError as error:
        raise ConfigError(f"the tuned learning rates cannot be read: {error}") from None
    return {key: _entry(key, entry, path) for key, entry in data.items()}


def tuned_rates(config: Any) -> Optional[TunedRates]:
    """The committed tuned rates of the data set ``config`` trains on, or None when it has none."""
    return read_defaults().get(dataset_key(config))


def peak_lr(norm: str, config: Any) -> float:
    """The peak learning rate of ``norm`` at ``config.sgd_batch``.

    Args:
        norm: a canonical norm name.
        config: an ``ExperimentConfig``.

    Returns:
        ``config.lrs``'s rate when it names the norm; else the tuned rate of ``config``'s data set
        (of the norm ``RATE_OF`` names, for those), scaled linearly from the batch it was tuned at;
        else ``FALLBACK_LR``, scaled the same way.
    """
    given = dict(config.lrs)
    if norm in given:
        return given[norm]
    norm = RATE_OF.get(norm, norm)
    if norm in given:
        return given[norm]
    tuned = tuned_rates(config)
    rates, at_batch = (tuned.rates, tuned.tuned_at_batch) if tuned is not None else ({}, FALLBACK_AT_BATCH)
    return rates.get(norm, FALLBACK_LR) * config.sgd_batch / at_batch


def cell_lr(norm: str, sgd_batch: int, config: Any) -> float:
    """The peak learning rate of a cell trained at ``sgd_batch``: ``peak_lr`` scaled linearly from
    ``config.sgd_batch`` (coupled cells train at other SGD batches).

    Args:
        norm: a canonical norm name.
        sgd_batch: the cell's SGD batch.
        config: an ``ExperimentConfig``.
    """
    return peak_lr(norm, config) * sgd_batch / config.sgd_batch


def run_lr(cell: Any, config: Any) -> float:
    """The peak learning rate a cell (or a run's key) trains with: ``cell_lr`` times the variant's
    ``lr_scale``. The one place both the training and the run's fingerprint read it from."""
    return cell_lr(cell.norm, cell.sgd_batch, config) * cell.lr_scale


def is_tuned(norm: str, config: Any) -> bool:
    """True when ``norm``'s rate comes from ``config.lrs`` or the tuning of ``config``'s data set."""
    tuned = tuned_rates(config)
    if norm in dict(config.lrs):
        return True
    norm = RATE_OF.get(norm, norm)
    return norm in dict(config.lrs) or (tuned is not None and norm in tuned.rates)


def with_tuning(defaults: Mapping[str, TunedRates], key: str, tuning: Mapping[str, Any]) -> dict[str, TunedRates]:
    """``defaults`` with the rates ``tuning`` chose written into data set ``key``'s entry.

    The norms tuned replace their rates; the entry's other norms keep theirs when they were tuned at
    the same SGD batch (so the batch-robust norms can be tuned after the core ones), and are dropped
    when the entry was tuned at another batch (rates of two batches do not mix in one entry).

    Args:
        defaults: every data set's rates (``read_defaults``).
        key: the data set tuned (``dataset_key``).
        tuning: a ``tune.run_tuning`` result (``sgd_batch`` and each norm's ``chosen_lr``).

    Returns:
        The new mapping, the other data sets' entries unchanged; a ValueError for a chosen rate
        that is not a finite number > 0 (or an SGD batch that is not an integer >= 1).
    """
    chosen = {norm: result.get("chosen_lr") for norm, result in tuning["norms"].items()}
    for norm, lr in chosen.items():
        if not (is_finite_number(lr) and lr > 0):
            raise ValueError(f"norm {norm!r}: chosen_lr {lr!r} is not a finite learning rate > 0")
    batch = tuning.get("sgd_batch")
    if not (type(batch) is int and batch >= 1):
        raise ValueError(f"the tuning's sgd_batch must be an integer >= 1, got {batch!r}")
    earlier = defaults.get(key)
    kept = dict(earlier.rates) if earlier is not None and earlier.tuned_at_batch == batch else {}
    return {**defaults, key: TunedRates(batch, {**kept, **chosen})}


def render(defaults: Mapping[str, TunedRates]) -> str:
    """The text of ``tuned_lrs.json`` for ``defaults`` (strict JSON, one data set after another)."""
    data = {key: {"tuned_at_batch": entry.tuned_at_batch, "rates": dict(entry.rates)}
            for key, entry in defaults.items()}
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def write_defaults(tuning: Mapping[str, Any], config: Any, path: Optional[Path] = None) -> Path:
    """Record the rates ``tuning`` chose as the defaults of ``config``'s data set (``--write-defaults``).

    Args:
        tuning: a ``tune.run_tuning`` result.
        config: the ``ExperimentConfig`` it tuned under (decides the data set's key).
        path: the file to rewrite; None for ``DEFAULTS_FILE``.

    Returns:
        The path written. The file is replaced atomically; a present file that fails
        ``read_defaults`` is an error and is left as it is.
    """
    path = DEFAULTS_FILE if path is None else Path(path)
    defaults = read_defaults(path) if path.exists() else {}
    write_atomic(path, render(with_tuning(defaults, dataset_key(config), tuning)), root=path.parent)
    return path
