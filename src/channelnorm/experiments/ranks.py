"""``channelnorm compare`` on more than one process or machine: under ``torchrun``.

torchrun starts one process per rank with ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment; ``WORLD_SIZE`` > 1 switches this on
(``pipeline.run_compare``), and a single process behaves exactly as without it. The ranks talk
through ``torch.distributed`` (the default group: gloo for ``--device cpu``, NCCL for ``cuda``, or
the caller's own group when one is already set up); the few small messages below go over a gloo
group of their own, which needs no GPU and may wait as long as the slowest rank's share takes.

1. **Setup.** Rank 0 alone takes the ``--out`` lock, reads the data, runs the resume check, writes
   ``config.json``, lists the unfinished cells and writes a check file into ``--out``. It
   broadcasts the outcome: its settings and the cells, or its error, which then fails every rank
   with the same message (a refused ``--out`` never leaves the others waiting).
2. **Checks.** Every rank must read rank 0's check file through its own ``--out`` (the run
   directory is one folder on a file system every rank shares) and run rank 0's settings (the
   same command line, ``--out`` and ``--workers`` aside); any problem fails every rank, naming
   the rank and the path.
3. **Sweep.** The unfinished cells are split by ``balance``, computed alike on every rank; each
   rank trains its share with its own ``--workers`` processes. A cell computes with one torch
   thread wherever it runs, so its numbers do not depend on the layout.
4. **Status.** The ranks exchange how their share went (this waits for the slowest one). A rank
   that failed fails every rank with its message; the cells that finished are kept, so the same
   command resumes.
5. **Outputs.** Rank 0 writes ``environment.json`` (world size; each rank's host, CPU and cells)
   and the outputs, releases the lock and tells the others whether that worked; the other ranks
   write nothing outside their cells' ``runs/`` folders and return no paths.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from .config import ConfigError, ExperimentConfig
from .grid import Cell, estimated_cost, plan
from .storage import RunDirectoryError, locked, read_text, remove_file, write_atomic

# How long a rank waits for the others in the setup of the default group (torch's own default).
SETUP_TIMEOUT = datetime.timedelta(minutes=30)
# How long a rank that finished its share waits for the slowest one (gloo's limit is 24.8 days).
SWEEP_WAIT = datetime.timedelta(days=7)
# How long rank 0 waits for the other ranks' records to become visible (a network file system's
# attribute cache holds a folder listing for up to a minute by default).
VISIBLE_WAIT_S = 90.0
CHECK_NAME = ".ranks-check"
# Settings a rank may have of its own: where it sees the run directory and how many processes it runs.
OWN_SETTINGS = ("out", "workers")


class RankError(RuntimeError):
    """Another rank failed, or the ranks lost contact; the message names the rank and why."""


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks (one process: rank 0 of 1).

    Args:
        rank: this process's rank, 0 <= rank < size.
        size: the number of ranks (torchrun's ``WORLD_SIZE``).
        local_rank: its rank on its own machine (torchrun's ``LOCAL_RANK``): which GPU it uses.
    """
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _environment_int(environ: Mapping[str, str], name: str, default: Optional[int], minimum: int) -> int:
    text = environ.get(name)
    if text is None or text.strip() == "":
        if default is None:
            raise ConfigError(f"WORLD_SIZE is {environ.get('WORLD_SIZE')!r} but {name} is not set: start every rank "
                              "with torchrun, which sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise ConfigError(f"environment variable {name} must be an integer >= {minimum}, got {text!r}")
    return value


def detect_world(environ: Optional[Mapping[str, str]] = None) -> World:
    """This process's place among the ranks: from the default process group when one is already
    set up, else from torchrun's environment variables; ``World()`` (one process) without them.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        A ``World``; a ConfigError naming the variable when they are malformed or inconsistent.
    """
    environ = os.environ if environ is None else environ
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _environment_int(environ, "LOCAL_RANK", 0, 0))
    size = _environment_int(environ, "WORLD_SIZE", 1, 1)
    if size == 1:
        return World()
    local_rank = _environment_int(environ, "LOCAL_RANK", 0, 0)
    rank = _environment_int(environ, "RANK", None, 0)
    if rank >= size:
        raise ConfigError(f"environment variable RANK is {rank}, but WORLD_SIZE is {size}: ranks are 0..{size - 1}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise ConfigError(f"WORLD_SIZE is {size} but {' and '.join(missing)} not set: start every rank with torchrun "
                          "(or set them to rank 0's address and a free port)")
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE is {size}, but this torch {torch.__version__} has no torch.distributed")
    return World(rank, size, local_rank)


