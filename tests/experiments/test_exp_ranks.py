"""``channelnorm compare`` under torchrun: ranks share the cells, rank 0 writes the outputs.

Each rank is a process of its own started the way torchrun starts its workers (the environment
variables WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; gloo on 127.0.0.1 at a free
port), running the real command line, so every rank's exit status and error output are checked
on their own (torchrun would end the other ranks itself when one fails). Each process logs every
file it writes (``storage.write_atomic``, through which every file of a run directory is written),
which shows who wrote what. A hang fails at the deadline.

The oracle of the two-rank run is the same command in one process: every cell computes with one
torch thread wherever it runs, so the rows must be equal bit for bit.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from channelnorm.experiments import cli
from channelnorm.experiments.config import ConfigError, quick_config
from channelnorm.experiments.grid import cell_seeds, estimated_cost, plan
from channelnorm.experiments.ranks import CHECK_NAME, World, balance, detect_world
from channelnorm.experiments.rundir import KIND_FILE, OUTPUTS
from channelnorm.experiments.storage import locked

DEADLINE_S = 240.0
SRC = str(Path(__file__).resolve().parents[2] / "src")

# A small grid: 4 cells (channel at normalization batches 4 and 16, group, channel's frozen tail), 2 seeds.
FLAGS = ["--quick", "--norms", "channel,group", "--seeds", "0,1", "--epochs", "1", "--coupled-batches", "",
         "--lr-factors", "none", "--faithful-cell", "none", "--workers", "1", "--no-progress"]

# Runs the CLI with every file write logged to $WRITES_LOG, and with an injected failure of its
# cells when $FAIL_CELLS is set. Patched before the experiment's modules import write_atomic.
RANK_MAIN = r"""
import os, sys
from channelnorm.experiments import storage
_write = storage.write_atomic
def logged(path, data, root=None):
    with open(os.environ["WRITES_LOG"], "a") as log:
        log.write(os.path.abspath(path) + "\n")
    return _write(path, data, root)
storage.write_atomic = logged
if os.environ.get("FAIL_CELLS"):
    from channelnorm.experiments import sweep
    def fail(cell, *args, **kwargs):
        raise RuntimeError("injected failure in " + cell.cell_id)
    sweep.execute = fail
