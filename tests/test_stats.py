"""On-device histogram counting, checked against independent references:
TensorBoard's own numpy histogram (`histogram_pb`) for the equal-width
buckets, numpy's log10 for the magnitude buckets; eagerly and under XLA."""

import fractions
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
        tensors = list(tensors)
        low, high = stats.finite_range(tensors)
        separate = low, high, stats.equal_width_counts(tensors, low, high), stats.log10_magnitude_counts(tensors)
        joined_range, joined_counts, joined_log_counts = stats.layer_histograms(tensors, tf.constant(1.0))
        return separate, (joined_range[0], joined_range[1], joined_counts, joined_log_counts)

    return [[np.asarray(t) for t in results] for results in count(*[tf.constant(a) for a in arrays])]


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", list(DATA))
def test_counts_match_independent_references(name, jit):
    """Each statistic on its own, and `layer_histograms` (which counts both
    histograms at once where the elements outnumber the joint keys: the
    5000 magnitudes across decades)."""
    arrays = DATA[name]
    values = np.concatenate([a.ravel() for a in arrays])
    finite = values[np.isfinite(values)]
    nonzero = np.abs(finite[finite != 0]).astype(np.float64)
    decades = np.clip(np.floor(np.log10(nonzero)).astype(int) - metadata.LOG10_LOW, 0, metadata.LOG10_BUCKETS - 1)
    for low, high, counts, log_counts in on_device(arrays, jit):
        assert (low, high) == ((finite.min(), finite.max()) if finite.size else (0.0, 0.0))
        np.testing.assert_array_equal(counts, tensorboard_counts(arrays))
        np.testing.assert_array_equal(log_counts, np.bincount(decades, minlength=metadata.LOG10_BUCKETS))


def _count_ops(concrete_function):
    return sum(op.type == "DenseBincount" for op in concrete_function.graph.get_operations())


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_histogram_counts_one_count_where_elements_outnumber_joint_keys(jit):
    """`stats.histogram_counts` counts (layer, bucket, decade) keys once where
    the elements are at least as many as the keys, else twice; both give
    the counts numpy gives, over three layers, with non-finite elements,
    zeros and every bucket index."""
    n_layers, keys = 3, metadata.HISTOGRAM_BUCKETS * (metadata.LOG10_BUCKETS + 1)
    for size in (n_layers * keys, n_layers * keys - 1):
        x = (10.0 ** rng.uniform(-25, 5, size=size) * rng.choice([-1, 0, 1], size=size)).astype("float32")
        x[::97] = np.nan
        x[5::101] = -np.inf
        index = rng.integers(0, metadata.HISTOGRAM_BUCKETS, size=size).astype("int32")
        layer = rng.integers(0, n_layers, size=size).astype("int32")

        @tf.function(jit_compile=jit)
        def count(x, index, layer):
            return stats.histogram_counts(x, tf.math.is_finite(x), index, layer, n_layers)

        arguments = [tf.constant(a) for a in (x, index, layer)]
        assert _count_ops(count.get_concrete_function(*arguments)) == (1 if size == n_layers * keys else 2)
        counts, log_counts = (t.numpy() for t in count(*arguments))
        finite = np.isfinite(x)
        nonzero = finite & (x != 0)
        decades = np.clip(np.floor(np.log10(np.abs(x[nonzero]).astype(np.float64))).astype(int) - metadata.LOG10_LOW,
                          0, metadata.LOG10_BUCKETS - 1)
        for li in range(n_layers):
            np.testing.assert_array_equal(
                counts[li], np.bincount(index[finite & (layer == li)], minlength=metadata.HISTOGRAM_BUCKETS))
            np.testing.assert_array_equal(
                log_counts[li], np.bincount(decades[layer[nonzero] == li], minlength=metadata.LOG10_BUCKETS))


def exact_decade_bucket(value):
    """The log10 bucket of a float32 |value| by exact rational arithmetic:
    how many of the boundaries 10^(LOG10_LOW + 1) ... 10^(LOG10_HIGH - 1) it
    is at or above (no floating-point log)."""
    magnitude = fractions.Fraction(abs(float(value)))
    return sum(magnitude >= fractions.Fraction(10) ** k for k in range(metadata.LOG10_LOW + 1, metadata.LOG10_HIGH))


