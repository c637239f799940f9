"""Reads tb_gradflow runs through TensorBoard's data provider (no TensorFlow).

    >>> from tb_gradflow import reader
    >>> r = reader.Reader.for_logdir("examples/logs")            # doctest: +SKIP
    >>> readable, unreadable = r.survey()                         # doctest: +SKIP
    >>> for run in readable:                                      # doctest: +SKIP
    ...     print(run, [a.kind for a in r.alerts(run)])
    >>> for problem in unreadable:                                # doctest: +SKIP
    ...     print(problem.run, "cannot be read:", problem.reason)

This is the one reading layer: the plugin's routes, `tb-gradflow check` and
scripts all go through `Reader`. The plugin passes TensorBoard's own
`context.data_provider` (either loader) and a shared `SeriesCache`; the CLI
builds a `MultiplexerDataProvider` over the logdir with `Reader.for_logdir`,
keeping every sample. The alerts come from `tb_gradflow.rules` with the
thresholds the writer recorded: hook, plugin and CLI agree by construction.

A run is judged on its own. A run whose data this version cannot interpret
(written by a newer tb_gradflow, a corrupt layer table, a layer table with
no statistic rows yet because the job died or the file was cut short) raises
`UnreadableRunError` naming the run and the reason; every other run reads as
before. `survey()` sorts the runs into readable ones and `UnreadableRun`s.
"""

import collections
import dataclasses
import logging
import os
import threading

import numpy as np
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.data import provider as tb_provider

from tb_gradflow import metadata
from tb_gradflow import rules
from tb_gradflow.proto import plugin_data_pb2

logger = logging.getLogger(__name__)

HISTOGRAMS_PLUGIN = "histograms"
# The per-layer gradient histograms a run may hold, gradient values first.
GRADIENT_HISTOGRAM_KINDS = (metadata.HISTOGRAM_KIND_GRADIENT, metadata.HISTOGRAM_KIND_LOG10_MAGNITUDE)

# "Keep every sample" for data provider reads; what TensorBoard keeps is set
# by the plugin loader's --samples_per_plugin (see plugin/loader.py).
ALL_SAMPLES = 10**9

# Per-layer quantities the rules decide on, offered beside the written
# statistics (the heatmap shows what alerts): name -> the rules kind whose
# value it is. Derived when read, so older runs have them too.
RULE_STATISTICS = {"vanishing_signal": rules.VANISHING}
# Run-level scalars (the standard scalars plugin's) the rules read: rules name -> tag.
RULE_SCALAR_TAGS = {
    rules.LOSS_SCALE: metadata.LOSS_SCALE_TAG,
    rules.NONFINITE_LOSS_STEPS: metadata.NONFINITE_LOSS_STEPS_TAG,
}

NO_ROWS_REASON = (
    "it has a layer table but no statistic rows yet (the job stopped before its first write, "
    "or its event file ends early)"
)
NO_RULE_INPUTS_REASON = "its alerts cannot be evaluated: it lacks the statistic(s) {missing} that the rules read"


@dataclasses.dataclass
class LayerSeries:
    """One statistic of one run: values[i, j] is layer j at steps[i]."""

    steps: np.ndarray  # int64 [n_steps]
    wall_times: np.ndarray  # float64 [n_steps]
    # float [n_steps, n_layers]: as stored (float32 from the writers), or
    # float64; read-only when decoded straight from the stored bytes.
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class UnreadableRun:
    """A run the reader skipped, and why (a sentence a user can act on)."""

    run: str
    reason: str

    def to_json(self):
        return {"run": self.run, "reason": self.reason}


class UnreadableRunError(errors.PublicError):
    """One run's tb_gradflow data cannot be interpreted; other runs are unaffected.

    HTTP 422 (Unprocessable Entity) when it reaches a plugin route: the run
    exists, its data is the problem.
    """

    http_code = 422

    def __init__(self, run, reason):
        super().__init__(f"run {run!r} cannot be read: {reason}")
        self.run = run
        self.reason = reason


def _layer_table_from_datum(datum):
    value = datum.numpy
    raw = value.item() if hasattr(value, "item") else value
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if not isinstance(raw, bytes):
        raise ValueError(f"the layer table is a {type(raw).__name__}, not serialized bytes")
    return plugin_data_pb2.LayerTable.FromString(raw)


