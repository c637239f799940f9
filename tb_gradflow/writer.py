"""Turns statistic arrays into TensorBoard summary events (no TensorFlow needed).

    >>> import tempfile, numpy as np
    >>> from tb_gradflow.writer import EventWriter
    >>> w = EventWriter(tempfile.mkdtemp())
    >>> w.write_layer_statistics(10, {"grad_norm": np.array([0.1, 2.0])})
    >>> w.close()

Events go to an `event_file.EventFile` (a background thread, TensorBoard's
record format). A writer that fails mid-run (disk full, file too large) warns
once and then drops further events, with no traceback from its thread: a
monitoring tool must never kill the training it watches. A log directory
deleted mid-run is noticed at the next write: one warning, and the directory
is recreated with a new event file that starts with the layer table again
(events of the steps in between are lost, as they were written to the
deleted file).
"""

import functools
import os
import time
import warnings

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

from tb_gradflow import metadata
from tb_gradflow.event_file import EventFile


class LogDirError(ValueError):
    """The log directory cannot be created or written."""


def histogram_bucket_rows(low, high, counts):
    """[n, k, 3] float64: row i's k buckets (left, right, count) in
    TensorBoard's histogram layout, the edges `np.linspace(low[i], high[i],
    k + 1)` (its arithmetic, in the dtype it would use), all zeros for an
    empty row; every row at once, without a Python loop over a model's
    layers.

    >>> histogram_bucket_rows([0.0, 1.0], [3.0, 1.0], [[1, 0, 2], [0, 0, 0]]).tolist()[0]
    [[0.0, 1.0, 1.0], [1.0, 2.0, 0.0], [2.0, 3.0, 2.0]]
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, k = counts.shape
    dtype = np.result_type(np.asarray(low), np.asarray(high), np.float16)
    low = np.asarray(low, dtype).reshape(n, 1)
    high = np.asarray(high, dtype).reshape(n, 1)
    index = np.arange(k + 1, dtype=dtype)[None, :]
    delta = high - low
    step = delta / dtype.type(k)
    with np.errstate(invalid="ignore", over="ignore"):
        # np.linspace: index * step, or index / k * delta where step underflows to 0.
        edges = np.where(step == 0, index / dtype.type(k) * delta, index * step) + low
    edges[:, -1:] = high
    buckets = np.stack(
        [np.broadcast_to(edges[:, :-1], (n, k)), np.broadcast_to(edges[:, 1:], (n, k)), counts], axis=2
    ).astype(np.float64)
    buckets[counts.sum(axis=1) == 0] = 0.0
    return buckets


def _compact(buckets):
    """Histogram buckets as float32, half the bytes of float64: the edges come
    from float32 gradients, and counts stay exact up to 2**24 per bucket. The
    histograms are most of a run's bytes (docs/event_contract.md, "Sizes")."""
    return np.asarray(buckets, np.float32)


_DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
           np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64}
_SCALAR_FIELDS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
                  types_pb2.DT_INT32: "int_val", types_pb2.DT_INT64: "int64_val"}


def _tensor_header(dtype, shape):
    """TensorProto with `dtype` (a types_pb2 enum of `_DTYPES`) and `shape`, no values."""
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.SetInParent()
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=int(n)) for n in shape)
    return proto


# A Summary holding one value of a fixed dtype and shape serializes as
# constant bytes followed by the value's raw little-endian bytes (its
# tensor_content, or the packed field of a float scalar). The writer keeps
# those leading bytes per tag, dtype and shape, and writes a row's values by
# joining bytes: building a Summary.Value per value cost ~5 us of protobuf
# objects each, and a row of a 50-layer model writes ~250 values.
_RAW_TAIL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_EVENT_SUMMARY_KEY = b"\x2a"  # Event.summary: field 5, length-delimited


def _varint(n):
    """Protocol buffers' base-128 varint of the non-negative int `n`.

    >>> _varint(300)
    b'\\xac\\x02'
    """
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _summary_prefix(tag, dtype, shape):
    """The bytes before the raw values in a serialized Summary of one value
    (`tag`, numpy `dtype` of `_RAW_TAIL_DTYPES`, `shape`, no metadata), or None
    where the serialization does not end with them. Found with two different
    fillings, so the same prefix holds for any values of that dtype and shape."""
    little = dtype.newbyteorder("<")
    size = little.itemsize * int(np.prod(shape, dtype=np.int64))
    prefixes = set()
    for fill in (0x11, 0x7E):
        raw = bytes([fill]) * size
        value = summary_pb2.Summary.Value(tag=tag, tensor=_tensor_header(_DTYPES[dtype], shape))
        _set_values(value.tensor, np.frombuffer(raw, little).reshape(shape), _DTYPES[dtype])
        serialized = summary_pb2.Summary(value=[value]).SerializeToString()
        if not serialized.endswith(raw):
            return None
        prefixes.add(serialized[: len(serialized) - size])
    return prefixes.pop() if len(prefixes) == 1 else None


