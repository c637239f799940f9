"""The custom-training-loop writer: `(step, gradients, variables)` in, events out.

    import tensorflow as tf, tb_gradflow
    writer = tb_gradflow.GradientWriter("logs/custom", update_freq=10)

    @tf.function            # optional: works eagerly too
    def train_step(step, x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        writer.write(step, grads, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))

    ...
    writer.close()

Statistics are computed by the same on-device code as the `fit` callback
(`GradientRecorder`) and written by the same host code (`RunLogger`), so the
events are identical in form. Inside a `tf.function` the host write is a
`tf.py_function` under a `tf.cond` that is true only on the rows `schedule`
picks (every step at first, then every `update_freq` steps); other steps
never leave the graph. (`jit_compile=True` functions
cannot call Python: call `write` from a non-XLA function there.)

The update-to-weight ratio needs the weights before and after the optimizer
step, which `write` does not see; it is reported as NaN. Weight norms are
measured when `write` is called.
"""

import os

import numpy as np
import tensorflow as tf

from tb_gradflow import rules
from tb_gradflow import schedule
from tb_gradflow.proto import plugin_data_pb2
from tb_gradflow.keras.callback import _check_positive_int
from tb_gradflow.keras.callback import _raw
from tb_gradflow.recorder import GradientRecorder
from tb_gradflow.run_logger import RunLogger


def _variable_path(variable):
    path = getattr(variable, "path", None) or variable.name
    return path[:-2] if path.endswith(":0") else path


def table_from_variables(variables, has_gradient):
    """A LayerTable grouping variables by path prefix, in the order given.

    >>> import tensorflow as tf
    >>> vs = [tf.Variable([1.0], name="dense/kernel"), tf.Variable([0.0], name="dense/bias")]
    >>> [layer.name for layer in table_from_variables(vs, [True, True]).layers]
    ['dense']
    """
    layers, index_of, entries = [], {}, []
    for i, v in enumerate(variables):
        path = _variable_path(v)
        layer_name = path.rsplit("/", 1)[0] if "/" in path else path
        if layer_name not in index_of:
            index_of[layer_name] = len(layers)
            layers.append(plugin_data_pb2.Layer(name=layer_name, depth=len(layers), class_name="", activation=""))
        layer = layers[index_of[layer_name]]
        layer.parameter_count += int(np.prod(v.shape))
        layer.has_gradient = layer.has_gradient or bool(has_gradient[i])
        entries.append(
            plugin_data_pb2.Variable(
                name=path,
                layer_index=index_of[layer_name],
                shape=[int(d) for d in v.shape],
                has_gradient=bool(has_gradient[i]),
            )
        )
    return plugin_data_pb2.LayerTable(layers=layers, variables=entries)


class GradientWriter:
    """Writes tb_gradflow events from a custom training loop.

    Args:
      log_dir: the run directory (events go straight into it).
      update_freq: the steady-state gap between statistic rows; the first
        steps are written more densely (`tb_gradflow.schedule`).
      histogram_freq: histograms when `step % histogram_freq == 0`; 0 disables.
      thresholds: `tb_gradflow.rules.Thresholds` for the alerts.
      dense_start: as for `GradFlow` (0: a row every `update_freq` steps).

    Raises:
      ValueError: an argument is out of range.
      tb_gradflow.writer.LogDirError: `log_dir` cannot be written.
    """

    def __init__(self, log_dir, update_freq=100, histogram_freq=1000, thresholds=None,
                 dense_start=schedule.DENSE_START):
        self.update_freq = _check_positive_int("update_freq", update_freq, 1)
        self.histogram_freq = _check_positive_int("histogram_freq", histogram_freq, 0)
        self.dense_start = _check_positive_int("dense_start", dense_start, 0, 1024)
        thresholds = thresholds if thresholds is not None else rules.DEFAULT_THRESHOLDS
        if not isinstance(thresholds, rules.Thresholds):
            raise ValueError(f"thresholds must be a tb_gradflow.rules.Thresholds, got {type(thresholds).__name__}")
        self._logger = RunLogger(os.fspath(log_dir), thresholds)
        self._recorder = None
        self._variable_ids = None

    @property
    def log_dir(self):
        return self._logger.log_dir

    def _build(self, grads, variables):
        has_gradient = [g is not None for g in grads]
        table = table_from_variables(variables, has_gradient)
        table.update_freq = self.update_freq
        table.histogram_freq = self.histogram_freq
        table.source = f"tensorflow {tf.__version__} custom loop"
        table.capture_point = "GradientWriter.write"
        # Variables must be created outside any tf.function trace.
        with tf.init_scope():
            self._recorder = GradientRecorder(
                sizes=[int(np.prod(v.shape)) for v in variables],
                layer_of_variable=[v.layer_index for v in table.variables],
                n_layers=len(table.layers),
                update_freq=self.update_freq,
                histogram_freq=self.histogram_freq,
                dense_start=self.dense_start,
            )
        self._table = table
        self._variable_ids = [id(v) for v in variables]

    def write(self, step, gradients, variables):
        """Records one step's gradients; writes events every `update_freq` steps.

        Args:
          step: int or scalar integer tensor, the training step.
          gradients: list of tensors (None for variables without a gradient),
            aligned with `variables`.
          variables: the variables the gradients belong to (same list each call).
        """
        gradients, variables = list(gradients), list(variables)
        if len(gradients) != len(variables):
            raise ValueError(f"got {len(gradients)} gradients for {len(variables)} variables")
        if self._recorder is None:
            self._build(gradients, variables)
        elif [id(v) for v in variables] != self._variable_ids:
            raise ValueError("GradientWriter.write must get the same variables, in the same order, every call")
        step = tf.cast(step, tf.int64)
        self._recorder.record_gradients(step, gradients)
        self._recorder.record_weights(step, [_raw(v) for v in variables])
        due = tf.logical_or(self._recorder.is_write_step(step), self._recorder.is_histogram_step(step))
        if tf.executing_eagerly():
            if bool(due):
                self._emit()
        else:
            tf.cond(due, self._emit_in_graph, lambda: tf.constant(False))

    def _emit_in_graph(self):
        # The values are read in the graph and passed in: automatic control
        # dependencies order each read after that variable's assignment, which
        # they would not do for reads inside the py_function.
        state = self._recorder.state()
        names = list(state)

        def emit(*arrays):
            self._emit(self._recorder.snapshot({n: a.numpy() for n, a in zip(names, arrays)}))
            return True

        return tf.py_function(emit, [v.read_value() for v in state.values()], tf.bool)

    def _emit(self, raw=None):
        if self._logger.table is None:
            self._logger.set_layer_table(step=0, table=self._table)
        self._logger.log(raw if raw is not None else self._recorder.read())

    def flush(self):
        self._logger.flush()

    def close(self):
        """Writes the last partial interval and closes the event file."""
        if self._recorder is not None:
            self._emit()
        self._logger.close()