def logdir_data_provider(logdir, keep_all_samples_of=(metadata.PLUGIN_NAME,)):
    """TensorBoard's own MultiplexerDataProvider over a local logdir, loaded once.

    Every sample of the named plugins is kept (TensorBoard's defaults keep 10
    for third-party plugins). Raises FileNotFoundError if `logdir` is not a
    directory.

    >>> provider = logdir_data_provider("examples/logs", ("gradflow", "histograms"))  # doctest: +SKIP
    """
    from tensorboard.backend.event_processing import data_provider as mux_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as mux_lib

    logdir = os.fspath(logdir)
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"log directory {logdir!r} does not exist or is not a directory")
    multiplexer = mux_lib.EventMultiplexer(
        tensor_size_guidance={name: 0 for name in keep_all_samples_of},  # 0: keep every sample.
        max_reload_threads=1,
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    return mux_provider.MultiplexerDataProvider(multiplexer, logdir)


# ------------------------------------------------------------------ stored rows
# TensorBoard's providers turn every stored tensor into an ndarray on its own
# (tensor_util.make_ndarray, ~25 us each): 0.2 s per 10,000-row statistic
# before the plugin sees it, most of a cold heatmap. Where the provider is one
# of TensorBoard's two (the Python multiplexer, the Rust data server over
# gRPC), the reader takes the stored TensorProtos as they are and decodes the
# float vectors of a series with one np.frombuffer (`_decode_vectors`). Any
# other provider, or a TensorBoard whose internals differ, is read through the
# public `read_tensors`; both give the same LayerSeries.
_FLOAT_DTYPES = {1: "<f4", 2: "<f8"}  # tensorflow DataType DT_FLOAT, DT_DOUBLE


def _public_rows(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample):
    data = provider.read_tensors(ctx, experiment_id=experiment_id, plugin_name=plugin_name,
                                 downsample=downsample, run_tag_filter=run_tag_filter) or {}
    return {run: {tag: ([d.step for d in series], [d.wall_time for d in series], [d.numpy for d in series])
                  for tag, series in tags.items()}
            for run, tags in data.items()}


def _multiplexer_rows(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample):
    """MultiplexerDataProvider.read_tensors without make_ndarray (its `_read`, protos kept)."""
    from tensorboard.backend.event_processing import data_provider as mux_provider
    from tensorboard.compat.proto import summary_pb2

    provider._validate_downsample(downsample)
    index = provider._index(plugin_name, run_tag_filter, summary_pb2.DATA_CLASS_TENSOR)
    result = {}
    for run, tags in index.items():
        result[run] = {}
        for tag in tags:
            events = mux_provider._downsample(provider._multiplexer.Tensors(run, tag), downsample)
            result[run][tag] = ([e.step for e in events], [e.wall_time for e in events],
                                [e.tensor_proto for e in events])
    return result


def _grpc_rows(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample):
    """GrpcDataProvider.read_tensors without make_ndarray: one ReadTensors call, protos kept."""
    return _grpc_answer(_grpc_call(provider, experiment_id, plugin_name, run_tag_filter, downsample))


def _grpc_call(provider, experiment_id, plugin_name, run_tag_filter, downsample):
    """The ReadTensors call in flight (a grpc future): the data server works while Python does."""
    from tensorboard.data import grpc_provider
    from tensorboard.data.proto import data_provider_pb2

    request = data_provider_pb2.ReadTensorsRequest()
    request.experiment_id = experiment_id
    request.plugin_filter.plugin_name = plugin_name
    grpc_provider._populate_rtf(run_tag_filter, request.run_tag_filter)
    request.downsample.num_points = downsample
    return provider._stub.ReadTensors.future(request)


def _grpc_answer(call):
    from tensorboard.data import grpc_provider

    with grpc_provider._translate_grpc_error():
        response = call.result()
    # The protos stay in their repeated field: a list would hold a Python object
    # per row at once (the garbage collector then scans them all, repeatedly).
    return {run_entry.run_name: {tag_entry.tag_name: (list(tag_entry.data.step), list(tag_entry.data.wall_time),
                                                      tag_entry.data.value)
                                 for tag_entry in run_entry.tags}
            for run_entry in response.runs}


def _rows_reader(provider):
    """The fastest way to read this provider's stored tensors (see above)."""
    kind = type(provider)
    if kind.__module__ == "tensorboard.backend.event_processing.data_provider" and all(
        hasattr(provider, name) for name in ("_index", "_multiplexer", "_validate_downsample")
    ):
        return _multiplexer_rows
    if kind.__module__ == "tensorboard.data.grpc_provider" and hasattr(provider, "_stub"):
        return _grpc_rows
    return _public_rows


def read_rows(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample):
    """{run: {tag: (steps, wall_times, payloads)}}, one call for every run and tag of the filter.

    A payload is a stored TensorProto (TensorBoard's own providers) or an
    ndarray (any other); `_decode_vectors` takes both. Reading the protos
    uses internals of TensorBoard's providers: if they changed, the public
    `read_tensors` answers instead (one warning).
    """
    reader = _rows_reader(provider)
    if reader is not _public_rows:
        try:
            return reader(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample)
        except errors.PublicError:
            raise
        except Exception as e:  # another TensorBoard version: the public path reads the same data
            Reader._warn_once(("rows", reader.__name__), "tb_gradflow: reading stored tensors directly "
                              "failed (%s: %s); using read_tensors", type(e).__name__, e)
    return _public_rows(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample)


def read_rows_batches(provider, ctx, experiment_id, plugin_name, run_tag_filters, downsample):
    """`read_rows` of each filter in turn (a generator). Under the Rust data
    server the next read is already in flight while the caller decodes this
    one (at most two at a time); other providers are read one after another."""
    if _rows_reader(provider) is not _grpc_rows:
        for run_tag_filter in run_tag_filters:
            yield read_rows(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample)
        return
    pending = collections.deque()
    filters = iter(run_tag_filters)

    def submit():
        run_tag_filter = next(filters, None)
        if run_tag_filter is None:
            return
        try:
            call = _grpc_call(provider, experiment_id, plugin_name, run_tag_filter, downsample)
        except Exception:  # read_rows reports it and falls back, below
            call = None
        pending.append((run_tag_filter, call))

    submit()
    while pending:
        run_tag_filter, call = pending.popleft()
        submit()
        try:
            if call is None:
                raise RuntimeError("the ReadTensors call could not be made")
            answer = _grpc_answer(call)
        except errors.PublicError:
            raise
        except Exception:  # read_rows says why (once) and reads through read_tensors
            answer = read_rows(provider, ctx, experiment_id, plugin_name, run_tag_filter, downsample)
        yield answer


def _decode_vectors(steps, wall_times, payloads, width):
    """LayerSeries of the rows that are numeric vectors of `width`, sorted by step (stable).

    Float vectors stored as tensor_content (what the writer writes) are
    decoded together, each field of the protos read in one pass; any other
    row goes through make_ndarray on its own and is kept or dropped by the
    same test.
    """
    from operator import attrgetter

    from tensorboard.compat.proto import tensor_shape_pb2
    from tensorboard.util import tensor_util

    # A gRPC answer's repeated field makes a Python object per element on each
    # pass; one list makes them once for the passes below (-25% per series).
    payloads = payloads if isinstance(payloads, list) else list(payloads)
    n = len(payloads)
    keep = np.zeros(n, bool)
    values = np.empty((n, width), np.float64)
    # A provider answers protos only (TensorBoard's own, read directly) or arrays only (read_tensors).
    proto_rows = np.arange(n) if n and not isinstance(payloads[0], np.ndarray) else np.zeros(0, np.int64)
    if proto_rows.size:
        try:
            dtypes = np.fromiter(map(attrgetter("dtype"), payloads), np.int64, n)
        except AttributeError:  # arrays among the protos after all
            proto_rows = np.flatnonzero([not isinstance(p, np.ndarray) for p in payloads])
            dtypes = np.fromiter((payloads[i].dtype for i in proto_rows), np.int64, proto_rows.size)
        protos = payloads if proto_rows.size == n else [payloads[i] for i in proto_rows]
        contents = list(map(attrgetter("tensor_content"), protos))
        lengths = np.fromiter(map(len, contents), np.int64, proto_rows.size)
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=width)])
        vectors = np.fromiter(map(shape.__eq__, map(attrgetter("tensor_shape"), protos)), bool, proto_rows.size)
        for code, dtype in _FLOAT_DTYPES.items():
            rows = vectors & (dtypes == code) & (lengths == width * int(dtype[-1]))
            if rows.all() and proto_rows.size == n:
                # Every row (the writer's case): the joined bytes are the values, in
                # their stored precision. No float64 copy: the rules widen their
                # inputs themselves (exactly), and a cached float32 series takes
                # half the memory. (On this project's 2-core VM a fresh page costs
                # ~10-25 us: the copies were most of a cold /alerts.)
                values = np.frombuffer(b"".join(contents), dtype).reshape(n, width)
            elif rows.any():
                at = np.flatnonzero(rows)
                values[proto_rows[at]] = np.frombuffer(b"".join([contents[i] for i in at]), dtype).reshape(-1, width)
            keep[proto_rows[rows]] = True
    for i in np.flatnonzero(~keep):
        payload = payloads[i]
        value = np.asarray(payload if isinstance(payload, np.ndarray) else tensor_util.make_ndarray(payload))
        if value.shape == (width,) and value.dtype.kind in "fiub":
            keep[i] = True
            values[i] = value.astype(np.float64)
    steps = np.asarray(steps, np.int64).reshape(n)
    wall_times = np.asarray(wall_times, np.float64).reshape(n)
    if not keep.all():
        steps, wall_times, values = steps[keep], wall_times[keep], values[keep]
    if steps.size > 1 and np.any(steps[1:] < steps[:-1]):
        order = np.argsort(steps, kind="stable")
        steps, wall_times, values = steps[order], wall_times[order], values[order]
    return LayerSeries(steps=steps, wall_times=wall_times, values=values)


