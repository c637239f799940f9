"""benchmarks/bench_heatmap.py runs end to end in a tiny configuration (it measures; nothing here checks times)."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_heatmap_benchmark_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "heatmap.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_heatmap.py"), "--layers", "6", "--steps", "200",
         "--columns", "64", "--no-browser", "--alerts-runs", "2", "--alerts-layers", "4", "--alerts-steps", "20",
         "--repeat", "2", "--keep", str(tmp_path / "logs"), "--out", str(out)],
        check=True, capture_output=True, timeout=600,
    )
    result = json.loads(out.read_text())
    assert result["layers"] == 6 and result["samples"] == 200 and result["heatmap_columns"] == 64
    assert len(result["heatmap_cold_samples"]) == 2 and result["heatmap_cold"] > 0
    # The dashboard's first-visit requests, each sample in a fresh process.
    assert [len(v) for v in result["fresh_process_samples"].values()] == [2, 2]
    assert result["fresh_process_heatmap_then_marks"] > result["fresh_process_heatmap_no_alerts"] > 0
    assert result["alerts_logdir"]["runs"] == 2 and result["alerts_logdir"]["false"]["alerts_cold_s"] > 0
