"""`kvgate demo`, the README's first command, end to end on a small fleet."""

import subprocess
import sys


def test_demo_compares_round_robin_with_affinity_and_writes_its_report(tmp_path):
    output = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--replicas", "2", "--users", "4", "--seconds", "4",
         "--output", str(output)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "kvgate round_robin" in run.stdout and "kvgate affinity" in run.stdout
    assert "hit rate (measured)" in run.stdout and "busiest replica" in run.stdout
    report = (output / "comparison.md").read_text()
    assert "kvgate round_robin" in report and "kvgate affinity" in report
    for label in ("kvgate-round_robin", "kvgate-affinity"):
        assert (output / label / "summary.json").is_file()
        assert (output / label / "requests.csv").is_file()
