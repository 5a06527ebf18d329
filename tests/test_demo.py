import subprocess
import sys


def test_demo_runs_and_shows_batch_dependence():
    out = subprocess.run([sys.executable, "-m", "channelnorm"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in ("channel", "group", "layer", "instance")}
    assert set(rows) == {"channel", "group", "layer", "instance"}
    assert float(rows["channel"][0]) > 0.1 and all(float(v) == 0.0 for k in ("group", "layer", "instance")
                                                    for v in rows[k])
