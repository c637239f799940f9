"""Host side of one run: raw snapshot -> statistics -> alerts -> events.

    >>> import tempfile, numpy as np
    >>> from tb_gradflow.run_logger import RunLogger
    >>> from tb_gradflow.proto import plugin_data_pb2
    >>> table = plugin_data_pb2.LayerTable(layers=[plugin_data_pb2.Layer(name="dense")],
    ...     variables=[plugin_data_pb2.Variable(name="dense/kernel", shape=[2])])
    >>> logger = RunLogger(tempfile.mkdtemp())
    >>> logger.set_layer_table(step=0, table=table)
    >>> logger.close()

Shared by the Keras callback and the custom-loop writer, so both write the
same events. It imports no TensorFlow.
"""

import collections

import numpy as np

from tb_gradflow import aggregate
from tb_gradflow import metadata
from tb_gradflow import rules
from tb_gradflow.writer import EventWriter


class RunLogger:
    """Writes one run's tb_gradflow events.

    Args:
      log_dir: the run directory.
      thresholds: `rules.Thresholds` used for the alert scalars (and recorded
        in the layer table so readers use the same).
    """

    def __init__(self, log_dir, thresholds=rules.DEFAULT_THRESHOLDS):
        self.writer = EventWriter(log_dir)
        self.thresholds = thresholds
        self.table = None
        self._history = []
        self._layers_alerted = {kind: set() for kind in rules.KINDS}
        self.last_step = -1
        self.last_histogram_step = -1
        self.last_activation_step = -1
        self._activation_history = []
        self._activation_rows_seen = 0

    @property
    def log_dir(self):
        return self.writer.log_dir

    def set_layer_table(self, *, step, table, device_layer_order=None, activation_rows=None):
        """Records the layer table (thresholds filled in) and writes it.

        Args:
          device_layer_order: when the recorder's per-layer rows are not in
            the table's depth order, `device_layer_order[i]` is the recorder row
            of table layer i.
          activation_rows: `activation_rows[i]` is the activation recorder's
            slot of table layer i, -1 for layers without captured activation.
        """
        self._device_layer_order = None if device_layer_order is None else np.asarray(device_layer_order)
        table.thresholds.clear()
        table.thresholds.update(self.thresholds.to_dict())
        self.table = table
        self._layer_of_variable = np.array([v.layer_index for v in table.variables], np.int64)
        self._has_gradient = np.array([layer.has_gradient for layer in table.layers], bool)
        self._has_parameters = rules.layers_with_variables(self._layer_of_variable, len(table.layers))
        self._layer_names = [layer.name for layer in table.layers]
        self._signal_index = rules.signal_variables(
            [v.name for v in table.variables], self._layer_of_variable, self._layer_names
        )
        n = len(table.layers)
        self._activation_rows = np.full(n, -1) if activation_rows is None else np.asarray(activation_rows, np.int64)
        self._monitored = self._activation_rows >= 0
        self._two_sided = rules.saturation_applies(
            [layer.activation_two_sided for layer in table.layers], [layer.is_output for layer in table.layers]
        )
        # The captured layers' rows (table order), their recorder slots and
        # unit counts: a row's per-unit arrays are joined in this order.
        self._captured_rows = np.flatnonzero(self._activation_rows >= 0)
        self._captured_slots = self._activation_rows[self._captured_rows]
        # The last dead_window activation rows of (active counts per unit,
        # elements per unit), joined over the captured layers, and their sums
        # as the window moves (counts are integers in float64: adding and
        # removing them is exact).
        self._activation_window = collections.deque(maxlen=self.thresholds.dead_window)
        self._activation_window_sums = None
        self.writer.write_layer_table(step, table)

    def log(self, raw):
        """Writes whatever in `raw` (a recorder read) is newer than the last write."""
        if self.table is None:
            raise RuntimeError("set_layer_table must be called before log")
        if self._device_layer_order is not None:
            order = self._device_layer_order
            raw.layer_interval_max = raw.layer_interval_max[order]
            raw.layer_interval_min = raw.layer_interval_min[order]
            if raw.histogram_step >= 0:
                raw.histogram_range = raw.histogram_range[order]
                raw.histogram_counts = raw.histogram_counts[order]
                raw.log10_counts = raw.log10_counts[order]
        if raw.step > self.last_step:
            self._log_statistics(raw)
            self.last_step = raw.step
        if raw.histogram_step > self.last_histogram_step:
            self._log_histograms(raw)
            self.last_histogram_step = raw.histogram_step

    def _log_statistics(self, raw):
        variable_stats = aggregate.per_variable(raw)
        layer_stats = aggregate.per_layer(
            raw, layer_of_variable=self._layer_of_variable, n_layers=len(self._layer_names)
        )
        self.writer.write_layer_statistics(raw.step, layer_stats, variable_stats)
        rule_stats = {name: layer_stats[name] for name in rules.REQUIRED_STATISTICS}
        rule_stats[rules.BACKWARD_SIGNAL] = rules.backward_signal(
            variable_stats[metadata.GRAD_RMS], self._signal_index
        )
        loss_scale = float(raw.loss_scale) if raw.loss_scale is not None else float("nan")
        if np.isfinite(loss_scale):
            self.writer.write_scalars(raw.step, {metadata.LOSS_SCALE_TAG: loss_scale}, description="tb_gradflow loss scale")
            rule_stats[rules.LOSS_SCALE] = np.float64(loss_scale)
        if np.isfinite(raw.nonfinite_loss_steps):
            loss_scalars = {
                metadata.LOSS_TAG: raw.loss,
                metadata.LOSS_INTERVAL_MAX_TAG: raw.loss_interval_max,
                metadata.LOSS_INTERVAL_MIN_TAG: raw.loss_interval_min,
                metadata.NONFINITE_LOSS_STEPS_TAG: raw.nonfinite_loss_steps,
            }
            self.writer.write_scalars(raw.step, loss_scalars, description="tb_gradflow: the loss of every step")
            rule_stats[rules.NONFINITE_LOSS_STEPS] = np.float64(raw.nonfinite_loss_steps)
        verdicts = rules.evaluate_step(
            rule_stats, has_gradient=self._has_gradient, history=self._history, thresholds=self.thresholds,
            has_parameters=self._has_parameters, all_values=False,  # the alert scalars count verdicts only
        )
        self._history.append(rule_stats)
        del self._history[: -self.thresholds.history_length]
        # Activation kinds are decided on activation rows (log_activations).
        gradient_verdicts = {kind: verdicts[kind] for kind in rules.GRADIENT_KINDS}
        self.writer.write_scalars(raw.step, self._alert_scalars(gradient_verdicts))

    def _log_histograms(self, raw):
        layers = [(layer.depth, layer.name) for layer in self.table.layers]
        rows = [i for i, has in enumerate(self._has_gradient) if has]
        self.writer.write_histograms(
            raw.histogram_step,
            [layers[i] for i in rows],
            raw.histogram_range[rows, 0],
            raw.histogram_range[rows, 1],
            raw.histogram_counts[rows],
            raw.log10_counts[rows],
        )

    def log_activations(self, snapshot):
        """Writes an activation recorder read (`aggregate.ActivationSnapshot`) if it is new."""
        if self.table is None:
            raise RuntimeError("set_layer_table must be called before log_activations")
        if snapshot.step <= self.last_activation_step or snapshot.step < 0:
            return
        n = len(self._layer_names)
        values = {name: np.full(n, np.nan) for name in metadata.ACTIVATION_STATISTICS}
        rows, slots = self._captured_rows, self._captured_slots
        if rows.size:
            moments = np.asarray([snapshot.moments[slot] for slot in slots], np.float64)
            for name, column in aggregate.activation_statistics_rows(moments).items():
                values[name][rows] = column
            active = [np.asarray(snapshot.active[slot], np.float64) for slot in slots]
            units = np.array([a.size for a in active])
            layer_of_unit = np.repeat(np.arange(rows.size), units)
            joined = np.concatenate(active)

            def per_layer_fraction(flags):
                with np.errstate(invalid="ignore", divide="ignore"):
                    return np.bincount(layer_of_unit, weights=flags, minlength=rows.size) / np.where(units > 0, units, np.nan)

            values[metadata.DEAD_FRACTION][rows] = per_layer_fraction(joined == 0)
            per_unit = moments[:, 1] / np.maximum(units, 1)  # column 1: element count
            window = self._activation_window
            if self._activation_window_sums is None:
                self._activation_window_sums = (np.zeros_like(joined), np.zeros(rows.size))
            seen, elements = self._activation_window_sums
            if len(window) == window.maxlen:
                seen, elements = seen - window[0][0], elements - window[0][1]
            window.append((joined, per_unit))
            seen, elements = seen + joined, elements + per_unit
            self._activation_window_sums = (seen, elements)
            inactive = per_layer_fraction(seen < self.thresholds.dead_inactivity * elements[layer_of_unit])
            values[metadata.INACTIVE_FRACTION][rows] = np.where(elements > 0, inactive, np.nan)
        self.writer.write_activation_statistics(snapshot.step, values)
        layers = self.table.layers
        self.writer.write_preactivation_histograms(
            snapshot.step,
            [(layers[row].depth, layers[row].name) for row in rows],
            [snapshot.histogram_range[slot] for slot in slots],
            [snapshot.histogram_counts[slot] for slot in slots],
        )
        row_stats = {name: values[name] for name in rules.REQUIRED_ACTIVATION_STATISTICS}
        verdicts = rules.evaluate_activation_step(
            row_stats, monitored=self._monitored, two_sided=self._two_sided,
            history=self._activation_history, thresholds=self.thresholds, rows_seen=self._activation_rows_seen,
        )
        self._activation_rows_seen += 1
        self._activation_history.append(row_stats)
        del self._activation_history[: len(self._activation_history) - self.thresholds.activation_history_length]
        self.writer.write_scalars(snapshot.step, self._alert_scalars(verdicts))
        self.last_activation_step = snapshot.step

    def _alert_scalars(self, verdicts):
        scalars = {}
        for kind, verdict in verdicts.items():
            scalars[metadata.alert_count_tag(kind)] = float(verdict.fired.sum())
            self._layers_alerted[kind].update(np.flatnonzero(verdict.fired).tolist())
            # A layer gets its own alert series from the first time it fires,
            # so a healthy 300-layer model adds no charts to the Scalars tab.
            for index in sorted(self._layers_alerted[kind]):
                scalars[metadata.layer_alert_tag(kind, self._layer_names[index])] = float(verdict.fired[index])
        return scalars

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()
