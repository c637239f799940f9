"""Logdirs and servers for the plugin's tests (route, loader, browser) and its benchmark.

Import what a test module needs (`from plugin_fixtures import ...`). Builders
cache their output per process, so modules that share a logdir train or
write it once. Synthetic runs use `tb_gradflow.writer.EventWriter` and need no
TensorFlow; runs with real Keras models import TensorFlow inside the builder.
"""

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

from tb_gradflow import metadata
from tb_gradflow.proto import plugin_data_pb2
from tb_gradflow.writer import EventWriter

# A layer name that is an HTML injection if anything renders it as markup.
XSS_LAYER = "<img src=x onerror=alert(1)>"
SATURATION_STATISTIC = "saturated_fraction"

_TMP = None


def _tmpdir(name):
    global _TMP
    if _TMP is None:
        _TMP = tempfile.mkdtemp(prefix="tb_gradflow_plugin_tests_")
    path = os.path.join(_TMP, name)
    os.makedirs(path, exist_ok=True)
    return path


def layer_table(names, *, update_freq=1, histogram_freq=0, has_gradient=None):
    has_gradient = has_gradient if has_gradient is not None else [True] * len(names)
    return plugin_data_pb2.LayerTable(
        layers=[
            plugin_data_pb2.Layer(
                name=name, class_name="Dense", activation="relu", depth=i, parameter_count=10, has_gradient=g
            )
            for i, (name, g) in enumerate(zip(names, has_gradient))
        ],
        update_freq=update_freq,
        histogram_freq=histogram_freq,
        source="synthetic (tests/plugin_fixtures.py)",
        capture_point="synthetic",
    )


def synthetic_values(n_steps, n_layers, seed=0):
    """Gradient norms that shrink with depth from the output, with noise: [steps, layers] float32."""
    rng = np.random.default_rng(seed)
    depth_scale = 10.0 ** np.linspace(-3.0, 0.0, n_layers)  # input layers ~1000x smaller
    drift = 10.0 ** np.linspace(0.0, -0.5, n_steps)[:, None]
    noise = 10.0 ** rng.normal(0.0, 0.15, (n_steps, n_layers))
    return (depth_scale[None, :] * drift * noise).astype(np.float32)


def write_synthetic_run(
    run_dir,
    *,
    n_layers=5,
    n_steps=100,
    names=None,
    seed=0,
    nonfinite_at=None,
    spike_at=None,
    saturation=False,
    histogram_every=0,
    has_gradient=None,
    statistics=None,
):
    """Writes a run of `n_steps` logged steps (steps 1..n_steps) without TensorFlow.

    Args:
      nonfinite_at: (step, layer) whose norm is NaN (and nonfinite_count 7).
      spike_at: (step, layer) whose norm is 1e6x its neighbours.
      saturation: also write `gradflow/activation/saturated_fraction` vectors.
      histogram_every: write both gradient histograms every this many steps.
      statistics: which statistics to write (default: the rules' inputs,
        max |g| and the update ratio).

    Returns:
      the values written for grad_norm, float32 [n_steps, n_layers].
    """
    names = names or [f"model/dense_{i}" for i in range(n_layers)]
    n_layers = len(names)
    writer = EventWriter(run_dir)
    writer.write_layer_table(0, layer_table(names, histogram_freq=histogram_every, has_gradient=has_gradient))
    norm = synthetic_values(n_steps, n_layers, seed)
    nonfinite = np.zeros_like(norm)
    if spike_at is not None:
        norm[spike_at[0] - 1, spike_at[1]] *= 1e6
    if nonfinite_at is not None:
        norm[nonfinite_at[0] - 1, nonfinite_at[1]] = np.nan
        nonfinite[nonfinite_at[0] - 1, nonfinite_at[1]] = 7
    rms = norm / 10.0
    stats = {
        metadata.GRAD_NORM: norm,
        metadata.GRAD_RMS: rms,
        metadata.GRAD_MEAN_ABS: rms * 0.8,
        metadata.GRAD_MAX_ABS: rms * 3.0,
        metadata.GRAD_NORM_INTERVAL_MAX: norm * 1.1,
        metadata.NONFINITE_COUNT: nonfinite,
        metadata.UPDATE_RATIO: np.full_like(norm, 1e-3),
    }
    if statistics is not None:
        stats = {k: v for k, v in stats.items() if k in statistics}
    saturation_md = None
    if saturation:
        saturation_md = metadata.create_statistic_metadata(metadata.GRAD_NORM, per="layer")
        content = plugin_data_pb2.GradflowPluginData(
            version=metadata.PROTO_VERSION,
            kind=plugin_data_pb2.GradflowPluginData.LAYER_STATISTIC,
            statistic=SATURATION_STATISTIC,
        )
        saturation_md.plugin_data.content = content.SerializeToString()
        saturation_md.summary_description = "synthetic saturation"
    for i in range(n_steps):
        step = i + 1
        writer.write_layer_statistics(step, {k: v[i] for k, v in stats.items()})
        if saturation_md is not None:
            tag = f"{metadata.TAG_PREFIX}/activation/{SATURATION_STATISTIC}"
            frac = np.linspace(0.01, 0.6, n_layers).astype(np.float32)
            writer._emit(step, [writer._summary_value(tag, frac, saturation_md)])
        if histogram_every and step % histogram_every == 0:
            counts = np.ones((n_layers, metadata.HISTOGRAM_BUCKETS))
            log10_counts = np.zeros((n_layers, metadata.LOG10_BUCKETS))
            log10_counts[:, 20] = 5
            writer.write_histograms(
                step,
                [(d, name) for d, name in enumerate(names)],
                -np.ones(n_layers),
                np.ones(n_layers),
                counts,
                log10_counts,
            )
    writer.close()
    return norm


