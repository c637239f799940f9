"""Reads tb_gradflow runs through TensorBoard's data provider (no TensorFlow).

    >>> from tb_gradflow import reader
    >>> r = reader.Reader.for_logdir("examples/logs")            # doctest: +SKIP
    >>> for run in r.runs():                                      # doctest: +SKIP
    ...     print(run, [a.kind for a in r.alerts(run)])

The plugin passes TensorBoard's own `context.data_provider` (either loader);
the CLI builds a `MultiplexerDataProvider` over the logdir with
`Reader.for_logdir`, keeping every sample. Both then run the same code, and
the alerts come from `tb_gradflow.rules` with the thresholds the writer
recorded: hook, plugin and CLI agree by construction.
"""

import dataclasses
import os

import numpy as np
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.data import provider as tb_provider

from tb_gradflow import metadata
from tb_gradflow import rules
from tb_gradflow.proto import plugin_data_pb2


@dataclasses.dataclass
class LayerSeries:
    """One statistic of one run: values[i, j] is layer j at steps[i]."""

    steps: np.ndarray  # int64 [n_steps]
    wall_times: np.ndarray  # float64 [n_steps]
    values: np.ndarray  # float64 [n_steps, n_layers]


def _layer_table_from_datum(datum):
    value = datum.numpy
    raw = value.item() if hasattr(value, "item") else value
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
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


