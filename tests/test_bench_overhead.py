"""The overhead benchmark's harness, run in its tiny configuration so that it
cannot rot: every configuration trains, the JSON has what the README table
is built from. No time is asserted (speed lives in the benchmark's report)."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_benchmark(tmp_path, script, *arguments):
    """The report `benchmarks/<script>` prints as JSON with `arguments`,
    checked equal to the one it writes with --output."""
    output = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *arguments, "--output", str(output)],
        capture_output=True, text=True, timeout=600, check=True,
    )
    report = json.loads(out.stdout)
    assert report == json.loads(output.read_text())
    return report


def test_tiny_run_reports_every_configuration_as_json(tmp_path):
    report = run_benchmark(tmp_path, "bench_overhead.py", "--tiny", "--json")
    rows = report["rows"]
    configurations = [r["configuration"] for r in rows]
    assert configurations[0] == "plain fit" and rows[0]["ratio"] == 1.0
    assert any("default" in c for c in configurations) and any("every step" in c for c in configurations)
    for row in rows:
        assert row["model"] == "tiny" and row["ratio"] > 0 and row["startup_ratio"] > 0
        assert row["ratio_95ci"][0] <= row["ratio"] <= row["ratio_95ci"][1]
    every_step = next(r for r in rows if r["configuration"] == "every statistic every step")
    # 20 measured steps, a row each, and bytes written for them.
    assert every_step["logged_rows"] == 20 and every_step["event_bytes_per_logged_row"] > 0


def test_tiny_memory_run_measures_each_configuration_in_its_own_process(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--tiny", "--memory", "--json",
         "--configs", "defaults"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    rows = json.loads(out.stdout)["memory_rows"]
    assert [r["configuration"] for r in rows] == ["plain fit", "defaults"]
    assert all(r["peak_host_bytes"] > 100 * 2**20 for r in rows)  # TensorFlow alone is more
    assert rows[0]["memory_ratio"] == 1.0


def test_xla_startup_breakdown_reports_each_step(tmp_path):
    """The XLA start-up breakdown on the tiny model: a row per configuration,
    each with a measured start-up."""
    report = run_benchmark(tmp_path, "xla_startup_breakdown.py", "--models", "tiny", "--block", "3")
    configurations = [r["configuration"] for r in report["rows"]]
    assert configurations[0] == "plain fit" and configurations[-1] == "defaults" and len(configurations) == 6
    for row in report["rows"]:
        assert row["model"] == "tiny" and row["startup_s"] > 0 and row["startup_ratio"] > 0


def test_statistics_compile_benchmark_reports_each_statistic(tmp_path):
    """The statistics' compile benchmark on the tiny model's gradient shapes:
    a row per statistic, with the model's tensor and layer counts."""
    report = run_benchmark(tmp_path, "bench_statistics_compile.py", "--models", "tiny", "--calls", "2")
    assert [r["statistics"] for r in report["rows"]] == [
        "moments", "moments and histograms", "update sums", "forward pass", "forward pass + activation statistics"]
    for row in report["rows"][:3]:
        # 2 x Dense(16) and the output Dense: a kernel and a bias each.
        assert row["model"] == "tiny" and row["tensors"] == 6 and row["layers"] == 3
        assert row["compile_s"] > 0 and row["run_ms"] > 0
    for row in report["rows"][3:]:
        # The two hidden ReLUs, 16 units each, all recorded (the script fails otherwise).
        assert row["model"] == "tiny" and row["activations"] == 2 and row["units"] == 32
        assert row["compile_s"] > 0 and row["run_ms"] > 0


def test_statistics_ab_benchmark_compares_two_checkouts(tmp_path):
    """The A/B benchmark with this checkout as both versions, on the tiny
    model: a row per statistic with both medians, and a clear error for a
    --before path that holds no tb_gradflow."""
    report = run_benchmark(tmp_path, "bench_statistics_ab.py", "--before", str(ROOT), "--models", "tiny",
                           "--calls", "2")
    assert [r["statistic"] for r in report["rows"]] == [
        "multi_tensor_statistics", "multi_tensor_update_sums", "multi_activation_statistics", "layer_histograms",
        "log10_magnitude_counts", "moments of each tensor"]
    for row in report["rows"]:
        assert row["model"] == "tiny" and row["xla"] is True and row["tensors"] == 6
        assert row["before_median_ms"] > 0 and row["after_median_ms"] > 0 and row["ratio"] > 0
    missing = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_statistics_ab.py"), "--before", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert missing.returncode == 2 and "no tb_gradflow/stats.py there" in missing.stderr


def test_refit_benchmark_reports_every_fit(tmp_path):
    """The several-fits benchmark in its tiny configuration: a row per
    configuration with each fit's seconds and its ratio to plain fit's."""
    report = run_benchmark(tmp_path, "bench_refit.py", "--tiny", "--metrics", "--json")
    assert [r["configuration"] for r in report["rows"]] == [
        "plain fit", "one callback, every fit", "a new callback per fit", "a new callback per fit, released"]
    for row in report["rows"]:
        assert row["model"] == "tiny" and row["jit_compile"] is False and row["steps_per_fit"] == 3
        assert row["metrics"] == ["accuracy"]
        assert len(row["fit_s"]) == len(row["fit_ratios"]) == 3 and all(s > 0 for s in row["fit_s"])
        assert row["later_fits_ratio"] > 0
        assert 0 < row["first_batch_s"] < row["fit_s"][0] and row["first_batch_ratio"] > 0
    assert report["rows"][0]["fit_ratios"] == [1.0, 1.0, 1.0] and report["rows"][0]["later_fits_ratio"] == 1.0
    assert report["rows"][0]["first_batch_ratio"] == 1.0


