"""The experiment's configuration: one frozen dataclass, checked once, written to ``config.json``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..registry import _ALIASES, available_norms

# Norms whose training statistics are taken over the batch: a batch of one sample leaves them
# with instance statistics (or nothing to normalize), so batch size 1 is refused for them.
BATCH_STATISTIC_NORMS = frozenset({"channel", "sync_channel", "batch_renorm", "ghost", "evonorm_b0"})

CORE_NORMS = ("channel", "group", "layer", "instance", "none")
ROBUST_NORMS = ("batch_renorm", "ghost", "frn", "evonorm_s0", "evonorm_b0")

# Fields that decide what one run computes. Resuming into a run directory requires them to match;
# the grid (norms, batch sizes, seeds), the worker count and the output path may change.
GRID_FIELDS = ("norms", "batch_sizes", "seeds", "grid", "workers", "out")


MAX_SEED = 2**64 - 1


class ConfigError(ValueError):
    """An invalid experiment setting; the message names the value and what is allowed."""


def canonical_norm(kind: str) -> str:
    """The registry's canonical name for ``kind`` (aliases resolved), or a ConfigError listing the choices."""
    key = str(kind).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in available_norms():
        raise ConfigError(f"unknown norm {kind!r}; choose from {', '.join(available_norms())} "
                          f"(aliases: {', '.join(sorted(_ALIASES))})")
    return key


@dataclass(frozen=True)
class ExperimentConfig:
    norms: tuple[str, ...] = CORE_NORMS
    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: float = 1.5                 # passes over the training set; the same for every batch size
    train_size: Optional[int] = 8000    # synthetic set size, or a CIFAR-10 subset (None: all 50k)
    test_size: Optional[int] = 2048   # divisible by every batch size of the grid
    image_size: int = 16                # synthetic images only; CIFAR-10 is 32x32
    noise: float = 0.1                  # synthetic pixel noise (std, images in [0, 1])
    data_seed: int = 0                  # the data set is the same for every training seed
    data_dir: Optional[str] = None      # CIFAR-10 python pickle directory instead of the synthetic set
    width: int = 16                     # channels of the first stage (then 2x, 4x)
    base_lr: float = 0.2                # learning rate at reference_batch, scaled linearly with batch
    reference_batch: int = 32
    warmup_fraction: float = 0.1        # linear warm-up over this share of the samples, then cosine
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_groups: int = 8                 # group/evonorm_s0: the largest divisor of C not above this
    ghost_batch: int = 8                # ghost: virtual batch size (min with the batch size)
    renorm_warmup_fraction: float = 0.25  # batch_renorm: r/d limits open over this share of steps
    target_loss: float = 1.5            # convergence: samples until the training loss is below this
    log_points: int = 40                # training-loss windows per run
    eval_points: int = 4                # held-out evaluations per run (the last is the final one)
    device: str = "cpu"
    workers: int = 2
    out: str = "runs/compare"
    grid: str = "default"               # a label for the report: default, full, quick or custom

    def __post_init__(self) -> None:
        object.__setattr__(self, "norms", tuple(canonical_norm(k) for k in self.norms))
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        self._validate()

    def _validate(self) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")

        def positive_float(name: str, value: Any, allow_zero: bool = False) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and not allow_zero):
                raise ConfigError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")

        for name in ("norms", "batch_sizes", "seeds"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name} must not be empty")
            if len(set(values)) != len(values):
                raise ConfigError(f"{name} has duplicates: {list(values)}")
        for bs in self.batch_sizes:
            positive_int("batch size", bs)
        for seed in self.seeds:
            positive_int("seed", seed, minimum=0)
            if seed > MAX_SEED:      # torch.manual_seed takes at most 64 bits
                raise ConfigError(f"seed must be at most 2**64 - 1, got {seed!r}")
        needs_batch = sorted(set(self.norms) & BATCH_STATISTIC_NORMS)
        if 1 in self.batch_sizes and needs_batch:
            raise ConfigError(f"batch size 1 is meaningless for {', '.join(needs_batch)}: their training "
                              "statistics are over the batch, and one sample leaves only its own (instance) "
                              "statistics; use batch sizes >= 2 or drop those norms")
        positive_float("epochs", self.epochs)
        if not math.isfinite(self.epochs * (self.train_size or 50_000)):
            raise ConfigError(f"epochs {self.epochs!r} is too large: the number of training samples overflows")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name), minimum=10)
        if self.train_size is not None and max(self.batch_sizes) > self.train_size:
            raise ConfigError(f"batch size {max(self.batch_sizes)} is larger than train_size {self.train_size}")
        if self.train_size is not None and int(self.epochs * self.train_size) < max(self.batch_sizes):
            raise ConfigError(f"epochs {self.epochs} x train_size {self.train_size} is less than one batch of "
                              f"{max(self.batch_sizes)}")
        positive_int("image_size", self.image_size, minimum=8)
        positive_float("noise", self.noise, allow_zero=True)
        positive_int("data_seed", self.data_seed, minimum=0)
        positive_int("width", self.width)
        positive_float("base_lr", self.base_lr)
        positive_int("reference_batch", self.reference_batch)
        for name in ("warmup_fraction", "renorm_warmup_fraction"):
            value = getattr(self, name)
            positive_float(name, value, allow_zero=True)
            if value >= 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        positive_float("momentum", self.momentum, allow_zero=True)
        positive_float("weight_decay", self.weight_decay, allow_zero=True)
        positive_int("max_groups", self.max_groups)
        positive_int("ghost_batch", self.ghost_batch)
        positive_float("target_loss", self.target_loss)
        positive_int("log_points", self.log_points)
        positive_int("eval_points", self.eval_points)
        positive_int("workers", self.workers)
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}")
        if self.grid not in ("default", "full", "quick", "custom"):
            raise ConfigError(f"grid label must be default, full, quick or custom, got {self.grid!r}")

    def with_(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def run_identity(self) -> dict[str, Any]:
        """The settings every run of this sweep shares (what must match to resume)."""
        return {k: v for k, v in self.to_dict().items() if k not in GRID_FIELDS}


def quick_config(**changes: Any) -> ExperimentConfig:
    """A seconds-long sweep over the core norms (used by the tests and for a smoke check)."""
    settings = dict(norms=CORE_NORMS, batch_sizes=(2, 8), seeds=(0, 1), epochs=1.0, train_size=400,
                    test_size=200, image_size=12, width=4, log_points=8, eval_points=2, grid="quick",
                    target_loss=2.0)
    settings.update(changes)
    return ExperimentConfig(**settings)


def full_config(**changes: Any) -> ExperimentConfig:
    """Every norm in the family the comparison is about (core + batch-robust) on the full grid."""
    settings = dict(norms=CORE_NORMS + ROBUST_NORMS, batch_sizes=(2, 4, 8, 16, 32), seeds=(0, 1, 2), grid="full")
    settings.update(changes)
    return ExperimentConfig(**settings)