@functools.lru_cache(maxsize=None)
def synthetic_logdir():
    """TF-free logdir: 'small' (5 layers, NaN at step 40 layer 2, spike, histograms,
    saturation), 'long' (3 layers x 10,000 steps), 'xss' (the injection layer name)."""
    logdir = _tmpdir("synthetic")
    write_synthetic_run(
        os.path.join(logdir, "small"),
        n_layers=5,
        n_steps=100,
        nonfinite_at=(40, 2),
        spike_at=(70, 4),
        saturation=True,
        histogram_every=10,
    )
    write_synthetic_run(
        os.path.join(logdir, "long"), n_layers=3, n_steps=10_000, statistics=(metadata.GRAD_NORM,)
    )
    write_xss_run(os.path.join(logdir, "xss"))
    return logdir


def write_xss_run(run_dir):
    """A run whose middle layer is named XSS_LAYER.

    Written with EventWriter, not trained: Keras accepts the name for a layer
    but TensorFlow refuses it as a name scope when the layer is called
    ("not a valid scope name"), so no Keras model can carry it. A PyTorch
    hook or the custom-loop writer could, which is why the plugin must not
    trust layer names.
    """
    write_synthetic_run(run_dir, names=["xss/hidden", XSS_LAYER, "xss/out"], n_steps=60, histogram_every=20,
                        seed=3)


@functools.lru_cache(maxsize=None)
def demo_logdir(seed001_logdir):
    """seed 001's runs (trained by conftest's seed001_logdir) under seed001/, plus
    xss/ and names/ (synthetic: an injection name, a 10,000-character name and a
    right-to-left override) and killed/ (a layer table without rows: unreadable)."""
    logdir = _tmpdir("demo")
    target = os.path.join(logdir, "seed001")
    if not os.path.isdir(target):
        shutil.copytree(seed001_logdir, target)
    for name, write in (("xss", write_xss_run), ("names", write_names_run), ("killed", write_table_only_run)):
        if not os.path.isdir(os.path.join(logdir, name)):
            write(os.path.join(logdir, name))
    return logdir


