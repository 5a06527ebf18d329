"""The grid, defined once: what a cell is, what names a run, which cells a configuration trains,
which reported cells reuse another cell's runs, and the evaluation names.

* **Main cells** (``results.json``): channel norm at each normalization batch inside the SGD batch
  (decoupled, ghost batches), every other norm once at the SGD batch, the Group-Norm-faithful
  cell (channel norm, normalization batch 2 inside SGD batch 16, learning rate scaled linearly),
  and coupled cells (SGD batch = normalization batch) when the configuration asks for them.
* **Variant cells** (``variants.json``): channel norm at the smallest and at the SGD batch with
  the peak learning rate scaled by each factor of ``lr_factors`` (the penalty across a learning
  rate grid), and channel norm at the smallest normalization batch with a frozen tail (the last
  ``frozen_tail`` of the steps train with population statistics, Wu & Johnson's FrozenBN), which
  says whether the small-batch cost is train/test inconsistency or training noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the config imports nothing from here; only annotations name it
    from .config import ExperimentConfig

PROTOCOLS = ("decoupled", "coupled")
EVALS = ("ema", "precise", "batch")   # running statistics, population statistics, per-batch statistics
BATCH_NORMS = ("channel", "ghost")    # the norms whose normalization batch the grid varies


@dataclass(frozen=True)
class Cell:
    """One norm at one (normalization batch, SGD batch), with all its seeds; ``lr_scale`` and
    ``frozen_tail`` mark the variant cells (1.0 and False in the main grid)."""
    norm: str
    protocol: str          # "decoupled" (normalization batch inside a fixed SGD batch) or "coupled"
    norm_batch: int
    sgd_batch: int
    lr_scale: float = 1.0  # factor on the cell's tuned peak learning rate
    frozen_tail: bool = False

    @property
    def is_variant(self) -> bool:
        return self.lr_scale != 1.0 or self.frozen_tail

    @property
    def variant(self) -> str:
        """'' for a main cell, else what differs: 'lr x0.5', 'frozen tail'."""
        parts = ([f"lr x{self.lr_scale:g}"] if self.lr_scale != 1.0 else []) + (["frozen tail"] if self.frozen_tail
                                                                                  else [])
        return ", ".join(parts)

    @property
    def cell_id(self) -> str:
        suffix = (f"-lr{self.lr_scale:g}x" if self.lr_scale != 1.0 else "") + ("-frozentail" if self.frozen_tail else "")
        return f"{self.protocol}-{self.norm}-nb{self.norm_batch}-sgd{self.sgd_batch}{suffix}"

    def key(self, seed: int) -> "RunKey":
        return RunKey(self.norm, self.protocol, self.norm_batch, self.sgd_batch, seed, self.lr_scale, self.frozen_tail)

    def run_id(self, seed: int) -> str:
        return self.key(seed).run_id


@dataclass(frozen=True)
class RunKey:
    """What names one run (one seed of one cell) and decides its folder: ``runs/<run_id>/``."""
    norm: str
    protocol: str
    norm_batch: int
    sgd_batch: int
    seed: int
    lr_scale: float = 1.0
    frozen_tail: bool = False

    @property
    def cell(self) -> Cell:
        return Cell(self.norm, self.protocol, self.norm_batch, self.sgd_batch, self.lr_scale, self.frozen_tail)

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def run_id(self) -> str:
        return f"{self.cell_id}-seed{self.seed}"


def cell_seeds(cell: Cell, config: "ExperimentConfig") -> tuple[int, ...]:
    """The seeds a cell trains: every seed of the grid, or the first ``variant_seeds`` for a variant
    cell (exploratory; fewer seeds keep the default run within its budget)."""
    if cell.is_variant and config.variant_seeds is not None:
        return config.seeds[:config.variant_seeds]
    return config.seeds


def main_cells(config: "ExperimentConfig") -> list[Cell]:
    """The cells of ``results.json``, in report order (see the module docstring). A coupled cell at
    the SGD batch is the decoupled cell itself and is not trained twice (``coupled_views``)."""
    cells = []
    for norm in config.norms:
        batches = sorted(config.norm_batches, reverse=True) if norm in BATCH_NORMS else (config.sgd_batch,)
        cells += [Cell(norm, "decoupled", nb, config.sgd_batch) for nb in batches]
    if config.faithful_cell is not None and "channel" in config.norms:
        cells.append(Cell("channel", "decoupled", *config.faithful_cell))
    for shown, source in coupled_views(config):
        if shown == source:
            cells.append(shown)
    return cells


def variant_cells(config: "ExperimentConfig") -> list[Cell]:
    """The cells of ``variants.json`` (empty when channel norm is not in the grid)."""
    if "channel" not in config.norms:
        return []
    smallest = min(config.norm_batches)
    cells = [Cell("channel", "decoupled", nb, config.sgd_batch, lr_scale=f)
             for nb in sorted({smallest, config.sgd_batch}) for f in config.lr_factors]
    if config.frozen_tail > 0:
        cells.append(Cell("channel", "decoupled", smallest, config.sgd_batch, frozen_tail=True))
    return cells


def plan(config: "ExperimentConfig") -> list[Cell]:
    """Every cell to train, costliest first (so that the last cells to start are short ones)."""
    return sorted(main_cells(config) + variant_cells(config), key=lambda c: -estimated_cost(c, config))


def coupled_views(config: "ExperimentConfig") -> list[tuple[Cell, Cell]]:
    """(coupled cell as reported, cell whose runs it is): a coupled cell at the SGD batch is the
    decoupled cell (SGD batch = normalization batch), so its runs are shared."""
    views = []
    for norm in config.coupled_norms:
        for bs in config.coupled_batches:
            shown = Cell(norm, "coupled", bs, bs)
            source = Cell(norm, "decoupled", bs, bs) if bs == config.sgd_batch and norm in config.norms else shown
            views.append((shown, source))
    return views


def estimated_cost(cell: Cell, config: "ExperimentConfig") -> float:
    """Relative cost: steps x (per-step overhead + per-sample work + per-ghost-batch overhead) x seeds."""
    ghosts = cell.sgd_batch // cell.norm_batch if cell.norm_batch < cell.sgd_batch else 0
    return config.steps(cell.sgd_batch) * (8 + cell.sgd_batch + 2 * ghosts) * len(cell_seeds(cell, config))