def _cuda_index(device: str, world: World) -> Optional[int]:
    """The GPU of this rank: ``cuda`` means the rank's ``LOCAL_RANK``; ``cuda:N`` is device N."""
    if not device.startswith("cuda"):
        return None
    index = torch.device(device).index
    return world.local_rank if index is None else index


def bind_local_device(device: str, world: Optional[World] = None) -> None:
    """Make ``device`` ('cuda') mean this rank's own GPU, in a rank and in its worker processes
    (which inherit torchrun's environment); nothing for the CPU or a single process.

    Args:
        device: the experiment's ``--device``.
        world: this process's place (default: ``detect_world()``).
    """
    world = detect_world() if world is None else world
    index = _cuda_index(device, world)
    if not world.distributed or index is None:
        return
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"rank {world.rank} (LOCAL_RANK {world.local_rank}) would use cuda:{index}, but this "
                          f"machine has {count} CUDA device(s): start at most that many ranks per machine "
                          "(torchrun --nproc-per-node)")
    torch.cuda.set_device(index)


def balance(cells: list[Cell], size: int, config: ExperimentConfig) -> list[list[Cell]]:
    """Split ``cells`` over ``size`` ranks: costliest first, each to the rank with the least
    estimated cost so far (ties: the lowest rank). Pure, so every rank computes the same split.

    Args:
        cells: the cells to train.
        size: the number of ranks.
        config: the experiment (``grid.estimated_cost`` reads it).

    Returns:
        One list per rank, costliest cell first; together they hold each cell exactly once.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    shares: list[list[Cell]] = [[] for _ in range(size)]
    loads = [0.0] * size
    for cell in sorted(cells, key=lambda c: (-estimated_cost(c, config), c.cell_id)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        shares[rank].append(cell)
        loads[rank] += estimated_cost(cell, config)
    return shares


# ---- talking to the other ranks ----

class _Channel:
    """The gloo group the ranks' messages go over; a lost connection is a RankError."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.group = dist.new_group(backend="gloo", timeout=SWEEP_WAIT)

    def _lost(self, what: str, error: BaseException) -> RankError:
        return RankError(f"rank {self.world.rank} lost contact with the other ranks while {what} (a rank stopped, "
                         f"or the network failed; see the other ranks' output): {error}")

    def from_main(self, payload: Any, what: str) -> Any:
        """Rank 0's ``payload``, on every rank."""
        box = [payload]
        try:
            dist.broadcast_object_list(box, src=0, group=self.group)
        except (RuntimeError, ValueError) as error:
            raise self._lost(what, error) from error
        return box[0]

    def from_all(self, payload: Any, what: str) -> list[Any]:
        """Every rank's ``payload``, in rank order, on every rank."""
        gathered: list[Any] = [None] * self.world.size
        try:
            dist.all_gather_object(gathered, payload, group=self.group)
        except (RuntimeError, ValueError) as error:
            raise self._lost(what, error) from error
        return gathered


def _describe_error(error: BaseException) -> dict[str, Any]:
    """An error as a message the other ranks re-raise: ConfigErrors (a refused --out, a damaged
    record) keep their class and words, so every rank shows the same usage error."""
    if isinstance(error, ConfigError):
        return {"config": True, "message": str(error)}
    return {"config": False, "message": f"{type(error).__name__}: {error}"}