def _stamp(series):
    """Changes when a series gets new data (TensorTimeSeries of a listing)."""
    return (series.max_step, series.max_wall_time)


def run_stamp(tags):
    """Changes whenever any series of a run ({tag: TensorTimeSeries}) gets new data."""
    return (
        len(tags),
        max((ts.max_step for ts in tags.values()), default=None),
        max((ts.max_wall_time for ts in tags.values()), default=None),
    )


# Every series the rules read for a run's alerts (the layer table, the
# gradient statistics, the per-variable RMS of the backward signal, the
# activation statistics): what /alerts lists, and what its verdicts depend on.
RULE_TAGS = (
    (metadata.LAYER_TABLE_TAG,)
    + tuple(metadata.layer_statistic_tag(s) for s in rules.REQUIRED_STATISTICS)
    + (metadata.variable_statistic_tag(metadata.GRAD_RMS),)
    + tuple(metadata.activation_statistic_tag(a) for a in rules.REQUIRED_ACTIVATION_STATISTICS)
)


def rule_stamp(tags):
    """Changes whenever a series the rules read (RULE_TAGS) gets new data; the
    same from a run's whole listing or from one of RULE_TAGS only."""
    return run_stamp({tag: tags[tag] for tag in RULE_TAGS if tag in tags})


def _has_backward_signal(tags, table):
    """Whether the rules read the run's backward signal (per-variable gradient RMS)."""
    return metadata.variable_statistic_tag(metadata.GRAD_RMS) in tags and len(table.variables) > 0


def _gradient_rule_statistics(tags, table):
    """The per-layer statistics the gradient rules read for this run: grad_rms
    only where it stands in for an unknown backward signal."""
    signal = _has_backward_signal(tags, table)
    return [s for s in rules.REQUIRED_STATISTICS if not (signal and s == metadata.GRAD_RMS)]


def has_rule_inputs(tags):
    """Whether a run's listing holds every statistic the gradient rules read."""
    return all(metadata.layer_statistic_tag(s) in tags for s in rules.REQUIRED_STATISTICS)


