"""The experiment's configuration: one frozen dataclass, checked once, written to ``config.json``.

Protocol (v3): every cell trains the same number of samples with the same warm-up + cosine
schedule. *Decoupled* cells keep the SGD batch at ``sgd_batch`` and set channel norm's
normalization batch through ghost batches (``norm_batches``); batch-independent norms train once
at ``sgd_batch``. The *Group-Norm-faithful* cell (``faithful_cell``: normalization batch 2 inside
SGD batch 16, learning rate scaled linearly) is the Group Norm paper's "batch 2". *Coupled* cells
(``coupled_norms`` at ``coupled_batches``: SGD batch = normalization batch, small-SGD-batch
training) are in ``--full`` only. Variant cells (``lr_factors``, ``frozen_tail``) are described in
``grid.py``. The peak learning rate per norm comes from the committed tuning sweep
(``tuned_lrs``); the claims and thresholds fixed before a run are in ``claims.py``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..registry import canonical_kind, norm_traits

CORE_NORMS = ("channel", "group", "layer", "layer2d", "instance", "none")
# ghost is how channel norm's decoupled cells get their normalization batch, so it is no extra norm
ROBUST_NORMS = ("batch_renorm", "frn", "evonorm_s0", "evonorm_b0")
# the images a sweep trains on: the embedded synthetic set, CIFAR-10 (python pickles in data_dir)
# or Fashion-MNIST (MNIST-format IDX files in data_dir, by default where Debian installs them)
DATA_SETS = ("synthetic", "cifar10", "fashion-mnist")

# Thresholds fixed before any run on the data set (docs/design.md §7.1): the convergence gate (final
# training loss; it flags, never withholds) and the exploratory target error (%). Flags override them.
PREREGISTERED_THRESHOLDS = {"synthetic": {"converged_loss": 0.05, "target_error": 5.0},
                            "fashion-mnist": {"converged_loss": 0.25, "target_error": 12.0}}

# Fields that may differ between invocations on one run directory: the grid and where/how it runs.
GRID_FIELDS = ("norms", "norm_batches", "coupled_norms", "coupled_batches", "seeds", "faithful_cell", "lr_factors",
               "variant_seeds",
               "grid", "workers", "out")
# read only when the finished runs are analysed: a run trains and scores the same without them
ANALYSIS_FIELDS = ("converged_loss", "target_error", "alpha")

MAX_SEED = 2**64 - 1
MAX_SAMPLES = 10**10     # training samples per cell: bounds epochs x train_size to numbers a run can reach


class ConfigError(ValueError):
    """An invalid experiment setting; the message names the value and what is allowed."""


def canonical_norm(kind: str) -> str:
    """The registry's canonical name for ``kind`` (aliases resolved), or a ConfigError listing the choices."""
    try:
        return canonical_kind(str(kind))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def uses_batch_statistics(kind: str) -> bool:
    return norm_traits(kind).uses_batch_statistics