def _set_values(tensor, array, dtype):
    """`array`'s values into `tensor` (a `_tensor_header` of its dtype and shape): a
    scalar in the dtype's `*_val` field, else the little-endian `tensor_content`,
    as `tensor_util.make_tensor_proto` writes them."""
    if array.ndim == 0:
        getattr(tensor, _SCALAR_FIELDS[dtype]).append(array.item())
    else:
        tensor.tensor_content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _histogram_metadata(display_name, description):
    md = histogram_metadata.create_summary_metadata(display_name=display_name, description=description)
    md.data_class = summary_pb2.DATA_CLASS_TENSOR
    return md


def _scalar_metadata(tag, description):
    md = scalar_metadata.create_summary_metadata(display_name=tag, description=description)
    md.data_class = summary_pb2.DATA_CLASS_SCALAR
    return md


class _Rows:
    """Values for `EventWriter._emit`: row i of the float32 `array` under
    `tags[i]`, `metadata(i)` its metadata (on a tag's first value only)."""

    def __init__(self, tags, array, metadata):
        self.tags, self.array, self.metadata = tags, np.asarray(array, np.float32), metadata


@functools.lru_cache(maxsize=64)
def _histogram_tags(layers, kind):
    """The histogram tags of `layers` (a tuple of (depth, name)) for `kind`, made once per model."""
    return tuple(metadata.histogram_tag(depth, name, kind) for depth, name in layers)