def _raise_for(failures: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Fail this rank with the failures of others: (rank, host, described error)."""
    if not failures:
        return
    if len(failures) == 1 and failures[0][2]["config"]:
        raise ConfigError(failures[0][2]["message"])
    lines = "; ".join(f"rank {rank} on {host} failed: {error['message']}" for rank, host, error in failures)
    raise RankError(lines)


def _settings_problem(mine: ExperimentConfig, main: dict[str, Any]) -> Optional[str]:
    """How this rank's settings differ from rank 0's, ``--out`` and ``--workers`` aside."""
    here = {k: v for k, v in mine.to_dict().items() if k not in OWN_SETTINGS}
    there = {k: v for k, v in main.items() if k not in OWN_SETTINGS}
    differ = sorted(k for k in set(here) | set(there) if here.get(k) != there.get(k))
    if not differ:
        return None
    return ("its settings are not rank 0's (" + "; ".join(f"{k}: {there.get(k)!r} on rank 0, {here.get(k)!r} here"
                                                          for k in differ)
            + "): start every rank with the same command")


def _shared_problem(out: Path, token: str) -> Optional[str]:
    """Whether this rank reads, through its own ``out``, the check file rank 0 just wrote."""
    path = out / CHECK_NAME
    try:
        seen = read_text(path, out)
    except (OSError, RunDirectoryError, UnicodeDecodeError) as error:
        seen = f"<{type(error).__name__}: {error}>"
    if seen == token:
        return None
    return (f"it cannot read at {path} the file rank 0 wrote there (found {seen[:80]!r}): --out must be one folder "
            "on a file system every rank shares (a network file system for ranks on several machines)")


def _status(world: World, config: ExperimentConfig, share: list[Cell], seconds: float,
            error: Optional[BaseException]) -> dict[str, Any]:
    from .environment import cpu_model
    return {"rank": world.rank, "local_rank": world.local_rank, "host": socket.gethostname(),
            "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "workers": config.workers, "cells": [c.cell_id for c in share], "wall_seconds": round(seconds, 1),
            "error": None if error is None else _describe_error(error)}


def _wait_until_visible(config: ExperimentConfig, statuses: list[dict[str, Any]]) -> None:
    """Rank 0 sees every cell the ranks finished (a network file system may show another
    machine's new files a little later), or a RankError naming the missing ones."""
    from .sweep import cell_finished
    out = Path(config.out)
    done_by = {cell_id: s["rank"] for s in statuses for cell_id in s["cells"]}
    deadline = time.monotonic() + VISIBLE_WAIT_S
    while True:
        missing = [c for c in plan(config) if c.cell_id in done_by and not cell_finished(out, c, config)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RankError(f"rank 0 does not see in {out} the records of cell(s) "
                            + ", ".join(f"{c.cell_id} (rank {done_by[c.cell_id]})" for c in missing)
                            + f" after {VISIBLE_WAIT_S:g} s: --out must be one folder on a file system every rank "
                              "shares. Run the same command again to resume")
        time.sleep(1.0)


@contextlib.contextmanager
def _process_group(world: World, device: str):
    """The default process group, set up here (and destroyed on the way out) unless the caller did."""
    if dist.is_initialized():
        yield
        return
    bind_local_device(device, world)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise ConfigError(f"--device {device} under torchrun needs NCCL, which this torch {torch.__version__} lacks")
    dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.size,
                            timeout=SETUP_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_on_ranks(world: World, config: ExperimentConfig, command: str, progress: bool,
                 reproduction_dir: Optional[Path]) -> dict[str, Path]:
    """``pipeline.run_compare`` on one rank of ``world`` (see the module docstring).

    Args:
        world: this process's place (``detect_world``), with ``size`` > 1.
        config: the experiment as this rank's command line gave it.
        command: the command line, for ``environment.json``.
        progress: show progress bars (rank 0 only: one set of bars per terminal).
        reproduction_dir: ``--reproduction`` (read by rank 0).

    Returns:
        The output paths on rank 0, ``{}`` on every other rank. Every rank raises when any rank
        failed: a ConfigError (one rank's refused setting, the same words everywhere) or a RankError.
    """
    from . import pipeline
    from .sweep import cell_finished, run_sweep

    with _process_group(world, config.device), contextlib.ExitStack() as held:
        channel = _Channel(world)
        out = Path(config.out)
        # 1. setup: rank 0 alone touches the run directory, then tells everyone how it went
        prepared: Any = None
        payload: dict[str, Any] = {"error": None}
        if world.is_main:
            try:
                held.enter_context(locked(out))    # held until the outputs are written
                prepared = pipeline.prepare_run(config, reproduction_dir)
                cells = plan(prepared.config)
                pending = [c for c in cells if not cell_finished(out, c, prepared.config)]
                token = secrets.token_hex(16)
                write_atomic(out / CHECK_NAME, token, root=out)
                payload = {"error": None, "given": config.to_dict(), "config": prepared.config.to_dict(),
                           "pending": pending, "total": len(cells), "token": token}
            except Exception as error:
                channel.from_main({"error": _describe_error(error)}, "sending rank 0's setup")
                raise
        setup = channel.from_main(payload, "receiving rank 0's setup")
        if setup["error"] is not None:
            _raise_for([(0, "rank 0", setup["error"])])

        # 2. checks: the same settings, the same folder
        problem = _settings_problem(config, setup["given"]) or _shared_problem(out, setup["token"])
        problems = channel.from_all(problem, "checking the run directory")
        if world.is_main:
            with contextlib.suppress(OSError, RunDirectoryError):   # a leftover check file harms nothing
                remove_file(out, out / CHECK_NAME)
        found = [(rank, p) for rank, p in enumerate(problems) if p is not None]
        if found:
            raise ConfigError("; ".join(f"rank {rank}: {p}" for rank, p in found))

        # 3. sweep: rank 0's settings (sizes resolved) with this rank's own --out and --workers
        mine = ExperimentConfig.from_dict({**setup["config"], **{k: getattr(config, k) for k in OWN_SETTINGS}})
        share = balance(setup["pending"], world.size, mine)[world.rank]
        started, clock, error = None, time.perf_counter(), None
        try:
            if world.is_main:
                started = pipeline.start_sweep(prepared, command)
            run_sweep(mine, out, progress=progress and world.is_main, cells=share)
        except Exception as caught:      # reported to every rank below, then raised here
            error = caught

        # 4. status: every rank learns how every share went
        statuses = channel.from_all(_status(world, mine, share, time.perf_counter() - clock, error),
                                    "exchanging how each rank's share went")
        if error is not None:
            raise error
        _raise_for([(s["rank"], s["host"], s["error"]) for s in statuses if s["error"] is not None])

        # 5. outputs: rank 0 writes them and says whether that worked
        if not world.is_main:
            verdict = channel.from_main(None, "waiting for rank 0's outputs")
            if verdict is not None:
                raise RankError(f"rank 0 failed writing the outputs: {verdict['message']}")
            return {}
        try:
            _wait_until_visible(mine, statuses)
            counts = {"executed": len(setup["pending"]), "skipped": setup["total"] - len(setup["pending"])}
            ranks = [{k: v for k, v in s.items() if k != "error"} for s in statuses]
            outputs = pipeline.finish_run(prepared, started, counts,
                                          {"world_size": world.size, "backend": dist.get_backend(), "ranks": ranks})
        except Exception as failure:
            channel.from_main(_describe_error(failure), "telling the ranks the outputs failed")
            raise
        channel.from_main(None, "telling the ranks the outputs are written")
        return outputs