class Reader:
    """tb_gradflow data of one experiment, through a TensorBoard DataProvider.

    Args:
      data_provider: a `tensorboard.data.provider.DataProvider`.
      experiment_id: "" for a plain `--logdir`.
    """

    def __init__(self, data_provider, experiment_id=""):
        self._provider = data_provider
        self._experiment_id = experiment_id

    @classmethod
    def for_logdir(cls, logdir):
        """A Reader over `logdir` (a directory of runs, or one run), all samples kept.

        Raises:
          FileNotFoundError: `logdir` is not a directory.
        """
        return cls(logdir_data_provider(logdir))

    def _ctx(self, ctx):
        return ctx if ctx is not None else tb_context.RequestContext()

    def _list(self, ctx, run=None, tags=None):
        run_tag_filter = tb_provider.RunTagFilter(runs=[run] if run is not None else None, tags=tags)
        result = self._provider.list_tensors(
            self._ctx(ctx),
            experiment_id=self._experiment_id,
            plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=run_tag_filter,
        )
        return result or {}

    def runs(self, ctx=None):
        """Names of the runs that hold a tb_gradflow layer table, sorted."""
        listing = self._list(ctx, tags=[metadata.LAYER_TABLE_TAG])
        return sorted(run for run, tags in listing.items() if metadata.LAYER_TABLE_TAG in tags)

    def has_data(self, ctx=None):
        return bool(self.runs(ctx))

    def _read(self, ctx, run, tag, downsample):
        result = self._provider.read_tensors(
            self._ctx(ctx),
            experiment_id=self._experiment_id,
            plugin_name=metadata.PLUGIN_NAME,
            downsample=downsample,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        return (result or {}).get(run, {}).get(tag, [])

    def layer_table(self, run, ctx=None):
        """The run's latest LayerTable.

        Raises:
          tensorboard.errors.NotFoundError: no such run, or it has no layer table.
        """
        data = self._read(ctx, run, metadata.LAYER_TABLE_TAG, downsample=1)
        if not data:
            raise errors.NotFoundError(f"run {run!r} has no tb_gradflow data")
        return _layer_table_from_datum(data[-1])

    def thresholds(self, run, ctx=None, table=None):
        table = table or self.layer_table(run, ctx)
        return rules.Thresholds.from_dict(dict(table.thresholds))

    def statistics(self, run, ctx=None):
        """Names of the per-layer statistics the run holds."""
        listing = self._list(ctx, run=run).get(run, {})
        prefix = metadata.layer_statistic_tag("")
        return [s for s in metadata.STATISTICS if prefix + s in listing]

    def layer_series(self, run, statistic, ctx=None, downsample=None, n_layers=None):
        """LayerSeries of one statistic (all samples unless `downsample`).

        Rows whose width differs from the layer table (a later fit of another
        model into the same run) are dropped, so the matrix stays rectangular.

        Raises:
          tensorboard.errors.NotFoundError: unknown run or statistic.
        """
        if statistic not in metadata.STATISTICS:
            raise errors.NotFoundError(f"unknown statistic {statistic!r}")
        return self._series(run, metadata.layer_statistic_tag(statistic), statistic, ctx, downsample, n_layers)

    def activation_statistics(self, run, ctx=None):
        """Names of the activation statistics the run holds (metadata.ACTIVATION_STATISTICS order)."""
        listing = self._list(ctx, run=run).get(run, {})
        return [s for s in metadata.ACTIVATION_STATISTICS if metadata.activation_statistic_tag(s) in listing]

    def has_activation_statistics(self, run, ctx=None):
        """Whether the run holds activation statistics (older runs and
        activation_freq=0 do not)."""
        return bool(self.activation_statistics(run, ctx))

    def activation_series(self, run, statistic, ctx=None, downsample=None, n_layers=None):
        """LayerSeries of one activation statistic, rows in LayerTable.layers order
        (the gradient statistics' order; NaN for layers without captured activation).

        Raises:
          tensorboard.errors.NotFoundError: unknown run or statistic.
        """
        if statistic not in metadata.ACTIVATION_STATISTICS:
            raise errors.NotFoundError(f"unknown activation statistic {statistic!r}")
        return self._series(run, metadata.activation_statistic_tag(statistic), statistic, ctx, downsample, n_layers)

    def _series(self, run, tag, statistic, ctx, downsample, n_layers):
        if n_layers is None:
            n_layers = len(self.layer_table(run, ctx).layers)
        data = self._read(ctx, run, tag, downsample or 10**9)
        if not data:
            raise errors.NotFoundError(f"run {run!r} has no statistic {statistic!r}")
        data = [d for d in data if np.shape(d.numpy) == (n_layers,)]
        data.sort(key=lambda d: d.step)
        steps = np.array([d.step for d in data], np.int64)
        wall_times = np.array([d.wall_time for d in data], np.float64)
        values = np.array([np.asarray(d.numpy, np.float64) for d in data]).reshape(len(data), n_layers)
        return LayerSeries(steps=steps, wall_times=wall_times, values=values)

    def activation_verdicts(self, run, ctx=None, table=None):
        """(activation steps, rules.evaluate_activation_series result); empty
        steps and no kinds when the run has no activation statistics."""
        table = table or self.layer_table(run, ctx)
        present = self.activation_statistics(run, ctx)
        if any(name not in present for name in rules.REQUIRED_ACTIVATION_STATISTICS):
            return np.zeros(0, np.int64), {}
        n_layers = len(table.layers)
        series = {
            name: self.activation_series(run, name, ctx, n_layers=n_layers)
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
        holds its own rows' verdicts and does not fire on the others."""
        table = self.layer_table(run, ctx)
        n_layers = len(table.layers)
        series = {name: self.layer_series(run, name, ctx, n_layers=n_layers) for name in rules.REQUIRED_STATISTICS}
        # Every statistic is written in the same event, but a sampling reservoir
        # may still have kept different rows per tag: use the common steps.
        steps = series["grad_norm"].steps
        for s in series.values():
            steps = steps[np.isin(steps, s.steps)]
        aligned = {
            name: series[name].values[np.isin(series[name].steps, steps)] for name in rules.REQUIRED_STATISTICS
        }
        has_gradient = np.array([layer.has_gradient for layer in table.layers], bool)
        verdicts = rules.evaluate_series(aligned, has_gradient=has_gradient, thresholds=self.thresholds(run, ctx, table))
        activation_steps, activation_verdicts = self.activation_verdicts(run, ctx, table)
        steps, verdicts = rules.merge_verdicts(steps, verdicts, activation_steps, activation_verdicts)
        return steps, verdicts, table

    def alerts(self, run, ctx=None):
        """list of rules.Alert for one run."""
        steps, verdicts, table = self.verdicts(run, ctx)
        return rules.summarize(steps, verdicts, [layer.name for layer in table.layers])
