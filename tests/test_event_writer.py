"""The event writer's fast paths give what TensorBoard's own code gives.

TF-free: the record framing is compared byte for byte with TensorBoard's
`RecordWriter`, the vectorized histogram buckets row by row with
`np.linspace`, and the activation statistics of many
layers at once with the one-layer formula.
"""

import io

import numpy as np
import pytest
from tensorboard.summary.writer.record_writer import RecordWriter

from tb_gradflow import aggregate
from tb_gradflow import event_file
from tb_gradflow.writer import histogram_bucket_rows


def _linspace_buckets(low, high, counts):
    """The plain definition: one row's buckets from np.linspace."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() == 0:
        return np.zeros((counts.shape[0], 3))
    edges = np.linspace(low, high, counts.shape[0] + 1)
    edges[-1] = high
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


class _Buffer(io.BytesIO):
    def close(self):  # RecordWriter.close closes it; keep the bytes readable
        pass


@pytest.mark.parametrize("size", [0, 1, 7, 4096, 100_003])
def test_records_are_byte_identical_to_tensorboards_record_writer(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    ours, theirs = _Buffer(), _Buffer()
    event_file._RecordWriter(ours).write(data)
    RecordWriter(theirs).write(data)
    assert ours.getvalue() == theirs.getvalue()
    assert event_file.google_crc32c is not None and event_file.google_crc32c.implementation == "c"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bucket_rows_equal_linspace_row_by_row(dtype):
    rng = np.random.default_rng(0)
    n, k = 40, 30
    low = (rng.normal(size=n) * 10.0 ** rng.integers(-30, 10, n)).astype(dtype)
    # Equal ends, a difference that underflows the step, ordinary ranges.
    width = np.where(np.arange(n) % 4 == 0, 0.0, np.abs(rng.normal(size=n)) * 10.0 ** rng.integers(-45, 3, n))
    high = (low + width).astype(dtype)
    counts = rng.integers(0, 5, (n, k))
    counts[::7] = 0  # an empty histogram is all zeros
    rows = histogram_bucket_rows(low, high, counts)
    for i in range(n):
        np.testing.assert_array_equal(rows[i], _linspace_buckets(low[i], high[i], counts[i]), err_msg=f"row {i}")


def test_activation_statistics_rows_equal_the_one_layer_formula():
    rng = np.random.default_rng(1)
    moments = np.abs(rng.normal(size=(25, 6))) * 10
    moments[3, 2] = 0.0  # no finite element
    moments[5, 1] = 0.0  # no element
    rows = aggregate.activation_statistics_rows(moments)
    for i, m in enumerate(moments):
        saturated, size, finite, total, m2, sum_sq_over_n = m
        mean = total / finite if finite > 0 else np.nan
        m2_total = m2 + sum_sq_over_n - (total * mean if finite > 0 else 0.0)
        expected = {
            "saturated_fraction": saturated / size if size > 0 else np.nan,
            "activation_mean": mean,
            "activation_std": np.sqrt(max(m2_total, 0.0) / finite) if finite > 0 else np.nan,
        }
        for name, value in expected.items():
            np.testing.assert_array_equal(rows[name][i], value, err_msg=f"{name} row {i}")


def test_values_are_those_tensorboard_builds(tmp_path):
    """Each value the writer writes (a float value of a known tag as kept
    bytes and its raw values; others as a tensor copied from a per-tag
    header, the values set) is the Summary.Value TensorBoard's own
    `make_tensor_proto` gives, read back by TensorBoard's event loader, and
    each record is the library's serialization of its Event; over
    two rows per tag (the header is reused), each written dtype and shape
    (scalars, vectors, matrices, an empty vector, a large one) and one it
    converts generically (uint8); metadata on a tag's first value only."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util

    from tb_gradflow.writer import EventWriter

    rng = np.random.default_rng(1)
    arrays = {
        "f32 scalar": lambda: np.float32(rng.normal()),
        "f64 scalar": lambda: np.float64(rng.normal()),
        "i32 scalar": lambda: np.int32(rng.integers(-9, 9)),
        "i64 scalar": lambda: np.int64(rng.integers(-9, 9)),
        "f32 vector": lambda: rng.normal(size=7).astype(np.float32),
        "f64 matrix": lambda: rng.normal(size=(30, 3)),
        "i32 matrix": lambda: rng.integers(-9, 9, (2, 5)).astype(np.int32),
        "i64 vector": lambda: rng.integers(-9, 9, 4),
        "empty f32": lambda: np.zeros(0, np.float32),
        "large f32": lambda: rng.normal(size=40_000).astype(np.float32),  # 3-byte lengths
        "uint8 vector": lambda: rng.integers(0, 255, 6).astype(np.uint8),
    }
    written = {}
    writer = EventWriter(str(tmp_path))
    for step in (1, 2 ** 40):  # a step of 6 varint bytes
        row = {tag: make() for tag, make in arrays.items()}
        written[step] = row
        metadata_of = {tag: summary_pb2.SummaryMetadata(summary_description=tag) for tag in row}
        writer._emit(step, [writer._summary_value(tag, a, metadata_of[tag]) for tag, a in row.items()])
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    # Each record, joined from kept bytes, is the library's own serialization of its Event.
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    records = list(RawEventFileLoader(str(path)).Load())
    assert len(records) == 3  # file version, two rows
    for record in records:
        assert event_pb2.Event.FromString(record).SerializeToString() == record
    events = [e for e in EventFileLoader(str(path)).Load() if e.summary.value]
    assert [e.step for e in events] == [1, 2 ** 40]
    for event in events:
        assert [v.tag for v in event.summary.value] == list(arrays)
        for value in event.summary.value:
            expected = summary_pb2.Summary.Value(
                tag=value.tag, tensor=tensor_util.make_tensor_proto(written[event.step][value.tag]))
            if event.step == 1:
                expected.metadata.summary_description = value.tag
            assert value.SerializeToString() == expected.SerializeToString(), (event.step, value.tag)