def float32_neighbours_of_powers_of_ten(ulps=3):
    """Every float32 within `ulps` steps of the float32 nearest each 10^k, for
    k over the log10 buckets and a decade beyond, both signs; with the
    smallest normal and the largest float32. (No subnormals: TensorFlow's
    CPU kernels flush them to zero, XLA's do not, so where they count
    depends on the path.)"""
    values = []
    for k in range(metadata.LOG10_LOW - 2, metadata.LOG10_HIGH + 2):
        value = np.float32(10.0 ** k)
        for _ in range(ulps):
            value = np.nextafter(value, np.float32(-np.inf))
        for _ in range(2 * ulps + 1):
            values.append(value)
            value = np.nextafter(value, np.float32(np.inf))
    special = np.array([np.finfo(np.float32).tiny, np.finfo(np.float32).max], np.float32)
    values = np.concatenate([np.asarray(values, np.float32), special])
    return np.concatenate([values, -values])


def test_binary_exponent_to_decade_identity():
    # stats._decade_index's integer floor(e * log10 2), over every float32 binary exponent.
    exponents = np.arange(-127, 129)
    expected = np.floor(exponents * np.log10(2.0)).astype(int)
    got = (exponents * stats._LOG10_2_NUMERATOR) >> stats._LOG10_2_SHIFT
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_decade_buckets_exact_at_every_power_of_ten(jit):
    values = float32_neighbours_of_powers_of_ten()
    expected = np.bincount([exact_decade_bucket(v) for v in values], minlength=metadata.LOG10_BUCKETS)
    log_counts = tf.function(lambda t: stats.log10_magnitude_counts([t]), jit_compile=jit)(tf.constant(values))
    np.testing.assert_array_equal(log_counts.numpy(), expected)
    # The same values through the row layout of the inline statistics.
    _, (_, _, row_counts) = tf.function(
        lambda t: stats.multi_tensor_statistics([t], [0], 1, tf.constant(1.0)), jit_compile=jit
    )(tf.constant(values))
    np.testing.assert_array_equal(row_counts.numpy()[0], expected)


def numpy_moments(array):
    """gradient_moments' five columns, from numpy in float64."""
    a = array.astype(np.float64).ravel()
    finite = a[np.isfinite(a)]
    return [np.sum(finite ** 2), np.sum(np.abs(finite)), np.max(np.abs(finite), initial=0.0),
            np.sum(a == 0), np.sum(~np.isfinite(a))]