@dataclass(frozen=True)
class ExperimentConfig:
    norms: tuple[str, ...] = CORE_NORMS
    norm_batches: tuple[int, ...] = (2, 8, 32)   # channel norm's normalization batches (decoupled)
    sgd_batch: int = 32
    coupled_norms: tuple[str, ...] = ()        # --full: ("channel", "group", ...)
    coupled_batches: tuple[int, ...] = ()      # --full: (2, 32)
    seeds: tuple[int, ...] = tuple(range(8))
    faithful_cell: Optional[tuple[int, int]] = (2, 16)   # (normalization batch, SGD batch): the GN paper's batch 2
    lr_factors: tuple[float, ...] = (0.5, 2.0)  # channel norm's LR grid around the tuned rate (variant cells)
    frozen_tail: float = 0.125                 # share of the steps trained with population statistics (variant)
    variant_seeds: Optional[int] = 4           # the variant cells train the first this many seeds (None: all)
    epochs: float = 6.0                 # passes over the training set, the same in every cell
    train_size: Optional[int] = 6000    # synthetic set size, or a CIFAR-10 subset (None: all 50k)
    test_size: Optional[int] = 5000     # held-out test images (never used to choose anything)
    val_size: int = 2000                # tuning only: held out of the training set for validation
    precise_size: int = 2048            # training images whose population statistics 'precise' uses
    curve_size: int = 500               # test images for the error-vs-steps curve (30 points x this)
    image_size: int = 12                # synthetic images only; CIFAR-10 is 32x32, Fashion-MNIST 28x28
    noise: float = 0.05                 # synthetic pixel noise (std, images in [0, 1])
    colour_variation: float = 0.5       # synthetic: how much colours vary per image (see synthetic.py)
    contrast_variation: float = 0.3     # synthetic: per-image contrast factor in [1 - c, 1]
    data_seed: int = 0                  # the data set is the same for every training seed
    data: str = "synthetic"             # one of DATA_SETS; data_dir without it means cifar10 (as --data-dir)
    data_dir: Optional[str] = None      # the cifar10 or fashion-mnist folder (fashion-mnist: None = Debian's)
    width: int = 8                      # channels of the first stage (then 2x, 4x)
    lrs: tuple[tuple[str, float], ...] = ()   # peak LR per norm at sgd_batch; empty: the tuned defaults
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    max_groups: int = 32                # group/evonorm_s0: the largest divisor of C not above this (GN paper: 32)
    converged_loss: float = 0.05        # convergence gate: flags a cell (never hides its effect); fixed before v2's results
    target_error: float = 5.0           # exploratory: steps until the per-batch test error (%) is at most this
    alpha: float = 0.05                 # family-wise error rate of each claim family (Holm)
    log_points: int = 20
    curve_points: int = 30
    # NCHW: torch 2.13's oneDNN backward of a strided 1x1 channels_last conv corrupts the heap on
    # AVX2 CPUs (seen here: "corrupted double-linked list"); NCHW takes another kernel.
    channels_last: bool = False
    device: str = "cpu"
    workers: int = 2
    out: str = "runs/compare"
    grid: str = "default"               # a label for the report: default, full, quick or custom

    def __post_init__(self) -> None:
        object.__setattr__(self, "norms", tuple(canonical_norm(k) for k in self.norms))
        object.__setattr__(self, "coupled_norms", tuple(canonical_norm(k) for k in self.coupled_norms))
        for name in ("norm_batches", "coupled_batches", "seeds", "lr_factors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.faithful_cell is not None:
            object.__setattr__(self, "faithful_cell", tuple(self.faithful_cell))
        lrs = tuple(sorted((canonical_norm(k), v) for k, v in dict(self.lrs).items()))
        object.__setattr__(self, "lrs", lrs)
        if self.data == "synthetic" and self.data_dir is not None:   # configs from before the field
            object.__setattr__(self, "data", "cifar10")
        self._validate()

    def _validate(self) -> None:
        def integer(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")

        def number(name: str, value: Any, low: float = 0.0, high: float = math.inf, open_low: bool = True,
                   open_high: bool = False) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < low or (open_low and value == low) or value > high or (open_high and value == high):
                raise ConfigError(f"{name} must be a finite number in {'(' if open_low else '['}{low}, "
                                  f"{high}{')' if open_high else ']'}, got {value!r}")

        for name in ("norms", "norm_batches", "seeds"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name} must not be empty")
        for name in ("norms", "norm_batches", "coupled_norms", "coupled_batches", "seeds", "lr_factors"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"{name} has duplicates: {list(values)}")
        integer("sgd_batch", self.sgd_batch, 2)
        for bs in self.norm_batches:
            integer("normalization batch", bs, 2)
            if bs > self.sgd_batch:
                raise ConfigError(f"normalization batch {bs} is larger than the SGD batch {self.sgd_batch}")
        for bs in self.coupled_batches:
            integer("coupled batch", bs, 2)
        if self.faithful_cell is not None:
            if len(self.faithful_cell) != 2:
                raise ConfigError(f"faithful_cell must be (normalization batch, SGD batch), got {self.faithful_cell!r}")
            nb, sb = self.faithful_cell
            integer("faithful cell's normalization batch", nb, 2)
            integer("faithful cell's SGD batch", sb, 2)
            if nb > sb:
                raise ConfigError(f"faithful cell: normalization batch {nb} is larger than its SGD batch {sb}")
        for factor in self.lr_factors:
            number("learning-rate factor", factor)
            if factor == 1.0:
                raise ConfigError("lr_factors must not contain 1 (the main cells are the tuned rate)")
        if self.variant_seeds is not None:
            integer("variant_seeds", self.variant_seeds, 2)
        number("frozen_tail", self.frozen_tail, 0.0, 1.0, open_low=False, open_high=True)
        number("alpha", self.alpha, 0.0, 1.0, open_high=True)
        for seed in self.seeds:
            integer("seed", seed, 0)
            if seed > MAX_SEED:
                raise ConfigError(f"seed must be at most 2**64 - 1, got {seed!r}")
        for name, lr in self.lrs:
            number(f"learning rate of {name}", lr)
        number("epochs", self.epochs)
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                integer(name, getattr(self, name), 10)
        for name in ("val_size", "precise_size", "curve_size"):
            integer(name, getattr(self, name), 2)
        largest = max(self.sgd_batch, *self.coupled_batches) if self.coupled_batches else self.sgd_batch
        if self.faithful_cell is not None:
            largest = max(largest, self.faithful_cell[1])
        # per-batch evaluation and the curves read whole batches of every normalization batch trained
        norm_batch = max(self.sgd_batch, *self.norm_batches, *self.coupled_batches)
        evaluated = min(self.curve_size, self.test_size) if self.test_size is not None else self.curve_size
        if norm_batch > evaluated:
            raise ConfigError(f"normalization batch {norm_batch} is larger than the test images the curves and the "
                              f"per-batch evaluation read (curve_size {self.curve_size}, test_size {self.test_size})")
        if self.train_size is not None and largest > self.train_size:
            raise ConfigError(f"batch {largest} is larger than train_size {self.train_size}")
        n = self.train_size if self.train_size is not None else 50_000
        if n > MAX_SAMPLES or self.epochs * n > MAX_SAMPLES:     # int() of an infinite product would overflow
            raise ConfigError(f"epochs {self.epochs} x train_size {n} is more than {MAX_SAMPLES:.0e} training samples "
                              "per cell, the most this experiment trains; use fewer --epochs or a smaller --train-size")
        if self.steps(self.sgd_batch) < 1:
            raise ConfigError(f"epochs {self.epochs} x train_size {self.train_size} is less than one batch of "
                              f"{self.sgd_batch}")
        integer("image_size", self.image_size, 8)
        if self.data not in DATA_SETS:
            raise ConfigError(f"data must be one of {', '.join(DATA_SETS)}, got {self.data!r}")
        if self.data == "cifar10" and self.data_dir is None:
            raise ConfigError("data 'cifar10' needs data_dir, the cifar-10-batches-py folder")
        number("noise", self.noise, open_low=False)
        number("colour_variation", self.colour_variation, 0.0, 1.0, open_low=False)
        number("contrast_variation", self.contrast_variation, 0.0, 1.0, open_low=False, open_high=True)
        integer("data_seed", self.data_seed, 0)
        integer("width", self.width)
        number("momentum", self.momentum, 0.0, 1.0, open_low=False, open_high=True)
        number("weight_decay", self.weight_decay, open_low=False)
        number("warmup_fraction", self.warmup_fraction, 0.0, 1.0, open_low=False, open_high=True)
        integer("max_groups", self.max_groups)
        number("converged_loss", self.converged_loss)
        number("target_error", self.target_error, 0.0, 100.0)
        for name in ("log_points", "curve_points", "workers"):
            integer(name, getattr(self, name))
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}")
        if self.grid not in ("default", "full", "quick", "custom", "tune"):
            raise ConfigError(f"grid label must be default, full, quick, tune or custom, got {self.grid!r}")

    def samples(self) -> int:
        """Training samples every cell sees (whole SGD batches of the largest batch in the grid)."""
        n = self.train_size if self.train_size is not None else 50_000
        return int(self.epochs * n)

    def steps(self, sgd_batch: int) -> int:
        return self.samples() // sgd_batch

    def with_(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = dict(value) if f.name == "lrs" else (list(value) if isinstance(value, tuple) else value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if isinstance(values.get("lrs"), dict):
            values["lrs"] = tuple(values["lrs"].items())
        return cls(**values)

    def run_identity(self) -> dict[str, Any]:
        """The settings every run of this sweep shares (what must match to resume)."""
        identity = {k: v for k, v in self.to_dict().items() if k not in GRID_FIELDS}
        if self.data == ("synthetic" if self.data_dir is None else "cifar10"):
            del identity["data"]   # implied by data_dir, as before the field existed: old runs keep their fingerprints
        return identity

    def reproduction_identity(self) -> dict[str, Any]:
        """What a rerun on another machine must share to be compared verdict by verdict: the
        training settings and the grid (not the worker count, output path or grid label)."""
        grid = ("norms", "norm_batches", "coupled_norms", "coupled_batches", "seeds", "faithful_cell", "lr_factors",
                "variant_seeds")
        return {**self.training_identity(), **{k: v for k, v in self.to_dict().items() if k in grid}}

    def training_identity(self) -> dict[str, Any]:
        """The settings that decide what a run trains and how it is scored (``run_identity`` without
        the analysis thresholds)."""
        return {k: v for k, v in self.run_identity().items() if k not in ANALYSIS_FIELDS}


def quick_config(**changes: Any) -> ExperimentConfig:
    """A seconds-long sweep (used by the tests and as a smoke check): tiny data, short runs."""
    settings = dict(norms=("channel", "group", "layer"), norm_batches=(4, 16), sgd_batch=16,
                    coupled_norms=("channel", "group"), coupled_batches=(4, 16), seeds=(0, 1, 2), epochs=2.0,
                    train_size=400, test_size=400, val_size=100, precise_size=256, curve_size=200, image_size=12,
                    width=4, log_points=5, curve_points=3, grid="quick", converged_loss=2.0, target_error=80.0,
                    faithful_cell=(4, 8), lr_factors=(2.0,), frozen_tail=0.25, max_groups=8)
    settings.update(changes)
    return ExperimentConfig(**settings)


def full_config(**changes: Any) -> ExperimentConfig:
    """Core and batch-robust norms, every normalization batch from 2 to 32, and the coupled cells
    (SGD batch = normalization batch: small-SGD-batch training, not the Group Norm paper's protocol)."""
    settings = dict(norms=CORE_NORMS + ROBUST_NORMS, norm_batches=(2, 4, 8, 16, 32),
                    coupled_norms=("channel", "group", "batch_renorm", "evonorm_b0"), coupled_batches=(2, 32),
                    grid="full")
    settings.update(changes)
    return ExperimentConfig(**settings)
