"""The reading side must work where TensorFlow is not installed.

Each check runs in a fresh interpreter whose import system refuses
`tensorflow` and `keras` (as on a TensorBoard server that installed only
tensorboard and tb_gradflow), over a run written without TensorFlow.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tb_gradflow import metadata
from tb_gradflow.proto import plugin_data_pb2
from tb_gradflow.writer import EventWriter

BLOCK_TENSORFLOW = textwrap.dedent(
    """
    import importlib.abc, sys
    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is not installed here")
    sys.meta_path.insert(0, NoTensorFlow())
    """
)


def run_without_tensorflow(code):
    script = BLOCK_TENSORFLOW + textwrap.dedent(code) + textwrap.dedent(
        """
        leaked = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        assert not leaked, leaked
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def synthetic_logdir(tmp_path_factory):
    """One run, 3 layers, the first two vanishing, written with no TensorFlow."""
    logdir = tmp_path_factory.mktemp("tf_free")
    writer = EventWriter(logdir / "synthetic")
    table = plugin_data_pb2.LayerTable(
        layers=[plugin_data_pb2.Layer(name=f"dense_{i}", depth=i, has_gradient=True) for i in range(3)],
        thresholds={"vanishing_patience": 3},
        update_freq=1,
    )
    writer.write_layer_table(0, table)
    for step in range(1, 11):
        rms = np.array([1e-4, 1e-2, 1.0])
        writer.write_layer_statistics(step, {
            metadata.GRAD_RMS: rms, metadata.GRAD_MEAN_ABS: rms, metadata.GRAD_NORM: rms,
            metadata.GRAD_NORM_INTERVAL_MAX: rms, metadata.NONFINITE_COUNT: np.zeros(3),
        })
    writer.close()
    return logdir


def test_check_cli_runs_without_tensorflow(synthetic_logdir):
    result = run_without_tensorflow(
        f"""
        from tb_gradflow import cli
        status = cli.main(["check", {str(synthetic_logdir)!r}])
        assert status == cli.EXIT_ALERTS, status
        """
    )
    assert result.returncode == 0, result.stderr
    assert "dense_0" in result.stdout and "vanishing" in result.stdout


def test_package_and_reader_import_without_tensorflow(synthetic_logdir):
    result = run_without_tensorflow(
        f"""
        import tb_gradflow
        # Tab completion offers the lazy names before anything loaded them.
        assert {{"GradFlow", "GradientWriter", "Thresholds"}} <= set(dir(tb_gradflow)), dir(tb_gradflow)
        from tb_gradflow import reader, rules, metadata, writer, aggregate, run_logger, event_file, background_logger
        r = reader.Reader.for_logdir({str(synthetic_logdir)!r})
        assert r.runs() == ["synthetic"], r.runs()
        assert [a.layer for a in r.alerts("synthetic")] == ["dense_0", "dense_1"]
        try:
            tb_gradflow.GradFlow
        except ImportError as e:
            assert "tensorflow" in str(e) or "keras" in str(e), e
        else:
            raise AssertionError("GradFlow imported without TensorFlow")
        """
    )
    assert result.returncode == 0, result.stderr