MOMENT_CASES = {
    "normal": rng.normal(size=(64, 33)).astype("float32"),
    "with zeros and negative zeros": np.array([0.0, -0.0, 1.5, -2.0, 0.0], "float32"),
    "with nan and inf": np.array([1.0, np.nan, -2.0, np.inf, 3.0, -np.inf, 0.0], "float32"),
    "all non-finite": np.array([np.nan, np.inf], "float32"),
    # Finite, but the squares overflow float32: the raw sum is Inf as a NaN's would be.
    "squares overflow": np.array([3e19, -1.0, 0.0], "float32"),
    "subnormals": np.array([1e-40, -1e-42, 0.0, 1.0], "float32"),
    "empty": np.zeros([0, 3], "float32"),
}


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", list(MOMENT_CASES))
def test_moments_masked_only_if_needed_equal_the_masked_moments(name, jit):
    """The isolated calls' moments skip the non-finite mask where the raw sum
    of squares is finite; they must be the masked formula's exactly, and
    numpy's (float64) within float32 rounding."""
    array = MOMENT_CASES[name]
    both = tf.function(lambda t: (stats.gradient_moments(t), stats.gradient_moments_masked_if_needed(t)),
                       jit_compile=jit)
    masked, branched = (m.numpy() for m in both(tf.constant(array)))
    np.testing.assert_array_equal(branched, masked)  # exact (+0 and -0 count as equal)
    if name != "subnormals":
        # (Whether a subnormal counts as zero depends on the CPU's and the
        # compiler's flush-to-zero settings; both versions agree above.)
        with np.errstate(over="ignore"):  # "squares overflow": float64 9e38 is float32 inf, as on the device
            expected = np.float32(numpy_moments(array))
        np.testing.assert_allclose(branched, expected, rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_row_sums_by_dot_match_the_reduction(jit):
    """`sum_rows` by a dot product against float64 numpy (within float32
    rounding; the reduction too), and `count_rows` by one exactly, at the
    widest rows `chunk_rows` makes (a count there is at most 4096, exact
    in the dot's float32 partial sums): the XLA-on-CPU path of the inline
    statistics."""
    width = max(stats.CHUNK_WIDTHS)
    values = rng.normal(size=(37, width)).astype("float32") * np.float32(10.0) ** rng.integers(-20, 20, size=(37, 1))
    mask = rng.random(size=(37, width)) < np.linspace(0.0, 1.0, 37)[:, None]
    mask[-1] = True  # a full row: the largest count

    @tf.function(jit_compile=jit)
    def compute(rows, flags):
        return [stats.sum_rows(rows, by_dot) for by_dot in (False, True)] + [
            stats.count_rows(flags, by_dot) for by_dot in (False, True)]

    reduced, dotted, counted, counted_by_dot = (t.numpy() for t in compute(tf.constant(values), tf.constant(mask)))
    expected = values.astype(np.float64).sum(axis=1)
    scale = np.abs(values).astype(np.float64).sum(axis=1)  # cancellation: error relative to the sum of |x|
    np.testing.assert_array_less(np.abs(dotted - expected), 1e-5 * scale)
    np.testing.assert_array_less(np.abs(reduced - expected), 1e-5 * scale)
    assert counted_by_dot.dtype == np.int32
    np.testing.assert_array_equal(counted_by_dot, mask.sum(axis=1))
    np.testing.assert_array_equal(counted, mask.sum(axis=1))


def _shared_size_layer(i):
    # One size, two shapes in turn: chunk_rows stacks by shape within a
    # size, so its rows are not in the tensors' order.
    a = rng.normal(size=(49,) if i % 3 == 1 else (7, 7)).astype("float32") * 10.0 ** (i - 6)
    if i % 4 == 1:
        a.flat[(i % 7) * 7] = np.nan
    return [a]


@pytest.mark.parametrize("by_dot", [False, True], ids=["reduce", "dot"])
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("static_sizes", [True, False], ids=["chunked", "unknown size, per layer"])
def test_multi_tensor_statistics_match_independent_references(jit, static_sizes, by_dot):
    """Every DATA case is one layer, plus a layer without tensors, a zero-size
    tensor, and twelve layers of one size (so that chunks of one stack belong
    to different layers and a tensor spans several chunks): the statistics
    give each tensor's moments and each layer's range and counts as numpy and
    TensorBoard's histogram do. With static sizes the tensors are cut into
    chunks; a tensor of unknown size (a trace with a `None` dimension) sends
    them all to the per-tensor and per-layer functions. Sums along the rows
    by reductions and by dot products (`stats.sum_rows`)."""
    layers = list(DATA.values()) + [[], [rng.normal(size=(7, 7)).astype("float32"), np.zeros([0], "float32")]]
    layers += [_shared_size_layer(i) for i in range(12)]
    tensors = [a for arrays in layers for a in arrays]
    layer_of_tensor = [li for li, arrays in enumerate(layers) for _ in arrays]
    width = stats.chunk_width([a.size for a in tensors])
    assert max(a.size for a in tensors) > width  # some tensor spans several chunks
    scale = 4.0
    signature = [tf.TensorSpec(a.shape if static_sizes or i else [None] * a.ndim, tf.float32)
                 for i, a in enumerate(tensors)]

    @tf.function(jit_compile=jit, input_signature=signature)
    def compute(*arrays):
        return stats.multi_tensor_statistics(list(arrays), layer_of_tensor, len(layers), tf.constant(scale),
                                             by_dot=by_dot)

    moments, (ranges, counts, log_counts) = compute(*[tf.constant(a) for a in tensors])
    for i, a in enumerate(tensors):
        np.testing.assert_allclose(moments[i], numpy_moments(a / np.float32(scale)), rtol=1e-5, err_msg=f"tensor {i}")
    for li, arrays in enumerate(layers):
        scaled = [a / np.float32(scale) for a in arrays]
        values = np.concatenate([a.ravel() for a in scaled]) if scaled else np.zeros([0], "float32")
        finite = values[np.isfinite(values)]
        expected_range = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        assert tuple(ranges[li].numpy()) == expected_range, f"layer {li}"
        expected_counts = tensorboard_counts(scaled) if finite.size else np.zeros(metadata.HISTOGRAM_BUCKETS, int)
        np.testing.assert_array_equal(counts[li], expected_counts, err_msg=f"layer {li}")
        nonzero = np.abs(finite[finite != 0]).astype(np.float64)
        decades = np.clip(np.floor(np.log10(nonzero)).astype(int) - metadata.LOG10_LOW, 0, metadata.LOG10_BUCKETS - 1)
        np.testing.assert_array_equal(log_counts[li], np.bincount(decades, minlength=metadata.LOG10_BUCKETS),
                                      err_msg=f"layer {li}")


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("static_sizes", [True, False], ids=["chunked", "unknown size, per layer"])
def test_multi_tensor_statistics_histograms_gated_by_a_tensor(jit, static_sizes):
    """`histograms` as a bool tensor (the recorder's compiled call, which
    serves rows with and without histograms): where it holds, the same
    moments and histograms as with `histograms=True`; where it does not, the
    same moments and zero histograms."""
    tensors = [_shared_size_layer(i)[0] for i in range(5)] + [rng.normal(size=(3, 4)).astype("float32")]
    layer_of_tensor = [0, 0, 1, 2, 2, 3]
    signature = [tf.TensorSpec(a.shape if static_sizes else [None] * a.ndim, tf.float32) for a in tensors]

    @tf.function(jit_compile=jit, input_signature=[tf.TensorSpec([], tf.bool)] + signature)
    def gated(hist, *arrays):
        return stats.multi_tensor_statistics(list(arrays), layer_of_tensor, 5, tf.constant(2.0), histograms=hist)

    @tf.function(jit_compile=jit, input_signature=signature)
    def always(*arrays):
        return stats.multi_tensor_statistics(list(arrays), layer_of_tensor, 5, tf.constant(2.0))

    inputs = [tf.constant(a) for a in tensors]
    expected_moments, expected_histograms = always(*inputs)
    moments, histograms = gated(tf.constant(True), *inputs)
    # Sums may be fused (and so rounded) differently in the two functions;
    # extremes and counts are exact.
    np.testing.assert_allclose(moments, expected_moments, rtol=1e-6)
    for got, expected in zip(histograms, expected_histograms):
        np.testing.assert_array_equal(got, expected)
    moments, histograms = gated(tf.constant(False), *inputs)
    np.testing.assert_allclose(moments, expected_moments, rtol=1e-6)
    assert all(not np.any(h.numpy()) for h in histograms)
    assert [h.shape.as_list() for h in histograms] == [[5, 2], [5, metadata.HISTOGRAM_BUCKETS],
                                                        [5, metadata.LOG10_BUCKETS]]


@pytest.mark.parametrize("by_dot", [False, True], ids=["reduce", "dot"])
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("static_sizes", [True, False], ids=["chunked", "unknown size, per tensor"])
def test_multi_tensor_update_sums_match_numpy(jit, static_sizes, by_dot):
    """Tensors of one size and of sizes of their own, a NaN weight; with a
    tensor of unknown size (a `None` dimension in the trace) the sums go
    tensor by tensor. And the weight norms alone (`multi_tensor_sum_squares`)."""
    # Size 12 in two shapes, interleaved (chunk_rows' rows go by shape).
    weights = [rng.normal(size=s).astype("float32") for s in [(3, 4), (4,), (12,), (2, 2), (3, 4)]]
    weights[1][2] = np.nan
    before = [w + rng.normal(size=w.shape).astype("float32") for w in weights]

    def finite_sum(x):
        x = x.astype(np.float64)
        return np.sum(x[np.isfinite(x)] ** 2)

    specs = [tf.TensorSpec(w.shape if static_sizes or i else [None] * w.ndim, tf.float32) for i, w in enumerate(weights)]
    update_sums = tf.function(lambda w, b: stats.multi_tensor_update_sums(w, b, by_dot), jit_compile=jit,
                              input_signature=[specs, specs])
    sums = update_sums([tf.constant(w) for w in weights], [tf.constant(b) for b in before])
    expected = [[finite_sum(w), finite_sum(w - b), finite_sum(b)] for w, b in zip(weights, before)]
    np.testing.assert_allclose(sums, expected, rtol=1e-5)
    # The weight norms alone (no update ratio), the same way.
    norms = tf.function(lambda w: stats.multi_tensor_sum_squares(w, by_dot), jit_compile=jit, input_signature=[specs])(
        [tf.constant(w) for w in weights])
    np.testing.assert_allclose(norms, [finite_sum(w) for w in weights], rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_multi_activation_statistics_of_an_empty_tensor(jit):
    """An activation with no elements (a batch of 0) next to two of its
    unit count: it counts nothing, and the others' statistics are what
    they are alone (its rows, none, shift no one's)."""
    z = rng.normal(size=(3, 8)).astype("float32")
    tensors = [tf.zeros([0, 8]), tf.constant(z), tf.constant(z * 2)]

    @tf.function(jit_compile=jit)
    def compute(*ts):
        return stats.multi_activation_statistics(list(ts), [0.1] * len(ts), [-1] * len(ts), op_type="Relu")

    moments, active, ranges, counts = (np.asarray(t) for t in compute(*tensors))
    alone = [np.asarray(t) for t in compute(*tensors[1:])]
    np.testing.assert_array_equal(moments[0], np.zeros(moments.shape[1]))
    np.testing.assert_array_equal(active[:8], np.zeros(8))
    np.testing.assert_array_equal(counts[0], np.zeros(counts.shape[1]))
    np.testing.assert_allclose(moments[1:], alone[0], rtol=1e-6)
    np.testing.assert_array_equal(active[8:], alone[1])
    np.testing.assert_array_equal(ranges[1:], alone[2])
    np.testing.assert_array_equal(counts[1:], alone[3])


# The shapes (with a batch of 2) of a set of MobileNetV3Small's variables:
# as ReLU outputs under XLA, the row owners `tf.repeat` gave them did not
# compile (found by delta debugging from all 142).
_XLA_OWNER_SHAPES = [
    (5, 5, 120, 1), (120,), (120,), (1, 1, 120, 32), (32,), (1, 1, 32, 120), (120,), (1, 1, 120, 48), (48,),
    (1, 1, 144, 48), (48,), (48,), (1, 1, 48, 288), (288,), (288,), (5, 5, 288, 1), (288,), (288,), (1, 1, 288, 72),
    (72,), (1, 1, 72, 288), (288,), (1, 1, 288, 96), (96,), (96,), (1, 1, 96, 576), (576,), (576,), (5, 5, 576, 1),
    (576,), (576,), (1, 1, 576, 144), (144,), (1, 1, 144, 576), (576,), (1, 1, 576, 96), (96,), (96,),
    (1, 1, 96, 576), (576,), (576,), (5, 5, 576, 1), (576,), (576,), (1, 1, 576, 144), (144,), (1, 1, 144, 576),
    (576,), (1, 1, 576, 96), (96,), (96,), (1, 1, 96, 576), (576,), (576,), (1, 1, 576, 1024),
]


@pytest.mark.parametrize("static_batch", [True, False], ids=["static", "none-batch"])
def test_multi_activation_statistics_compile_for_many_sizes_under_xla(static_batch):
    """Fifty-five activations of one kind, from 32 to 589,824 elements (a
    set that crashed XLA's compile of the step: "indices shape to be prefix
    of data_shape"), measured together under XLA as numpy measures each:
    counts and per-unit active counts exactly."""
    arrays = [np.maximum(rng.normal(size=(2,) + shape).astype("float32"), 0.0) for shape in _XLA_OWNER_SHAPES]
    signature = [tf.TensorSpec((2 if static_batch else None,) + shape, tf.float32) for shape in _XLA_OWNER_SHAPES]

    @tf.function(jit_compile=True, input_signature=signature)
    def compute(*tensors):
        return stats.multi_activation_statistics(list(tensors), [0.5] * len(tensors), [-1] * len(tensors),
                                                 op_type="Relu")

    moments, active, ranges, _ = (np.asarray(t) for t in compute(*[tf.constant(a) for a in arrays]))
    offset = 0
    for i, a in enumerate(arrays):
        rows = a.reshape(-1, a.shape[-1])
        np.testing.assert_array_equal(moments[i, :3], [np.sum(a <= 0), a.size, a.size], err_msg=f"tensor {i}")
        np.testing.assert_array_equal(active[offset:offset + a.shape[-1]], np.sum(rows > 0, axis=0))
        assert tuple(ranges[i]) == (a.min(), a.max())
        offset += a.shape[-1]
    assert offset == active.size

@pytest.mark.parametrize("outputs", ["recomputed", "outputs", "outputs, derivative on the rows"])
@pytest.mark.parametrize("units", ["coprime", "common-divisor"])
@pytest.mark.parametrize("static_batch", [True, False], ids=["static", "none-batch"])
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_multi_activation_statistics_match_numpy(jit, static_batch, units, outputs, monkeypatch):
    """Swish (read at its input z, derivative by autodiff) over tensors of
    different unit counts, leading shapes and unit axes (one spanning several
    rows, one smaller than a row), against numpy's analytic derivative and
    TensorBoard's histogram of each z; with static shapes and with a `None`
    leading dimension, as Keras traces the batch. Unit counts without a
    common divisor (active counts summed one element at a time) and with
    one (in blocks of 4 units). Tensors of one static shape and unit axis
    are stacked (`stats._activation_rows`) and their results put back in
    order. With `outputs`, silu(z) is handed in as the step computed it
    (what the recorder does under XLA) and only f'(z) is computed, per
    tensor (a kind of few tensors) or on the rows (of more): the same
    results."""
    if outputs == "outputs, derivative on the rows":
        monkeypatch.setattr(stats, "DERIVATIVES_PER_TENSOR_MAX", 0)
    if units == "coprime":
        shapes, last = [(5, 8), (2, 3, 6), (4, 5), (3, 8)], (40, 3)
    else:
        shapes, last = [(5, 8), (2, 3, 4), (4, 12), (3, 8)], (42, 4)
    zs = [rng.normal(size=shapes[0]).astype("float32") * 3, rng.normal(size=shapes[1]).astype("float32"),
          np.moveaxis(rng.normal(size=shapes[2]).astype("float32"), 1, 0), np.full(shapes[3], -1e4, "float32"),
          rng.normal(size=last).astype("float32"),
          # The first's shape and unit axis again (with static shapes the
          # two are one stack, measured apart from those between them), and
          # its shape with another unit axis (not of that stack).
          rng.normal(size=shapes[0]).astype("float32"), rng.normal(size=shapes[0]).astype("float32")]
    zs[1][0, 1, 2] = np.nan
    unit_axes = [-1, 2, 0, 1, -1, 1, 0]
    thresholds = [0.05, 0.1, 0.2, 0.05, 0.6, 0.3, 0.1]  # the fifth above silu'(0) = 0.5, the padding
    # Rows of 32 (the smallest tensor, 18 or 24 elements, picks it): the
    # fifth tensor spans several rows, its last one part padding.
    assert stats.chunk_width([min(z.size for z in zs)]) == 32 and zs[4].size > 32 and zs[4].size % 32

    def spec(z, unit_axis):
        shape = list(z.shape)
        if not static_batch:  # The first axis that is not the unit axis.
            shape[1 if unit_axis % z.ndim == 0 else 0] = None
        return tf.TensorSpec(shape, tf.float32)

    signature = [spec(z, axis) for z, axis in zip(zs, unit_axes)]

    @tf.function(jit_compile=jit, input_signature=signature)
    def compute(*tensors):
        return stats.multi_activation_statistics(
            list(tensors), thresholds, unit_axes, function=tf.nn.silu,
            outputs=None if outputs == "recomputed" else [tf.nn.silu(t) for t in tensors],
        )

    moments, active, ranges, counts = (np.asarray(t) for t in compute(*[tf.constant(z) for z in zs]))
    unit_counts = [z.shape[axis] for z, axis in zip(zs, unit_axes)]
    assert active.shape == (sum(unit_counts),)
    offsets = np.concatenate([[0], np.cumsum(unit_counts)])
    for i, (z, axis) in enumerate(zip(zs, unit_axes)):
        rows = np.moveaxis(z, axis, -1).reshape(-1, unit_counts[i]).astype(np.float64)
        with np.errstate(over="ignore"):
            s = 1 / (1 + np.exp(-rows))
        d = np.abs(s + rows * s * (1 - s))
        a = rows * s
        finite = np.isfinite(a)
        af = a[finite]
        np.testing.assert_array_equal(moments[i, :3], [np.sum(d < thresholds[i]), rows.size, af.size])
        np.testing.assert_allclose(moments[i, 3], af.sum(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(moments[i, 4], np.sum((af - af.mean()) ** 2), rtol=1e-4, atol=1e-4)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(active[offsets[i]:offsets[i + 1]], np.sum(d > 0, axis=0))
        finite_z = z[np.isfinite(z)]
        assert tuple(ranges[i]) == (finite_z.min(), finite_z.max())
        np.testing.assert_array_equal(counts[i], tensorboard_counts([z]))