class EventWriter:
    """Writes tb_gradflow summaries for one run directory.

    Args:
      log_dir: the run's directory; created if missing.
      filename_suffix: appended to the event file name.

    Raises:
      LogDirError: at construction, if `log_dir` cannot be created or written.
    """

    def __init__(self, log_dir, filename_suffix=".gradflow"):
        log_dir = os.fspath(log_dir)
        self.log_dir = log_dir
        self._filename_suffix = filename_suffix
        try:
            self._writer = self._open()
        except Exception as e:  # OSError, or TensorFlow's gfile errors for remote paths
            raise LogDirError(f"tb_gradflow cannot write to log_dir {log_dir!r}: {e}") from e
        self._tags_with_metadata = set()
        self._value_headers = {}  # (tag, dtype, shape) -> Summary.Value
        self._summary_prefixes = {}  # (tag, numpy dtype, shape) -> bytes (b"": built as a proto)
        self._failed = None
        self._layer_table_values = None  # re-written into a recreated log directory
        self._recreated = 0
        self._exists_checked_at = None

    def _open(self):
        os.makedirs(self.log_dir, exist_ok=True)
        probe = os.path.join(self.log_dir, ".tb_gradflow_write_probe")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
        return EventFile(self.log_dir, filename_suffix=self._filename_suffix)

    @property
    def failed(self):
        """The error that stopped this writer, or None."""
        return self._failed

    def _summary_value(self, tag, array, summary_metadata):
        """A value for `_emit`: (tag, array, `summary_metadata`), the metadata
        proto or a function making it (called only for a tag's first value,
        as most values carry none)."""
        return tag, array, summary_metadata

    def _value_bytes(self, tag, array, summary_metadata):
        """A serialized Summary of one value of `array` under `tag`. Float
        values of a tag's known dtype and shape are the kept prefix and their
        raw bytes (`_summary_prefix`); others, and a tag's first value (it
        carries the metadata), are built as protos: the tensor copied from a
        header kept per (tag, dtype, shape) with the values set, as
        `tensor_util.make_tensor_proto` writes them."""
        array = np.asarray(array)
        prefix = self._kept_prefix(tag, array.dtype, array.shape)
        if prefix:
            return prefix + np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        dtype = _DTYPES.get(array.dtype)
        if dtype is None:
            value = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(array))
        else:
            key = (tag, dtype, array.shape)
            header = self._value_headers.get(key)
            if header is None:
                header = self._value_headers[key] = summary_pb2.Summary.Value(
                    tag=tag, tensor=_tensor_header(dtype, array.shape))
            value = summary_pb2.Summary.Value()
            value.CopyFrom(header)
            _set_values(value.tensor, array, dtype)
        # TensorBoard keeps the first metadata per (run, tag); repeating it
        # only costs bytes.
        if tag not in self._tags_with_metadata:
            value.metadata.CopyFrom(summary_metadata() if callable(summary_metadata) else summary_metadata)
            self._tags_with_metadata.add(tag)
        return summary_pb2.Summary(value=[value]).SerializeToString()

    def _kept_prefix(self, tag, dtype, shape):
        """The `_summary_prefix` of a value of `tag`, numpy `dtype` and
        `shape`, found on first use and kept; b"" where the value is built
        as a proto (the tag's first value, which carries the metadata;
        another dtype; a serialization that does not end with the values)."""
        if tag not in self._tags_with_metadata or dtype not in _RAW_TAIL_DTYPES:
            return b""
        key = (tag, dtype, shape)
        prefix = self._summary_prefixes.get(key)
        if prefix is None:
            prefix = self._summary_prefixes[key] = _summary_prefix(tag, dtype, shape) or b""
        return prefix

    def _rows_bytes(self, rows):
        """A serialized Summary of one value per row of `rows` (a `_Rows`):
        each row whose tag has a kept prefix is that prefix and its slice of
        one `tobytes` of the whole array (a row of histograms writes a value
        per layer and kind: ~400 on MobileNetV3Small)."""
        array = np.ascontiguousarray(rows.array, rows.array.dtype.newbyteorder("<"))
        if not len(rows.tags):
            return b""
        raw, size = array.tobytes(), array[0].nbytes
        parts = []
        for i, tag in enumerate(rows.tags):
            prefix = self._kept_prefix(tag, array.dtype, array.shape[1:])
            if prefix:
                parts += (prefix, raw[i * size : (i + 1) * size])
            else:
                parts.append(self._value_bytes(tag, array[i], functools.partial(rows.metadata, i)))
        return b"".join(parts)

    def _emit(self, step, values):
        """One event at `step` of `values`: `_summary_value`s, `_Rows` or Summary.Value protos."""
        if self._failed is not None or not values:
            return
        try:
            # A row writes several events at one step: one look at the
            # directory per step is enough to notice it was deleted.
            if step != self._exists_checked_at and not self._writer.exists():
                self._recreate(step)
                if self._failed is not None:
                    return
            self._exists_checked_at = step
        except Exception as e:  # Never fatal: whatever the filesystem does.
            self._fail(e)
            return
        # Built after a recreation (a new file's values carry their metadata
        # again) and outside the write's try: a value that cannot be built is
        # the caller's error, raised to it, not a failed disk.
        # Serialized Summaries of one value each, joined, are the Summary of
        # them all (a repeated field is its entries' encodings in order);
        # the event is its step and wall time, then that Summary as field 5.
        summary = b"".join(
            self._rows_bytes(value) if isinstance(value, _Rows)
            else summary_pb2.Summary(value=[value]).SerializeToString()
            if isinstance(value, summary_pb2.Summary.Value) else self._value_bytes(*value)
            for value in values
        )
        event = (event_pb2.Event(step=int(step), wall_time=time.time()).SerializeToString()
                 + _EVENT_SUMMARY_KEY + _varint(len(summary)) + summary)
        try:
            if not self._writer.write(event):
                self._fail(self._writer.error)
        except Exception as e:  # Never fatal: whatever the filesystem does.
            self._fail(e)

    def _recreate(self, step):
        """The event file vanished (its directory was deleted): warn once, start
        a new file in a recreated directory, layer table and metadata first."""
        old = self._writer
        try:
            self._writer = self._open()
        except Exception as e:
            self._fail(e, "its log directory was deleted and cannot be recreated")
            return
        old.close()
        self._recreated += 1
        if self._recreated == 1:
            warnings.warn(
                f"tb_gradflow: the log directory {self.log_dir!r} was deleted during training; it was "
                f"recreated at step {step} and events continue there (the steps since the last write "
                "before the deletion are lost).",
                RuntimeWarning,
                stacklevel=4,
            )
        self._tags_with_metadata = set()
        if self._layer_table_values is not None:
            table_step, table_value = self._layer_table_values
            event = event_pb2.Event(step=int(table_step), wall_time=time.time())
            event.summary.value.append(table_value)
            self._tags_with_metadata.add(table_value.tag)
            self._writer.write(event.SerializeToString())

    def _fail(self, error, what=None):
        self._failed = error
        warnings.warn(
            f"tb_gradflow could not write events to {self.log_dir!r} ({what or error}); "
            "training continues, further tb_gradflow events for this run are dropped.",
            RuntimeWarning,
            stacklevel=3,
        )

    def write_layer_table(self, step, layer_table):
        """Writes the LayerTable proto (once per fit)."""
        array = np.array(layer_table.SerializeToString(), dtype=object)
        value = summary_pb2.Summary.Value(tag=metadata.LAYER_TABLE_TAG, tensor=tensor_util.make_tensor_proto(array))
        value.metadata.CopyFrom(metadata.create_layer_table_metadata())
        self._layer_table_values = (step, value)
        self._tags_with_metadata.add(metadata.LAYER_TABLE_TAG)
        self._emit(step, [value])

    def write_layer_statistics(self, step, layer_stats, variable_stats=None):
        """Writes float32 vectors: {statistic: [n_layers]} and {statistic: [n_variables]}."""
        values = []
        for per, tag_fn, group in (
            ("layer", metadata.layer_statistic_tag, layer_stats),
            ("variable", metadata.variable_statistic_tag, variable_stats or {}),
        ):
            for name, array in group.items():
                values.append(
                    self._summary_value(
                        tag_fn(name),
                        np.asarray(array, dtype=np.float32),
                        lambda name=name, per=per: metadata.create_statistic_metadata(name, per=per),
                    )
                )
        self._emit(step, values)

    def write_histograms(self, step, layers, low, high, counts, log10_counts):
        """Per-layer gradient and log10-magnitude histograms (histograms plugin).

        Args:
          layers: sequence of (depth, name), one per row of the arrays.
          low, high: float [n_layers] finite gradient range per layer.
          counts: [n_layers, HISTOGRAM_BUCKETS]; log10_counts: [n_layers, LOG10_BUCKETS].
        """
        if not len(layers):
            return
        n = len(layers)
        gradient = _compact(histogram_bucket_rows(np.asarray(low)[:n], np.asarray(high)[:n], np.asarray(counts)[:n]))
        log10_counts = np.asarray(log10_counts)[:n]
        magnitude = _compact(histogram_bucket_rows(
            np.full(n, float(metadata.LOG10_LOW)), np.full(n, float(metadata.LOG10_HIGH)), log10_counts
        ))
        layers = tuple(map(tuple, layers))

        def rows(kind, buckets):
            return _Rows(_histogram_tags(layers, kind), buckets, lambda i: _histogram_metadata(
                f"{layers[i][1]} {kind}", f"tb_gradflow {kind.replace('_', ' ')} histogram of layer {layers[i][1]}"))

        self._emit(step, [rows(metadata.HISTOGRAM_KIND_GRADIENT, gradient),
                          rows(metadata.HISTOGRAM_KIND_LOG10_MAGNITUDE, magnitude)])

    def write_activation_statistics(self, step, stats):
        """{activation statistic: float32 [n_layers]} under gradflow/activation/<statistic>."""
        self._emit(
            step,
            [
                self._summary_value(
                    metadata.activation_statistic_tag(name),
                    np.asarray(array, dtype=np.float32),
                    lambda name=name: metadata.create_activation_statistic_metadata(name),
                )
                for name, array in stats.items()
            ],
        )

    def write_preactivation_histograms(self, step, layers, ranges, counts):
        """Per-layer histograms of the activation's input z (histograms plugin).

        Args:
          layers: sequence of (depth, name); ranges: (low, high) per layer;
          counts: [HISTOGRAM_BUCKETS] per layer.
        """
        kind = metadata.HISTOGRAM_KIND_PREACTIVATION
        if not len(layers):
            return
        ranges = np.asarray(ranges, np.float64).reshape(len(layers), 2)
        buckets = _compact(histogram_bucket_rows(ranges[:, 0], ranges[:, 1], np.asarray(counts)))
        layers = tuple(map(tuple, layers))
        self._emit(step, [_Rows(_histogram_tags(layers, kind), buckets, lambda i: _histogram_metadata(
            f"{layers[i][1]} {kind}", f"tb_gradflow pre-activation histogram of layer {layers[i][1]}"))])

    def write_scalars(self, step, scalars, description="tb_gradflow alert"):
        """{tag: float} as float32 scalars of the standard scalars plugin."""
        self._emit(step, [
            self._summary_value(tag, np.float32(value), lambda tag=tag: _scalar_metadata(tag, description))
            for tag, value in scalars.items()
        ])

    def flush(self):
        if self._failed is None and not self._writer.flush():
            self._fail(self._writer.error)

    def close(self):
        if not self._writer.close() and self._failed is None:
            self._fail(self._writer.error)
