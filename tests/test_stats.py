"""On-device histogram counting, checked against independent references:
TensorBoard's own numpy histogram (`histogram_pb`) for the equal-width
buckets, numpy's log10 for the magnitude buckets; eagerly and under XLA."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorboard.plugins.histogram import summary_v2  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from tb_gradflow import metadata  # noqa: E402
from tb_gradflow import stats  # noqa: E402

rng = np.random.default_rng(5)
DATA = {
    "normal": [rng.normal(size=(64, 33)).astype("float32")],
    "two tensors, wide range": [rng.normal(size=(1000,)).astype("float32") * 1e3,
                                rng.uniform(-1, 1, size=(7, 7)).astype("float32")],
    "integers on bucket edges": [np.arange(31, dtype="float32")],
    "powers of ten": [np.concatenate([10.0 ** np.arange(-22, 8), -(10.0 ** np.arange(-5, 3))]).astype("float32")],
    "magnitudes across decades": [(10.0 ** rng.uniform(-26, 4, size=5000) * rng.choice([-1, 1], 5000)).astype("float32")],
    "single value": [np.full((10,), 2.5, "float32")],
    "with nan and inf": [np.array([1.0, np.nan, -2.0, np.inf, 3.0, -np.inf, 0.0], "float32")],
    "all non-finite": [np.array([np.nan, np.inf], "float32")],
}


def tensorboard_counts(arrays):
    finite = np.concatenate([a.ravel() for a in arrays])
    finite = finite[np.isfinite(finite)]
    proto = summary_v2.histogram_pb("t", finite, buckets=metadata.HISTOGRAM_BUCKETS)
    return tensor_util.make_ndarray(proto.value[0].tensor)[:, 2].astype(int)


def on_device(arrays, jit):
    @tf.function(jit_compile=jit)
    def count(*tensors):
        low, high = stats.finite_range(list(tensors))
        return low, high, stats.equal_width_counts(list(tensors), low, high), stats.log10_magnitude_counts(list(tensors))

    return [np.asarray(t) for t in count(*[tf.constant(a) for a in arrays])]


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", list(DATA))
def test_counts_match_independent_references(name, jit):
    arrays = DATA[name]
    low, high, counts, log_counts = on_device(arrays, jit)
    values = np.concatenate([a.ravel() for a in arrays])
    finite = values[np.isfinite(values)]
    assert (low, high) == ((finite.min(), finite.max()) if finite.size else (0.0, 0.0))
    np.testing.assert_array_equal(counts, tensorboard_counts(arrays))
    nonzero = np.abs(finite[finite != 0]).astype(np.float64)
    decades = np.clip(np.floor(np.log10(nonzero)).astype(int) - metadata.LOG10_LOW, 0, metadata.LOG10_BUCKETS - 1)
    np.testing.assert_array_equal(log_counts, np.bincount(decades, minlength=metadata.LOG10_BUCKETS))