def test_statistics_path_benchmark_compares_both_paths(tmp_path):
    """The compiled-vs-per-layer benchmark in its tiny configuration: one row
    with each path's ratio to its plain fit and their quotient."""
    report = run_benchmark(tmp_path, "bench_statistics_path.py", "--tiny", "--json")
    (row,) = report["rows"]
    assert row["model"] == "tiny" and row["configuration"] == "histograms every step"
    assert row["compiled_ratio"] > 0 and row["per_layer_ratio"] > 0 and row["compiled_over_per_layer"] > 0
    assert row["compiled_plain_ms_per_step"] > 0 and row["per_layer_plain_ms_per_step"] > 0


def test_logger_benchmark_replays_a_fits_rows(tmp_path):
    """The logger-CPU benchmark in its tiny configuration, this checkout as
    both versions: the rows of a real fit replayed in fresh processes, a row
    with both figures and their quotient; a clear error for a --before path
    that holds no tb_gradflow."""
    report = run_benchmark(tmp_path, "bench_logger.py", "--tiny", "--before", str(ROOT), "--json")
    (row,) = report["rows"]
    assert row["model"] == "tiny" and row["layers"] == 3 and row["rows"] == 6 and row["repeats"] == 2
    assert row["gradflow"]["update_freq"] == row["gradflow"]["activation_freq"] == 1
    assert 0 < row["ms_per_row_range"][0] <= row["ms_per_row"] <= row["ms_per_row_range"][1]
    assert row["before_ms_per_row"] > 0 and row["after_over_before"] > 0
    missing = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_logger.py"), "--before", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert missing.returncode == 2 and "no tb_gradflow/run_logger.py there" in missing.stderr


def test_paired_benchmark_runs_both_arms_on_one_model(tmp_path):
    """The one-model benchmark in its tiny configuration, with `--split`: a
    row with the configuration's ratio, the between-rows ratio, the
    plain-vs-plain control and the device-only and no-logging arms, each
    inside its interval, the extra time split three ways (the differences
    of the arms' medians), and the hooked arm's events written."""
    report = run_benchmark(tmp_path, "bench_paired.py", "--tiny", "--split", "--json")
    (row,) = report["rows"]
    assert row["model"] == "tiny" and row["configuration"] == "defaults" and row["jit_compile"] is False
    assert row["gradflow"] == {}
    assert row["rounds"] == 2 and row["block"] == 10 and row["event_bytes"] > 0
    for name in ("ratio", "median_step_ratio", "aa_ratio", "device_only_ratio", "no_logging_ratio"):
        low, high = row[f"{name}_interval"]
        assert 0 < low <= row[name] <= high, name
    assert row["plain_ms_per_step"] > 0 and row["hooked_ms_per_step"] > 0
    assert row["device_only_ms_per_step"] > 0 and row["no_logging_ms_per_step"] > 0
    split = row["split_ms_per_step"]
    assert set(split) == {"device", "read", "logger"}
    assert sum(split.values()) == pytest.approx(row["hooked_ms_per_step"] - row["plain_ms_per_step"], abs=2e-3)
    assert "without its reads and without its logging" in report["method"]
    assert row["interleave"] == "blocks" and "a block at a time" in report["method"]


def test_paired_benchmark_can_take_turns_a_step_at_a_time(tmp_path):
    """`--interleave steps`: the arms take turns a step at a time. The row
    says so, each ratio lies inside its interval, the hooked arm's events
    are written (each hooked step waits for its logger); `--split`, whose
    arms are one callback with methods replaced for a block, is refused
    with it, by a message that names both options."""
    report = run_benchmark(tmp_path, "bench_paired.py", "--tiny", "--interleave", "steps", "--json")
    (row,) = report["rows"]
    assert row["interleave"] == "steps" and row["rounds"] == 2 and row["block"] == 10
    for name in ("ratio", "median_step_ratio", "aa_ratio"):
        low, high = row[f"{name}_interval"]
        assert 0 < low <= row[name] <= high, name
    assert row["plain_ms_per_step"] > 0 and row["hooked_ms_per_step"] > 0 and row["event_bytes"] > 0
    assert "a step at a time" in report["method"]
    refused = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_paired.py"), "--tiny", "--split", "--interleave", "steps"],
        capture_output=True, text=True, timeout=600,
    )
    assert refused.returncode == 2 and "--split needs --interleave blocks" in refused.stderr


def test_paired_benchmark_measures_a_row_across_processes(tmp_path):
    """`--processes 2`: the row is measured in two fresh processes (each
    arm traced anew in each); each ratio is the median of the processes'
    own, inside an interval that spans them, and their rows are kept.
    `--processes 0` is refused by name."""
    report = run_benchmark(tmp_path, "bench_paired.py", "--tiny", "--interleave", "steps", "--processes", "2",
                           "--json")
    (row,) = report["rows"]
    assert row["processes"] == 2 and len(row["per_process"]) == 2
    assert "2 fresh processes" in report["method"]
    for name in ("ratio", "median_step_ratio", "aa_ratio"):
        values = [r[name] for r in row["per_process"]]
        low, high = row[f"{name}_interval"]
        assert row[name] == pytest.approx(sum(values) / 2, abs=1e-4), name  # the median of two
        assert low == pytest.approx(min(values), abs=1e-4) and high == pytest.approx(max(values), abs=1e-4), name
    for r in row["per_process"]:
        assert r["interleave"] == "steps" and r["rounds"] == 2 and r["event_bytes"] > 0
    refused = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_paired.py"), "--tiny", "--processes", "0"],
        capture_output=True, text=True, timeout=600,
    )
    assert refused.returncode == 2 and "--processes must be at least 1" in refused.stderr