# ------------------------------------------------------------------------ servers
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=30):
    """(status, headers, body bytes) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@contextlib.contextmanager
def tensorboard_server(logdir, *extra_flags, startup_timeout=120, launcher=("-m", "tensorboard.main")):
    """A real `tensorboard --logdir` on 127.0.0.1; yields its base URL.

    `launcher`: the Python arguments that start it (benchmarks/bench_heatmap.py
    passes a `-c` script that runs TensorBoard with TensorFlow unimportable).
    """
    port = free_port()
    command = [
        sys.executable, *launcher, "--logdir", str(logdir),
        "--host", "127.0.0.1", "--port", str(port), *extra_flags,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + startup_timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"tensorboard exited with {process.returncode}:\n{log.read().decode(errors='replace')}")
            try:
                status, _, body = http_get(url + "/data/plugins_listing", timeout=2)
                # The Rust data server answers once it has loaded the logdir.
                if status == 200 and b"gradflow" in body:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"tensorboard did not answer on {url} within {startup_timeout}s")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.seek(0)
        server_log = log.read().decode(errors="replace")
        log.close()
        tensorboard_server.last_log = server_log


tensorboard_server.last_log = ""


def has_data_server():
    """Whether the Rust data server (`--load_fast=true`) is installed."""
    try:
        from tensorboard.data import server_ingester

        return server_ingester.get_server_binary() is not None
    except Exception:
        return False


def _wait_for_listing(url, satisfied, what, timeout):
    """Polls /runs until `satisfied(listing)`; returns the listing."""
    import json

    deadline = time.time() + timeout
    while True:
        status, _, body = http_get(url + "/data/plugin/gradflow/runs")
        if status == 200:
            listing = json.loads(body)
            if satisfied(listing):
                return listing
        if time.time() > deadline:
            raise TimeoutError(f"{what} did not appear at {url}")
        time.sleep(0.5)


def wait_for_run(url, run, tag_check=None, timeout=60):
    """Waits until /runs lists `run` (the data server loads in the background)."""

    def listed(listing):
        runs = {r["run"]: r for r in listing["runs"]}
        return run in runs and (tag_check is None or tag_check(runs[run]))

    listing = _wait_for_listing(url, listed, f"run {run!r}", timeout)
    return {r["run"]: r for r in listing["runs"]}


def wait_for_runs(url, runs, timeout=60):
    """Waits until /runs lists every one of `runs`, readable or not: both
    loaders list runs as they load them, in no fixed order."""

    def listed(listing):
        return set(runs) <= {r["run"] for r in listing["runs"] + listing.get("unreadable", [])}

    return _wait_for_listing(url, listed, f"runs {sorted(runs)}", timeout)


@functools.lru_cache(maxsize=None)
def combined_logdir(seed001_logdir):
    """seed001/ (real hook data) and synthetic/ (long, small, xss) in one logdir."""
    logdir = _tmpdir("combined")
    for name, source in (("seed001", seed001_logdir), ("synthetic", synthetic_logdir())):
        target = os.path.join(logdir, name)
        if not os.path.isdir(target):
            shutil.copytree(source, target)
    return logdir


# ------------------------------------------------------------------ broken logs
# Runs as jobs and disks break them, made for real: the writer's own files cut
# short, a corrupt layer table, data of a newer format version.
LONG_LAYER = "deep/" + "block_" * 1665 + "end"  # 10,000 characters
RLO_LAYER = "head/\u202eexe.gnp"  # a right-to-left override turning the rest around
CUT_REASON_WORDS = "no statistic rows"


def write_table_only_run(run_dir):
    """A job killed after its layer table and before its first statistic row."""
    writer = EventWriter(run_dir)
    writer.write_layer_table(0, layer_table(["killed/dense_0", "killed/dense_1"]))
    writer.close()


def write_corrupt_table_run(run_dir, n_steps=20):
    """Statistic rows whose layer table is not a LayerTable (a corrupt record payload)."""
    write_synthetic_run(run_dir, n_layers=3, n_steps=n_steps, seed=5)
    writer = EventWriter(run_dir, filename_suffix=".gradflow.corrupt")
    # The last layer table wins; this one is bytes protobuf cannot parse.
    garbage = np.array(b"\x0a\xff\xff\xff\xff\x0f" + bytes(range(256)), dtype=object)
    writer._emit(n_steps + 1, [writer._summary_value(metadata.LAYER_TABLE_TAG, garbage,
                                                      metadata.create_layer_table_metadata())])
    writer.close()
    # TensorBoard reads a run's files in name order, and a name holds the
    # process' file counter: "...10.gradflow.corrupt" sorts before
    # "...9.gradflow" (as it did when other tests had opened files first).
    # The good file's name with a suffix sorts after it whatever the counter.
    [good] = [name for name in os.listdir(run_dir) if name.endswith(".gradflow")]
    [corrupt] = [name for name in os.listdir(run_dir) if name.endswith(".gradflow.corrupt")]
    os.rename(os.path.join(run_dir, corrupt), os.path.join(run_dir, good + ".corrupt"))


def write_newer_version_run(run_dir, version=None):
    """A run written by a (hypothetical) newer tb_gradflow: PROTO_VERSION + 1 in every series' metadata."""
    saved = metadata.PROTO_VERSION
    metadata.PROTO_VERSION = version or saved + 1
    try:
        write_synthetic_run(run_dir, n_layers=3, n_steps=20, seed=6)
    finally:
        metadata.PROTO_VERSION = saved