def test_a_value_that_cannot_be_built_raises_to_the_caller_and_the_writer_goes_on(tmp_path):
    """A value TensorBoard cannot convert is the caller's error (raised to it),
    not a failed disk: the writer does not stop, the next event is written."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto import summary_pb2

    from tb_gradflow.writer import EventWriter

    writer = EventWriter(str(tmp_path))
    md = summary_pb2.SummaryMetadata()
    with pytest.raises(TypeError):
        writer._emit(1, [writer._summary_value("bad", np.array([object()]), md)])
    assert writer.failed is None
    writer._emit(2, [writer._summary_value("good", np.float32(1.5), md)])
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    assert [(e.step, v.tag) for e in EventFileLoader(str(path)).Load() for v in e.summary.value] == [(2, "good")]


def test_histogram_rows_are_those_tensorboard_builds(tmp_path):
    """A row of histograms is written as groups (one byte string of the whole
    bucket array, sliced per layer after the tag's kept bytes): each value is
    the Summary.Value TensorBoard's `make_tensor_proto` gives for that
    layer's buckets, under its tag, with the histogram metadata on a tag's
    first value only, read back by TensorBoard's event loader; over three
    rows, gradient, log10-magnitude and pre-activation histograms, and a
    layer whose histogram is empty."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.histogram import metadata as histogram_metadata
    from tensorboard.util import tensor_util

    from tb_gradflow import metadata
    from tb_gradflow.writer import EventWriter

    rng = np.random.default_rng(2)
    layers = [(0, "dense"), (1, "conv/block"), (4, "head")]
    n, k = len(layers), metadata.HISTOGRAM_BUCKETS
    expected = {}  # (step, tag) -> buckets
    writer = EventWriter(str(tmp_path))
    for step in (5, 6, 7):
        low = rng.normal(size=n).astype(np.float32)
        high = low + np.abs(rng.normal(size=n)).astype(np.float32)
        counts, log10_counts = rng.integers(0, 9, (n, k)), rng.integers(0, 9, (n, metadata.LOG10_BUCKETS))
        counts[1] = 0  # an empty histogram
        writer.write_histograms(step, layers, low, high, counts, log10_counts)
        ranges = np.stack([low, high], axis=1)
        writer.write_preactivation_histograms(step, layers[::2], ranges[::2], counts[::2])
        for i, (depth, name) in enumerate(layers):
            expected[(step, metadata.histogram_tag(depth, name, metadata.HISTOGRAM_KIND_GRADIENT))] = (
                histogram_bucket_rows(low[i:i + 1], high[i:i + 1], counts[i:i + 1])[0])
            expected[(step, metadata.histogram_tag(depth, name, metadata.HISTOGRAM_KIND_LOG10_MAGNITUDE))] = (
                histogram_bucket_rows([metadata.LOG10_LOW], [metadata.LOG10_HIGH], log10_counts[i:i + 1])[0])
        for i in (0, 2):
            depth, name = layers[i]
            # (pre-activation ranges are taken as float64, as the recorder's are)
            expected[(step, metadata.histogram_tag(depth, name, metadata.HISTOGRAM_KIND_PREACTIVATION))] = (
                histogram_bucket_rows(ranges[i:i + 1, 0].astype(np.float64), ranges[i:i + 1, 1].astype(np.float64),
                                      counts[i:i + 1])[0])
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    seen = {}
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            seen[(event.step, value.tag)] = value
    assert set(seen) == set(expected)
    for (step, tag), buckets in expected.items():
        value = seen[(step, tag)]
        want = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(buckets.astype(np.float32)))
        got = summary_pb2.Summary.Value()
        got.CopyFrom(value)
        got.ClearField("metadata")
        assert got.SerializeToString() == want.SerializeToString(), (step, tag)
        assert value.HasField("metadata") == (step == 5), (step, tag)
        if step == 5:
            assert value.metadata.plugin_data.plugin_name == histogram_metadata.PLUGIN_NAME
