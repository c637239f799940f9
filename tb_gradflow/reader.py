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
    values: np.ndarray  # float64 [n_steps, n_layers]


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

    def listing(self, ctx=None, run=None, plugin_name=metadata.PLUGIN_NAME):
        """{run: {tag: TensorTimeSeries}} of one plugin's series (all runs, or one)."""
        result = self._provider.list_tensors(
            self._ctx(ctx),
            experiment_id=self._experiment_id,
            plugin_name=plugin_name,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run]) if run is not None else None,
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
        data = self._read(ctx, run, [metadata.LAYER_TABLE_TAG], downsample=1).get(metadata.LAYER_TABLE_TAG, [])
        if not data:
            raise errors.NotFoundError(f"run {run!r} has no tb_gradflow data")
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
        data = self._read(ctx, run, [tag], downsample).get(tag, [])
        if not data:
            raise errors.NotFoundError(f"run {run!r} has no statistic {statistic!r}")
        rows = []
        for datum in data:
            value = np.asarray(datum.numpy)
            if value.shape == (n_layers,) and value.dtype.kind in "fiub":
                rows.append((datum.step, datum.wall_time, value.astype(np.float64)))
        rows.sort(key=lambda row: row[0])
        return LayerSeries(
            steps=np.array([r[0] for r in rows], np.int64),
            wall_times=np.array([r[1] for r in rows], np.float64),
            values=np.array([r[2] for r in rows], np.float64).reshape(len(rows), n_layers),
        )

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
            steps = steps[np.isin(steps, s.steps)]
        aligned = {name: s.values[np.isin(s.steps, steps)] for name, s in series.items()}
        monitored = np.array([layer.activation_capture == "in-step" for layer in table.layers], bool)
        two_sided = rules.saturation_applies(
            [layer.activation_two_sided for layer in table.layers], [layer.is_output for layer in table.layers]
        )
        verdicts = rules.evaluate_activation_series(
            aligned, monitored=monitored, two_sided=two_sided, thresholds=self.thresholds(run, ctx, table)
        )
        return steps, verdicts

    def verdicts(self, run, ctx=None):
        """(steps, verdicts, layer table) for one run, every kind of rules.KINDS.

        Steps are the union of the gradient rows and the activation rows (the
        same steps with the default update_freq = activation_freq); a kind
        holds its own rows' verdicts and does not fire on the others. Cached
        until the run gets new data.

        Raises:
          tensorboard.errors.NotFoundError: no such run.
          UnreadableRunError: see `check_run`; also when the run lacks a
            statistic the rules read.
        """
        tags = self.check_run(run, ctx)
        missing = [s for s in rules.REQUIRED_STATISTICS if metadata.layer_statistic_tag(s) not in tags]
        if missing:
            raise UnreadableRunError(run, NO_RULE_INPUTS_REASON.format(missing=", ".join(missing)))
        return self._cached(
            ("verdicts", run), run_stamp(tags), lambda: self._evaluate(run, ctx, tags), size=_verdicts_size
        )

    def _evaluate(self, run, ctx, tags):
        table = self.layer_table(run, ctx, tags=tags)
        n_layers = len(table.layers)
        series = {
            name: self.layer_series(run, name, ctx, n_layers=n_layers, tags=tags) for name in rules.REQUIRED_STATISTICS
        }
        signal = self._backward_signal(run, ctx, tags, table)
        if signal is not None:
            series[rules.BACKWARD_SIGNAL] = signal
        loss_scale = self._loss_scale(run, ctx)
        if loss_scale is not None:
            series[rules.LOSS_SCALE] = loss_scale
        # Every statistic is written in the same event, but a sampling reservoir
        # may still have kept different rows per tag: use the common steps.
        steps = series["grad_norm"].steps
        for name in rules.REQUIRED_STATISTICS + ((rules.BACKWARD_SIGNAL,) if signal is not None else ()):
            steps = steps[np.isin(steps, series[name].steps)]
        aligned = {name: s.values[np.isin(s.steps, steps)] for name, s in series.items() if name != rules.LOSS_SCALE}
        if loss_scale is not None:
            # The scale of the latest row at or before each step (NaN before the first).
            at = np.searchsorted(loss_scale.steps, steps, side="right") - 1
            aligned[rules.LOSS_SCALE] = np.where(at >= 0, loss_scale.values[np.maximum(at, 0), 0], np.nan)
        has_gradient = np.array([layer.has_gradient for layer in table.layers], bool)
        has_parameters = rules.layers_with_variables([v.layer_index for v in table.variables], n_layers)
        verdicts = rules.evaluate_series(aligned, has_gradient=has_gradient, thresholds=self.thresholds(run, ctx, table),
                                         has_parameters=has_parameters)
        activation_steps, activation_verdicts = self.activation_verdicts(run, ctx, table, tags)
        steps, verdicts = rules.merge_verdicts(steps, verdicts, activation_steps, activation_verdicts)
        return steps, verdicts, table

    def rule_series(self, run, statistic, ctx=None):
        """LayerSeries of a rule's own per-layer quantity (RULE_STATISTICS) at
        the rows it is decided on (the vanishing rule: each layer's backward
        signal over the largest of the layers after it).

        Raises:
          tensorboard.errors.NotFoundError: unknown statistic.
          UnreadableRunError: as `verdicts`.
        """
        if statistic not in RULE_STATISTICS:
            raise errors.NotFoundError(f"unknown rule statistic {statistic!r}")
        steps, verdicts, _ = self.verdicts(run, ctx)
        _, values = verdicts[RULE_STATISTICS[statistic]]
        keep = ~np.all(np.isnan(values), axis=1) if values.size else np.zeros(0, bool)
        return LayerSeries(np.asarray(steps)[keep], np.full(int(keep.sum()), np.nan), values[keep])

    def statistic_series(self, run, statistic, ctx=None, tags=None):
        """A written statistic (`layer_series`) or a rule's quantity (`rule_series`) by name."""
        if statistic in RULE_STATISTICS:
            return self.rule_series(run, statistic, ctx)
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
        if metadata.variable_statistic_tag(metadata.GRAD_RMS) not in tags or not len(table.variables):
            return None
        variable_rms = self.variable_series(run, metadata.GRAD_RMS, ctx, tags=tags)
        index = rules.signal_variables(
            [v.name for v in table.variables], [v.layer_index for v in table.variables],
            [layer.name for layer in table.layers],
        )
        return LayerSeries(variable_rms.steps, variable_rms.wall_times,
                           rules.backward_signal(variable_rms.values, index))

    def _loss_scale(self, run, ctx):
        """LayerSeries [steps, 1] of the dynamic loss scale, or None without one."""
        try:
            data = self._provider.read_scalars(
                self._ctx(ctx), experiment_id=self._experiment_id, plugin_name="scalars", downsample=ALL_SAMPLES,
                run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=[metadata.LOSS_SCALE_TAG]),
            )
        except errors.PublicError:  # no scalars at all in this experiment: no loss scale
            return None
        points = sorted((data or {}).get(run, {}).get(metadata.LOSS_SCALE_TAG, []), key=lambda d: d.step)
        if not points:
            return None
        return LayerSeries(np.array([p.step for p in points], np.int64), np.array([p.wall_time for p in points]),
                           np.array([[p.value] for p in points], np.float64))

    def alerts(self, run, ctx=None):
        """list of rules.Alert for one run (raises as `verdicts`)."""
        return summarize(*self.verdicts(run, ctx))


def summarize(steps, verdicts, table):
    """rules.summarize for a run read back: its layer names and which layers get a gradient."""
    return rules.summarize(steps, verdicts, [layer.name for layer in table.layers],
                           has_gradient=[layer.has_gradient for layer in table.layers])


def _verdicts_size(result):
    try:
        return sum(np.asarray(f).nbytes + np.asarray(v).nbytes for f, v in result[1].values())
    except Exception:  # a shape this version does not know: count it as small
        return 0