class Reader:
    """tb_gradflow data of one experiment, through a TensorBoard DataProvider.

    Args:
      data_provider: a `tensorboard.data.provider.DataProvider`.
      experiment_id: "" for a plain `--logdir`.
      cache: a `tb_gradflow.series_cache.SeriesCache` shared by the Readers of one server (the
        plugin's); decoded tables, series and rule verdicts are kept until
        their run gets new data. None: no caching (one-shot readers, the CLI).
    """

    def __init__(self, data_provider, experiment_id="", cache=None):
        self._provider = data_provider
        self._experiment_id = experiment_id
        self._cache = cache
        # What prefetch_rule_inputs read for this Reader's request.
        self._prefetched = {}  # (run, tag, downsample, width) -> LayerSeries
        self._prefetched_tables = {}  # run -> LayerTable
        self._prefetched_scalars = {}  # run -> {tag: [ScalarDatum]} of RULE_SCALAR_TAGS

    @classmethod
    def for_logdir(cls, logdir):
        """A Reader over `logdir` (a directory of runs, or one run), all samples kept.

        Raises:
          FileNotFoundError: `logdir` is not a directory.
        """
        return cls(logdir_data_provider(logdir))

    # ------------------------------------------------------------------ plumbing
    def _ctx(self, ctx):
        return ctx if ctx is not None else tb_context.RequestContext()

    def _cached(self, key, stamp, compute, size=lambda value: 0):
        if self._cache is None:
            return compute()
        return self._cache.get_or_compute((self._experiment_id,) + key, stamp, compute, size)

    def listing(self, ctx=None, run=None, plugin_name=metadata.PLUGIN_NAME, tags=None):
        """{run: {tag: TensorTimeSeries}} of one plugin's series (all runs, or one;
        all tags, or those of `tags`). TensorBoard's Python loader scans every
        row of a listed series for its last step: list only what is needed."""
        run_tag_filter = None
        if run is not None or tags is not None:
            run_tag_filter = tb_provider.RunTagFilter(runs=[run] if run is not None else None,
                                                      tags=list(tags) if tags is not None else None)
        result = self._provider.list_tensors(
            self._ctx(ctx),
            experiment_id=self._experiment_id,
            plugin_name=plugin_name,
            run_tag_filter=run_tag_filter,
        )
        return result or {}

    def _read(self, ctx, run, tags, downsample, plugin_name=metadata.PLUGIN_NAME):
        result = self._provider.read_tensors(
            self._ctx(ctx),
            experiment_id=self._experiment_id,
            plugin_name=plugin_name,
            downsample=downsample,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=list(tags)),
        )
        return (result or {}).get(run, {})

    # ------------------------------------------------------------------ runs
    def runs(self, ctx=None):
        """Names of the runs that hold a tb_gradflow layer table, sorted (readable or not)."""
        return sorted(run for run, tags in self.listing(ctx).items() if metadata.LAYER_TABLE_TAG in tags)

    def has_data(self, ctx=None):
        return bool(self.runs(ctx))

    def run_tags(self, run, ctx=None, listing=None):
        """{tag: TensorTimeSeries} of a run's tb_gradflow series, its format version checked.

        Raises:
          tensorboard.errors.NotFoundError: no such run, or it has no layer table.
          UnreadableRunError: data of a newer format version, or unparseable metadata.
        """
        tags = (listing if listing is not None else self.listing(ctx, run)).get(run, {})
        if metadata.LAYER_TABLE_TAG not in tags:
            raise errors.NotFoundError(f"run {run!r} has no tb_gradflow data")
        for tag, series in tags.items():
            try:
                metadata.parse_plugin_data(series.plugin_content)
            except metadata.UnsupportedVersionError as e:
                # TensorBoard's own plugins skip data of a newer version and warn.
                self._warn_once(("version", run), "tb_gradflow: skipping run %r: %s", run, e)
                raise UnreadableRunError(run, str(e)) from None
            except (ValueError, TypeError) as e:
                raise UnreadableRunError(run, f"the metadata of {tag!r} cannot be parsed ({e})") from None
        return tags

    _warned = set()
    _warned_lock = threading.Lock()

    @classmethod
    def _warn_once(cls, key, message, *args):
        with cls._warned_lock:
            if key in cls._warned:
                return
            cls._warned.add(key)
        logger.warning(message, *args)

    def check_run(self, run, ctx=None, listing=None):
        """The run's tags when it can be read; raises UnreadableRunError (or
        NotFoundError) otherwise. Reads the layer table, no statistic rows."""
        tags = self.run_tags(run, ctx, listing)
        self.layer_table(run, ctx, tags=tags)
        if not self.statistics(run, ctx, tags=tags):
            raise UnreadableRunError(run, NO_ROWS_REASON)
        return tags

    def survey(self, ctx=None, listing=None):
        """(readable run names, [UnreadableRun]) over every run with a layer table.

        Each run is judged alone: one broken run never hides another, and an
        unexpected failure reading one run makes it unreadable, not the survey.
        """
        listing = listing if listing is not None else self.listing(ctx)
        readable, unreadable = [], []
        for run in sorted(r for r, tags in listing.items() if metadata.LAYER_TABLE_TAG in tags):
            try:
                self.check_run(run, ctx, listing)
            except UnreadableRunError as e:
                unreadable.append(UnreadableRun(run, e.reason))
            except errors.NotFoundError as e:  # the run vanished since the listing
                unreadable.append(UnreadableRun(run, str(e)))
            except Exception as e:
                logger.exception("tb_gradflow: reading run %r failed", run)
                unreadable.append(UnreadableRun(run, f"reading it failed ({type(e).__name__}: {e})"))
            else:
                readable.append(run)
        return readable, unreadable

    # ------------------------------------------------------------------ layer table
    def layer_table(self, run, ctx=None, tags=None):
        """The run's latest LayerTable.

        Raises:
          tensorboard.errors.NotFoundError: no such run, or it has no layer table.
          UnreadableRunError: the table cannot be decoded or is of a newer version.
        """
        tags = tags if tags is not None else self.run_tags(run, ctx)
        return self._cached(
            ("table", run), _stamp(tags[metadata.LAYER_TABLE_TAG]), lambda: self._decode_layer_table(run, ctx)
        )

    def _decode_layer_table(self, run, ctx):
        prefetched = self._prefetched_tables.get(run)
        if prefetched is not None:
            return prefetched
        data = self._read(ctx, run, [metadata.LAYER_TABLE_TAG], downsample=1).get(metadata.LAYER_TABLE_TAG, [])
        if not data:
            raise errors.NotFoundError(f"run {run!r} has no tb_gradflow data")
        return self._table_of(run, data)

    def _table_of(self, run, data):
        """The LayerTable of the table series' last datum, its thresholds checked."""
        try:
            table = _layer_table_from_datum(data[-1])
        except Exception as e:  # protobuf's DecodeError, or a tensor of another type
            raise UnreadableRunError(
                run, f"its layer table cannot be decoded ({type(e).__name__}: {e}); the event file may be corrupt"
            ) from None
        try:
            self._thresholds_of(table)
        except (TypeError, ValueError) as e:
            raise UnreadableRunError(run, f"its layer table holds an unusable threshold ({e})") from None
        return table

    @staticmethod
    def _thresholds_of(table):
        return rules.Thresholds.from_dict(dict(table.thresholds))

    def thresholds(self, run, ctx=None, table=None):
        return self._thresholds_of(table or self.layer_table(run, ctx))

    # ------------------------------------------------------------------ series
    def statistics(self, run, ctx=None, tags=None):
        """Names of the per-layer statistics the run holds (metadata.STATISTICS order)."""
        tags = tags if tags is not None else self.run_tags(run, ctx)
        return [s for s in metadata.STATISTICS if metadata.layer_statistic_tag(s) in tags]

    def activation_statistics(self, run, ctx=None, tags=None):
        """Names of the activation statistics the run holds (metadata.ACTIVATION_STATISTICS order)."""
        tags = tags if tags is not None else self.run_tags(run, ctx)
        return [s for s in metadata.ACTIVATION_STATISTICS if metadata.activation_statistic_tag(s) in tags]

    def has_activation_statistics(self, run, ctx=None):
        """Whether the run holds activation statistics (older runs and
        activation_freq=0 do not)."""
        return bool(self.activation_statistics(run, ctx))

    def layer_series(self, run, statistic, ctx=None, downsample=None, n_layers=None, tags=None):
        """LayerSeries of one statistic (all samples unless `downsample`).

        Rows whose width differs from the layer table (a later fit of another
        model into the same run) or that are not numeric are dropped, so the
        matrix stays rectangular.

        Raises:
          tensorboard.errors.NotFoundError: unknown run or statistic.
          UnreadableRunError: see `run_tags`.
        """
        if statistic not in metadata.STATISTICS:
            raise errors.NotFoundError(f"unknown statistic {statistic!r}")
        tag = metadata.layer_statistic_tag(statistic)
        return self._series(run, tag, statistic, ctx, downsample, n_layers, tags)

    def activation_series(self, run, statistic, ctx=None, downsample=None, n_layers=None, tags=None):
        """LayerSeries of one activation statistic, rows in LayerTable.layers order
        (the gradient statistics' order; NaN for layers without captured activation).

        Raises:
          tensorboard.errors.NotFoundError: unknown run or statistic.
          UnreadableRunError: see `run_tags`.
        """
        if statistic not in metadata.ACTIVATION_STATISTICS:
            raise errors.NotFoundError(f"unknown activation statistic {statistic!r}")
        tag = metadata.activation_statistic_tag(statistic)
        return self._series(run, tag, statistic, ctx, downsample, n_layers, tags)

    def _series(self, run, tag, statistic, ctx, downsample, n_layers, tags):
        tags = tags if tags is not None else self.run_tags(run, ctx)
        if tag not in tags:
            raise errors.NotFoundError(f"run {run!r} has no statistic {statistic!r}")
        if n_layers is None:
            n_layers = len(self.layer_table(run, ctx, tags=tags).layers)
        downsample = downsample or ALL_SAMPLES
        return self._cached(
            ("series", run, tag, downsample),
            (_stamp(tags[tag]), n_layers),
            lambda: self._decode_series(ctx, run, tag, statistic, downsample, n_layers),
            size=lambda s: s.values.nbytes + s.steps.nbytes + s.wall_times.nbytes,
        )

    def _decode_series(self, ctx, run, tag, statistic, downsample, n_layers):
        prefetched = self._prefetched.pop((run, tag, downsample, n_layers), None)
        if prefetched is not None:
            return prefetched
        rows = read_rows(self._provider, self._ctx(ctx), self._experiment_id, metadata.PLUGIN_NAME,
                         tb_provider.RunTagFilter(runs=[run], tags=[tag]), downsample).get(run, {}).get(tag)
        if not rows or not len(rows[2]):
            raise errors.NotFoundError(f"run {run!r} has no statistic {statistic!r}")
        return _decode_vectors(*rows, n_layers)

    # ------------------------------------------------------------------ batched reads
    # Per run and series, a read is one provider call (a gRPC round trip under
    # the Rust data server). Routes over many runs read what the rules need
    # for all of them first, in a few calls; the per-run code below then finds
    # it here (this Reader lives for one request) or in the shared cache.
    # Per read_tensors answer; two in flight. Small answers reuse the memory of
    # the previous ones: 16 MiB answers were each parsed into fresh pages (on
    # this project's VM ~20k page faults per 50-run /alerts, 0.25 s of 0.75 s;
    # 2 MiB: 0.07 s). The gRPC channel would take 256 MiB.
    _BATCH_BYTES = 2 * 2**20

    def prefetch_rule_inputs(self, runs, ctx=None, listing=None):
        """Reads the series, layer tables and loss scales `verdicts` needs for
        `runs`, in a few batched provider calls; runs whose verdicts are cached
        are skipped. Never raises: problems are left for `verdicts` to raise,
        run by run, as without it."""
        try:
            self._prefetch_rule_inputs(runs, self._ctx(ctx), listing)
        except Exception:
            logger.warning("tb_gradflow: batched read failed; reading run by run", exc_info=True)
            self._prefetched.clear()
            self._prefetched_tables.clear()
            self._prefetched_scalars.clear()

    def _prefetch_rule_inputs(self, runs, ctx, listing):
        listing = listing if listing is not None else self.listing(ctx)
        pending = []
        for run in runs:
            tags = listing.get(run, {})
            if metadata.LAYER_TABLE_TAG not in tags or not has_rule_inputs(tags):
                continue
            if self._cache is not None and self._cache.contains((self._experiment_id, "verdicts", run), rule_stamp(tags)):
                continue
            pending.append(run)
        if not pending:
            return
        self._prefetch_tables(ctx, pending, listing)
        wanted = {}  # run -> [(tag, width)]
        for run in pending:
            table = self._prefetched_tables.get(run)
            if table is None:
                continue
            tags = listing[run]
            names = [metadata.layer_statistic_tag(s) for s in _gradient_rule_statistics(tags, table)]
            if all(metadata.activation_statistic_tag(a) in tags for a in rules.REQUIRED_ACTIVATION_STATISTICS):
                names += [metadata.activation_statistic_tag(a) for a in rules.REQUIRED_ACTIVATION_STATISTICS]
            widths = [len(table.layers)] * len(names)
            variable_rms = metadata.variable_statistic_tag(metadata.GRAD_RMS)
            if _has_backward_signal(tags, table):
                names.append(variable_rms)
                widths.append(len(table.variables))
            wanted[run] = [(tag, width) for tag, width in zip(names, widths)
                           if not self._is_cached(("series", run, tag, ALL_SAMPLES), (_stamp(tags[tag]), width))]
        batches = list(self._batches(wanted, listing))
        filters = [tb_provider.RunTagFilter(runs=batch, tags=sorted({tag for run in batch for tag, _ in wanted[run]}))
                   for batch in batches]
        answers = read_rows_batches(self._provider, ctx, self._experiment_id, metadata.PLUGIN_NAME, filters, ALL_SAMPLES)
        for batch, rows in zip(batches, answers):
            for run in batch:
                for tag, width in wanted[run]:
                    stored = rows.get(run, {}).get(tag)
                    if stored and len(stored[2]):
                        self._prefetched[(run, tag, ALL_SAMPLES, width)] = _decode_vectors(*stored, width)
        self._prefetch_rule_scalars(ctx, pending)

    def _is_cached(self, key, stamp):
        return self._cache is not None and self._cache.contains((self._experiment_id,) + key, stamp)

    def _batches(self, wanted, listing):
        """Runs grouped so that each read's answer stays near _BATCH_BYTES."""
        batch, size = [], 0
        for run, tags in wanted.items():
            if not tags:
                continue
            # max_step bounds the rows of a series whose steps start at 0 or 1.
            estimate = sum((max(listing[run][tag].max_step or 0, 1) + 1) * (4 * width + 64) for tag, width in tags)
            if batch and size + estimate > self._BATCH_BYTES:
                yield batch
                batch, size = [], 0
            batch.append(run)
            size += estimate
        if batch:
            yield batch

    def _prefetch_tables(self, ctx, runs, listing):
        missing = []
        for run in runs:
            stamp = _stamp(listing[run][metadata.LAYER_TABLE_TAG])
            if self._cache is not None:
                table = self._cache.get((self._experiment_id, "table", run), stamp)
                if table is not None:
                    self._prefetched_tables[run] = table
                    continue
            missing.append(run)
        if not missing:
            return
        data = self._provider.read_tensors(
            ctx, experiment_id=self._experiment_id, plugin_name=metadata.PLUGIN_NAME, downsample=1,
            run_tag_filter=tb_provider.RunTagFilter(runs=missing, tags=[metadata.LAYER_TABLE_TAG]),
        ) or {}
        for run in missing:
            datum = data.get(run, {}).get(metadata.LAYER_TABLE_TAG)
            if not datum:
                continue
            try:
                table = self._table_of(run, datum)
            except UnreadableRunError:
                continue  # check_run raises it again, for this run alone
            self._prefetched_tables[run] = table
            self._cached(("table", run), _stamp(listing[run][metadata.LAYER_TABLE_TAG]), lambda table=table: table)

    def _prefetch_rule_scalars(self, ctx, runs):
        for run, points in self._read_rule_scalars(ctx, runs).items():
            self._prefetched_scalars[run] = points

    def _read_rule_scalars(self, ctx, runs):
        """{run: {tag: [ScalarDatum]}} of the run-level scalars the rules read (RULE_SCALAR_TAGS)."""
        tags = list(RULE_SCALAR_TAGS.values())
        try:
            data = self._provider.read_scalars(
                ctx, experiment_id=self._experiment_id, plugin_name="scalars", downsample=ALL_SAMPLES,
                run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=tags),
            )
        except errors.PublicError:  # no scalars at all in this experiment
            data = {}
        return {run: {tag: (data or {}).get(run, {}).get(tag, []) for tag in tags} for run in runs}

    def histograms(self, run, layer, ctx=None):
        """{kind: [TensorDatum]} of one layer's gradient histograms (HISTOGRAM_KINDS
        present in the run), each sorted by step; {} when none was written.

        Args:
          layer: a `plugin_data_pb2.Layer` of the run's table.
        """
        wanted = {kind: metadata.histogram_tag(layer.depth, layer.name, kind) for kind in GRADIENT_HISTOGRAM_KINDS}
        data = self._read(ctx, run, wanted.values(), ALL_SAMPLES, plugin_name=HISTOGRAMS_PLUGIN)
        return {kind: sorted(data[tag], key=lambda d: d.step) for kind, tag in wanted.items() if data.get(tag)}

    def runs_with_histograms(self, ctx=None):
        """Names of the runs holding at least one tb_gradflow histogram."""
        prefix = f"{metadata.TAG_PREFIX}/histograms/"
        listing = self.listing(ctx, plugin_name=HISTOGRAMS_PLUGIN)
        return {run for run, tags in listing.items() if any(t.startswith(prefix) for t in tags)}

    # ------------------------------------------------------------------ rules
    def activation_verdicts(self, run, ctx=None, table=None, tags=None):
        """(activation steps, rules.evaluate_activation_series result); empty
        steps and no kinds when the run has no activation statistics."""
        tags = tags if tags is not None else self.run_tags(run, ctx)
        table = table or self.layer_table(run, ctx, tags=tags)
        present = self.activation_statistics(run, ctx, tags=tags)
        if any(name not in present for name in rules.REQUIRED_ACTIVATION_STATISTICS):
            return np.zeros(0, np.int64), {}
        n_layers = len(table.layers)
        series = {
            name: self.activation_series(run, name, ctx, n_layers=n_layers, tags=tags)
            for name in rules.REQUIRED_ACTIVATION_STATISTICS
        }
        steps = series["saturated_fraction"].steps
        for s in series.values():
            if not np.array_equal(s.steps, steps):
                steps = steps[np.isin(steps, s.steps)]
        aligned = {name: s.values if np.array_equal(s.steps, steps) else s.values[np.isin(s.steps, steps)]
                   for name, s in series.items()}
        monitored = np.array([layer.activation_capture == "in-step" for layer in table.layers], bool)
        two_sided = rules.saturation_applies(
            [layer.activation_two_sided for layer in table.layers], [layer.is_output for layer in table.layers]
        )
        verdicts = rules.evaluate_activation_series(
            aligned, monitored=monitored, two_sided=two_sided, thresholds=self.thresholds(run, ctx, table)
        )
        return steps, verdicts

    def verdicts(self, run, ctx=None, listing=None):
        """(steps, verdicts, layer table) for one run, every kind of rules.KINDS
        (rules.evaluate_series_fired: the vanishing and exploding values only
        where they fired).

        Steps are the union of the gradient rows and the activation rows (the
        same steps with the default update_freq = activation_freq); a kind
        holds its own rows' verdicts and does not fire on the others. Cached
        until the run gets new data.

        Raises:
          tensorboard.errors.NotFoundError: no such run.
          UnreadableRunError: see `check_run`; also when the run lacks a
            statistic the rules read.
        """
        tags = self._rule_tags(run, ctx, listing)
        return self._cached(
            ("verdicts", run), rule_stamp(tags), lambda: self._evaluate(run, ctx, tags), size=_verdicts_size
        )

    def _rule_tags(self, run, ctx, listing):
        """check_run's tags of a run whose rules can be evaluated (raises as `verdicts`)."""
        tags = self.check_run(run, ctx, listing)
        missing = [s for s in rules.REQUIRED_STATISTICS if metadata.layer_statistic_tag(s) not in tags]
        if missing:
            raise UnreadableRunError(run, NO_RULE_INPUTS_REASON.format(missing=", ".join(missing)))
        return tags

    def _evaluate(self, run, ctx, tags):
        steps, aligned, table, gradient_rules = self._rule_inputs(run, ctx, tags)
        # Every verdict as evaluate_series decides it; the vanishing and exploding
        # values only where they fired (the values an alert reports), which
        # saves most of the time.
        verdicts = rules.evaluate_series_fired(aligned, **gradient_rules)
        activation_steps, activation_verdicts = self.activation_verdicts(run, ctx, table, tags)
        steps, verdicts = rules.merge_verdicts(steps, verdicts, activation_steps, activation_verdicts)
        return steps, verdicts, table

    def _rule_inputs(self, run, ctx, tags):
        """(steps, {rules name: [n_steps, ...]}, layer table, the gradient rules' other
        arguments) of the rows every statistic the gradient rules read holds."""
        table = self.layer_table(run, ctx, tags=tags)
        n_layers = len(table.layers)
        series = {
            name: self.layer_series(run, name, ctx, n_layers=n_layers, tags=tags)
            for name in _gradient_rule_statistics(tags, table)
        }
        signal = self._backward_signal(run, ctx, tags, table)
        if signal is not None:
            series[rules.BACKWARD_SIGNAL] = signal
        run_scalars = self._rule_scalars(run, ctx)
        # Every statistic is written in the same event, but a sampling reservoir
        # may still have kept different rows per tag: use the common steps
        # (no copy where a series holds exactly those, the usual case).
        steps = series["grad_norm"].steps
        for s in series.values():
            if not np.array_equal(s.steps, steps):
                steps = steps[np.isin(steps, s.steps)]
        aligned = {name: s.values if np.array_equal(s.steps, steps) else s.values[np.isin(s.steps, steps)]
                   for name, s in series.items()}
        loss_scale = run_scalars.get(rules.LOSS_SCALE)
        if loss_scale is not None:
            # The scale of the latest row at or before each step (NaN before the first).
            at = np.searchsorted(loss_scale.steps, steps, side="right") - 1
            aligned[rules.LOSS_SCALE] = np.where(at >= 0, loss_scale.values[np.maximum(at, 0), 0], np.nan)
        loss_steps = run_scalars.get(rules.NONFINITE_LOSS_STEPS)
        if loss_steps is not None:
            # Written on each row with the statistics; 0 where a row lacks it.
            at = np.searchsorted(loss_steps.steps, steps)
            found = (at < loss_steps.steps.size) & (loss_steps.steps[np.minimum(at, loss_steps.steps.size - 1)] == steps)
            aligned[rules.NONFINITE_LOSS_STEPS] = np.where(found, loss_steps.values[np.minimum(at, loss_steps.steps.size - 1), 0], 0.0)
        gradient_rules = dict(
            has_gradient=np.array([layer.has_gradient for layer in table.layers], bool),
            has_parameters=rules.layers_with_variables([v.layer_index for v in table.variables], n_layers),
            thresholds=self.thresholds(run, ctx, table),
        )
        return steps, aligned, table, gradient_rules

    def rule_series(self, run, statistic, ctx=None, listing=None):
        """LayerSeries of a rule's own per-layer quantity (RULE_STATISTICS) at
        the rows it is decided on (the vanishing rule: each layer's backward
        signal over the largest of the layers after it).

        Raises:
          tensorboard.errors.NotFoundError: unknown statistic.
          UnreadableRunError: as `verdicts`.
        """
        if statistic not in RULE_STATISTICS:
            raise errors.NotFoundError(f"unknown rule statistic {statistic!r}")
        tags = self._rule_tags(run, ctx, listing)

        def compute():
            steps, aligned, _, gradient_rules = self._rule_inputs(run, ctx, tags)
            values = rules.vanishing_relative(aligned, **gradient_rules)
            keep = ~np.all(np.isnan(values), axis=1) if values.size else np.zeros(0, bool)
            return LayerSeries(np.asarray(steps)[keep], np.full(int(keep.sum()), np.nan), values[keep])

        return self._cached(("rule_series", run, statistic), rule_stamp(tags), compute,
                            size=lambda s: s.values.nbytes + s.steps.nbytes + s.wall_times.nbytes)

    def statistic_series(self, run, statistic, ctx=None, tags=None):
        """A written statistic (`layer_series`) or a rule's quantity (`rule_series`) by name."""
        if statistic in RULE_STATISTICS:
            return self.rule_series(run, statistic, ctx, listing={run: tags} if tags is not None else None)
        tags = tags if tags is not None else self.run_tags(run, ctx)
        n_layers = len(self.layer_table(run, ctx, tags=tags).layers)
        return self.layer_series(run, statistic, ctx, n_layers=n_layers, tags=tags)

    def variable_series(self, run, statistic, ctx=None, tags=None):
        """LayerSeries of one per-variable statistic (columns: LayerTable.variables).

        Raises:
          tensorboard.errors.NotFoundError: unknown run or statistic.
        """
        tags = tags if tags is not None else self.run_tags(run, ctx)
        table = self.layer_table(run, ctx, tags=tags)
        tag = metadata.variable_statistic_tag(statistic)
        return self._series(run, tag, statistic, ctx, None, len(table.variables), tags)

    def _backward_signal(self, run, ctx, tags, table):
        """LayerSeries of rules.backward_signal, or None when the run has no
        per-variable gradient RMS (the rules then use each layer's RMS)."""
        if not _has_backward_signal(tags, table):
            return None
        variable_rms = self.variable_series(run, metadata.GRAD_RMS, ctx, tags=tags)
        index = rules.signal_variables(
            [v.name for v in table.variables], [v.layer_index for v in table.variables],
            [layer.name for layer in table.layers],
        )
        return LayerSeries(variable_rms.steps, variable_rms.wall_times,
                           rules.backward_signal(variable_rms.values, index))

    def _rule_scalars(self, run, ctx):
        """{rules name: LayerSeries [steps, 1]} of the run-level scalars the rules
        read (the dynamic loss scale, the non-finite loss steps), those present."""
        points = self._prefetched_scalars.pop(run, None)
        if points is None:
            points = self._read_rule_scalars(self._ctx(ctx), [run])[run]
        out = {}
        for name, tag in RULE_SCALAR_TAGS.items():
            data = sorted(points.get(tag, []), key=lambda d: d.step)
            if data:
                out[name] = LayerSeries(np.array([p.step for p in data], np.int64), np.array([p.wall_time for p in data]),
                                        np.array([[p.value] for p in data], np.float64))
        return out

    def alerts(self, run, ctx=None, listing=None):
        """list of rules.Alert for one run (raises as `verdicts`).

        Args:
          listing: `listing()` of every run, when the caller has it (saves a
            provider call per run).
        """
        return summarize(*self.verdicts(run, ctx, listing))


def summarize(steps, verdicts, table):
    """rules.summarize for a run read back: its layer names and which layers get a gradient."""
    return rules.summarize(steps, verdicts, [layer.name for layer in table.layers],
                           has_gradient=[layer.has_gradient for layer in table.layers])


def _verdicts_size(result):
    def owned(array):  # FiredValues hold their fired cells only (np.asarray would build the dense matrix)
        return array.nbytes if isinstance(array, rules.FiredValues) else np.asarray(array).nbytes

    try:
        return sum(owned(f) + owned(v) for f, v in result[1].values())
    except Exception:  # a shape this version does not know: count it as small
        return 0