def write_names_run(run_dir):
    """A run whose layers are named LONG_LAYER and RLO_LAYER (synthetic, alerts fire on the first)."""
    write_synthetic_run(run_dir, names=[LONG_LAYER, RLO_LAYER, "names/out"], n_steps=60, seed=7, histogram_every=20)


def event_file(run_dir):
    """The single event file of a run directory."""
    names = [n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents")]
    assert len(names) == 1, names
    return os.path.join(run_dir, names[0])


def truncate_copy(source_run, target_run, size):
    """`source_run` copied to `target_run` with its event file cut to `size` bytes."""
    os.makedirs(target_run, exist_ok=True)
    source = event_file(source_run)
    with open(source, "rb") as f:
        data = f.read(size)
    with open(os.path.join(target_run, os.path.basename(source)), "wb") as f:
        f.write(data)


@functools.lru_cache(maxsize=None)
def faulty_logdir():
    """good/a and good/b beside: killed/train (table, no rows), corrupt/train
    (undecodable layer table), newer/train (format version 2), partial/train
    (statistics without the rules' inputs) and cut/train (an event file cut
    in the middle of a record)."""
    logdir = _tmpdir("faulty")
    write_synthetic_run(os.path.join(logdir, "good", "a"), n_layers=4, n_steps=60, seed=1, nonfinite_at=(30, 1))
    write_synthetic_run(os.path.join(logdir, "good", "b"), n_layers=3, n_steps=40, seed=2, histogram_every=10)
    write_table_only_run(os.path.join(logdir, "killed", "train"))
    write_corrupt_table_run(os.path.join(logdir, "corrupt", "train"))
    write_newer_version_run(os.path.join(logdir, "newer", "train"))
    write_synthetic_run(os.path.join(logdir, "partial", "train"), n_layers=2, n_steps=10,
                        statistics=(metadata.GRAD_NORM,))
    source = _tmpdir("faulty_source")
    write_synthetic_run(source, n_layers=3, n_steps=30, seed=3)
    truncate_copy(source, os.path.join(logdir, "cut", "train"), os.path.getsize(event_file(source)) * 2 // 3 + 5)
    return logdir


@functools.lru_cache(maxsize=None)
def good_only_logdir():
    """The good runs of faulty_logdir() alone: a broken run beside them must not change their responses."""
    logdir = _tmpdir("good_only")
    target = os.path.join(logdir, "good")
    if not os.path.isdir(target):
        shutil.copytree(os.path.join(faulty_logdir(), "good"), target)
    return logdir


def reference_cells(values, max_columns):
    """The heatmap cell indices by tb_gradflow.plugin.downsample's rule (its module
    docstring), sample by sample in log space: slow and plain, to test against."""
    from tb_gradflow.plugin import downsample

    values = np.asarray(values, np.float64)  # the definition's logs are of the exact values (float32 widens exactly)
    n, n_layers = values.shape
    starts, ends = downsample.bucket_bounds(n, max_columns)
    index = np.zeros((starts.size, n_layers), np.int64)
    with np.errstate(divide="ignore"):
        logs = np.where(values == 0, -400.0, np.log10(np.abs(np.where(np.isfinite(values), values, 1.0))))
    for layer in range(n_layers):
        usable = np.isfinite(values[:, layer]) & (values[:, layer] != 0)
        median = float(np.median(logs[usable, layer])) if usable.any() else 0.0
        for column, (lo, hi) in enumerate(zip(starts, ends)):
            bucket = values[lo:hi, layer]
            bad = np.flatnonzero(~np.isfinite(bucket))
            if bad.size:
                index[column, layer] = lo + bad[0]
                continue
            low, high = logs[lo:hi, layer].min(), logs[lo:hi, layer].max()
            pick = high if high - median >= median - low else low
            index[column, layer] = lo + np.flatnonzero(logs[lo:hi, layer] == pick)[0]
    return index
