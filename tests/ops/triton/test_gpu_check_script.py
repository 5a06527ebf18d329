"""benchmarks/gpu_check.sh runs only on a GPU, which CI never has; this checks what can be checked
without one, so that the first GPU run does not fail on a typo: the script parses, every benchmark
invocation parses with the harness's own command line, every test file and ``-k`` selection it names
collects tests, and its summary step reads what the harness writes."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HARNESS = ROOT / "benchmarks" / "bench_kernels.py"
TEST_DIR = "tests/ops/triton"


def _logical_lines() -> list[str]:
    """The script's lines with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", SCRIPT.read_text()).splitlines()


def _invocations(marker: str) -> list[list[str]]:
    """The arguments after ``marker`` on every line that runs it, shell-split, variables filled in."""
    found = []
    for line in _logical_lines():
        if marker in line and not line.lstrip().startswith("#"):
            tail = line.split(marker, 1)[1].replace("$OUT_DIR", "OUT").replace("$T", TEST_DIR)
            found.append(shlex.split(tail))
    return found


def test_script_parses_as_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on this machine")
    result = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_benchmark_invocation_parses_with_the_harness_command_line(load_script):
    bench = load_script(HARNESS)
    invocations = _invocations("benchmarks/bench_kernels.py")
    assert len(invocations) >= 3, invocations   # the slice, the torch.compile slice, the tuning
    for args in invocations:
        parsed = bench.build_parser().parse_args(args)   # an unknown flag or bad value exits here
        assert parsed.quick_timing, args                  # the 8-minute budget assumes quick timing
    # And the parser does refuse what it should (so the loop above can fail).
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--stages", "256x56"])
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--no-such-flag"])


def test_every_test_file_and_selection_the_script_names_collects_tests():
    invocations = _invocations("-m pytest")
    assert len(invocations) >= 3, invocations   # the GPU tests, the kernel suite, the sanitizer runs
    files, selections = set(), []
    for args in invocations:
        files |= {a for a in args if a.endswith(".py")}
        if "-k" in args:
            selections.append(args[args.index("-k") + 1])
    for name in files:
        assert (ROOT / name).is_file(), name
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *sorted(files)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    node_ids = [line for line in collected.stdout.splitlines() if "::" in line]
    for name in files:
        assert any(n.startswith(name + "::") for n in node_ids), f"{name} collects no test"
    assert selections, "the sanitizer step selects tests with -k"
    for expression in selections:
        # Plain words joined by "or": pytest selects the tests whose names contain a word.
        for word in expression.split(" or "):
            assert any(word.strip() in n.split("::", 1)[1] for n in node_ids), f"-k word {word!r} selects nothing"


def test_summary_step_reads_what_the_harness_writes(tmp_path, load_script):
    bench = load_script(HARNESS)
    stem = bench.main(["--smoke", "--out", str(tmp_path), "--dtypes", "fp32", "--norms", "channel",
                       "--passes", "fwd", "--tag", "slice"])
    text = SCRIPT.read_text()
    snippet = re.search(r'"\$PY" - "\$OUT_DIR" "\$STAMP" <<\'EOF\'\n(.*?)\nEOF\n', text, re.S)
    assert snippet, "the summary step's Python is no longer where this test looks for it"
    result = subprocess.run([sys.executable, "-", str(tmp_path), "20261130T000000Z"], input=snippet.group(1),
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"--- {stem.name}.json:" in result.stdout, result.stdout
    assert "Rows missing a target" in result.stdout, result.stdout