from channelnorm.experiments import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, argv_of_rank, world: int = 2, fail_rank=None) -> list[dict]:
    """Start ``world`` ranks (``argv_of_rank(rank)``: the compare flags), wait for all of them
    (killing every one at the deadline), and return each one's exit code, output and writes."""
    port = _free_port()
    ranks = []
    for rank in range(world):
        log = tmp_path / f"writes-{rank}.txt"
        log.unlink(missing_ok=True)     # this launch's writes only
        env = {**os.environ, "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WRITES_LOG": str(log),
               "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop("FAIL_CELLS", None)
        if rank == fail_rank:
            env["FAIL_CELLS"] = "1"
        process = subprocess.Popen([sys.executable, "-c", RANK_MAIN, "compare", *argv_of_rank(rank)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        ranks.append({"process": process, "log": log})
    try:
        for r in ranks:
            r["stdout"], r["stderr"] = r["process"].communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ranks did not finish within {DEADLINE_S} s (hang)")
    finally:
        for r in ranks:
            if r["process"].poll() is None:
                os.killpg(r["process"].pid, signal.SIGKILL)
                r["process"].wait()
    for r in ranks:
        r["rc"] = r["process"].returncode
        r["writes"] = r["log"].read_text().split() if r["log"].exists() else []
    return ranks


def _describe(ranks) -> str:
    return "\n".join(f"--- rank {i} rc {r['rc']}\n{r['stdout'][-3000:]}\n{r['stderr'][-3000:]}"
                     for i, r in enumerate(ranks))


def _flags_config(out: Path):
    """The configuration FLAGS give (as the CLI builds it)."""
    return quick_config(norms=("channel", "group"), seeds=(0, 1), epochs=1.0, coupled_batches=(), lr_factors=(),
                        faithful_cell=None, workers=1, grid="custom", out=str(out))


@pytest.mark.slow
def test_two_ranks_give_the_rows_of_one_process(tmp_path, capsys):
    both, alone = tmp_path / "ranks", tmp_path / "alone"
    ranks = _launch(tmp_path, lambda rank: [*FLAGS, "--out", str(both)])
    assert [r["rc"] for r in ranks] == [0, 0], _describe(ranks)
    assert cli.main(["compare", *FLAGS, "--out", str(alone)]) == 0
    capsys.readouterr()

    for name in ("results.json", "variants.json"):
        assert json.loads((both / name).read_text()) == json.loads((alone / name).read_text()), name
    rows = json.loads((both / "results.json").read_text())
    assert rows and all(len(r["errors"]) == 2 for r in rows)

    # each rank trained its share and nothing else; together every cell, once
    config = _flags_config(both)
    cells = plan(config)
    shares = balance(cells, 2, config)
    assert all(shares) and sorted(c.cell_id for c in cells) == sorted(c.cell_id for s in shares for c in s)
    for rank, share in enumerate(shares):
        records = {Path(p).parent.name for p in ranks[rank]["writes"] if p.endswith("record.json")}
        assert records == {c.run_id(s) for c in share for s in cell_seeds(c, config)}, rank

    # rank 1 wrote nothing outside its runs' folders and printed no output paths; rank 0 wrote the outputs
    assert all(Path(p).is_relative_to(both / "runs") for p in ranks[1]["writes"]), ranks[1]["writes"]
    assert "results.json" not in ranks[1]["stdout"]
    top = {Path(p).name for p in ranks[0]["writes"] if Path(p).parent == both}
    assert top == set(OUTPUTS) | {CHECK_NAME, KIND_FILE}
    assert not (both / CHECK_NAME).exists()

    sweep = json.loads((both / "environment.json").read_text())["sweep"]
    assert sweep["world_size"] == 2 and sweep["backend"] == "gloo"
    assert [r["rank"] for r in sweep["ranks"]] == [0, 1]
    assert [r["cells"] for r in sweep["ranks"]] == [[c.cell_id for c in s] for s in shares]
    assert sweep["executed"] == len(cells) and sweep["skipped"] == 0

    # resuming under two ranks trains nothing and keeps the rows
    again = _launch(tmp_path, lambda rank: [*FLAGS, "--out", str(both)])
    assert [r["rc"] for r in again] == [0, 0], _describe(again)
    assert not any(p.endswith("record.json") for r in again for p in r["writes"])
    assert json.loads((both / "results.json").read_text()) == rows
    assert json.loads((both / "environment.json").read_text())["sweep"]["executed"] == 0


@pytest.mark.slow
def test_out_refused_on_rank_0_fails_every_rank(tmp_path):
    # rank 1 is given a free folder: it fails only because rank 0 tells it (it never gets to the
    # shared-folder check), with rank 0's words
    busy, free = tmp_path / "busy", tmp_path / "free"
    with locked(busy):       # another compare holds rank 0's --out: refused before anything trains
        ranks = _launch(tmp_path, lambda rank: [*FLAGS, "--out", str(busy if rank == 0 else free)])
    assert [r["rc"] for r in ranks] == [2, 2], _describe(ranks)
    for r in ranks:
        assert f"{busy} is in use by another channelnorm compare" in r["stderr"], _describe(ranks)
    assert not (busy / "config.json").exists() and not free.exists()
    assert not any(r["writes"] for r in ranks)


@pytest.mark.slow
def test_unshared_out_fails_every_rank_naming_the_path(tmp_path):
    ranks = _launch(tmp_path, lambda rank: [*FLAGS, "--out", str(tmp_path / f"seen-by-{rank}")])
    assert [r["rc"] for r in ranks] == [2, 2], _describe(ranks)
    for r in ranks:
        assert f"rank 1: it cannot read at {tmp_path / 'seen-by-1' / CHECK_NAME}" in r["stderr"], _describe(ranks)
        assert "shares" in r["stderr"]
    assert not any(p.endswith("record.json") for r in ranks for p in r["writes"])


@pytest.mark.slow
def test_a_failing_rank_fails_every_rank_and_keeps_the_others_cells(tmp_path):
    out = tmp_path / "run"
    ranks = _launch(tmp_path, lambda rank: [*FLAGS, "--out", str(out)], fail_rank=1)
    assert ranks[0]["rc"] != 0 and ranks[1]["rc"] != 0, _describe(ranks)
    config = _flags_config(out)
    failed_cell = balance(plan(config), 2, config)[1][0].cell_id
    for r in ranks:
        assert f"injected failure in {failed_cell}" in r["stderr"], _describe(ranks)
    assert "rank 1 on" in ranks[0]["stderr"]
    assert not (out / "results.json").exists()
    # rank 0's cells are finished and kept for a resume
    kept = {Path(p).parent.name for p in ranks[0]["writes"] if p.endswith("record.json")}
    assert kept and all((out / "runs" / run / "record.json").is_file() for run in kept)


# ---- pure parts: no processes ----

def test_detect_world_reads_torchrun_environment():
    assert detect_world({}) == World(0, 1, 0)
    assert detect_world({"WORLD_SIZE": "1", "RANK": "0"}) == World(0, 1, 0)
    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert detect_world(torchrun) == World(3, 4, 1)
    assert World(3, 4, 1).distributed and not World(3, 4, 1).is_main and not World().distributed


@pytest.mark.parametrize("changes, words", [
    ({"RANK": "4"}, "RANK is 4, but WORLD_SIZE is 4"),
    ({"RANK": "two"}, "RANK must be an integer >= 0, got 'two'"),
    ({"RANK": None}, "RANK is not set"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be an integer >= 1, got '0'"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK must be an integer >= 0, got '-1'"),
    ({"MASTER_PORT": None}, "MASTER_PORT not set"),
])
def test_detect_world_refuses_malformed_environment(changes, words):
    environ = {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    for key, value in changes.items():
        if value is None:
            environ.pop(key)
        else:
            environ[key] = value
    with pytest.raises(ConfigError, match=words):
        detect_world(environ)


@pytest.mark.parametrize("size", [1, 2, 3, 40])
def test_balance_splits_every_cell_once_near_the_best_split(size):
    config = quick_config()
    cells = plan(config)
    shares = balance(cells, size, config)
    assert len(shares) == size
    assert sorted(c.cell_id for s in shares for c in s) == sorted(c.cell_id for c in cells)   # each once
    assert balance(list(reversed(cells)), size, config) == shares                            # order-free
    cost = [estimated_cost(c, config) for c in cells]
    makespan = max(sum(estimated_cost(c, config) for c in s) for s in shares)
    if size >= len(cells):      # a rank per cell: the costliest cell alone is the best there is
        assert makespan == max(cost)
        return
    # Graham's bound for costliest-first greedy: at most (4/3 - 1/(3m)) x the best split (brute force)
    best = min(max(sum(c for c, r in zip(cost, assign) if r == k) for k in range(size))
               for assign in itertools.product(range(size), repeat=len(cells)))
    assert makespan <= (4 / 3 - 1 / (3 * size)) * best


def test_balance_refuses_no_ranks():
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        balance([], 0, quick_config())
