"""The Keras callback: per-layer gradient telemetry from an unmodified `fit`."""

import warnings

import keras
import numpy as np
import tensorflow as tf

from tb_gradflow import rules
from tb_gradflow.keras import activation_capture
from tb_gradflow.keras import model_layers
from tb_gradflow.recorder import ActivationRecorder
from tb_gradflow.recorder import GradientRecorder
from tb_gradflow.run_logger import RunLogger


def _innermost_optimizer(optimizer):
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _check_positive_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"GradFlow argument {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _raw(variable):
    """The backend tf.Variable behind a Keras variable (tf ops need it)."""
    return getattr(variable, "value", variable)


class GradFlow(keras.callbacks.Callback):
    """Logs per-layer gradient statistics, histograms and alerts to TensorBoard.

    ```python
    import tb_gradflow
    model.fit(x, y, epochs=10, callbacks=[tb_gradflow.GradFlow("logs/run1")])
    # then: tensorboard --logdir logs   (Gradient Flow tab), or
    #       tb-gradflow check logs       (CI gate)
    ```

    The callback captures the exact gradients the optimizer receives, inside
    the compiled train step (it wraps `model.optimizer.apply` for the duration
    of `fit` and retraces the step), computes statistics on the device and
    reads them back every `update_freq` steps. No extra forward or backward
    pass, no per-step host sync, no change to the training math: with op
    determinism the weights are bit-identical with and without the callback.
    When `fit` ends, the optimizer and the model are restored exactly.

    Events go to `log_dir/train`, the run Keras' own TensorBoard callback uses
    for training data, so both show up as one run.

    Args:
      log_dir: the log directory, as for `keras.callbacks.TensorBoard`.
      update_freq: write statistics every this many train steps (batches;
        an integer >= 1). Norm extremes and non-finite counts are aggregated
        over every step in between, so a short spike is never missed. With
        `steps_per_execution` > 1 it is rounded up to a multiple of it (the
        host can read only between executions), with a warning.
      histogram_freq: write per-layer gradient histograms every this many
        steps; 0 disables them. Histograms cost more than the statistics.
        Rounded up to a multiple of `steps_per_execution` like `update_freq`.
      thresholds: `tb_gradflow.rules.Thresholds` for the alerts.
      update_ratio: measure the update-to-weight ratio
        ||w_after - w_before|| / ||w_before|| (copies the weights on logged
        steps).
      activation_freq: every this many train steps, activation statistics of
        every layer with a non-linear activation (saturated and dead
        fractions, activation mean and std, a pre-activation histogram),
        computed inside the train step from that step's activations; 0
        disables them. Rounded up to a multiple of `steps_per_execution` like
        `update_freq`. The train step is traced twice (once more with the
        activation statistics in it, run only on executions holding a sample
        step), so the steps in between pay nothing; the price is one more
        trace (and XLA compile) when `fit` starts. See docs/event_contract.md,
        "Activation statistics".

    Raises (at `on_train_begin`, before the first step):
      ValueError: an argument is out of range, the model has no trainable
        weights, or the model is not compiled with an optimizer.
      tb_gradflow.writer.LogDirError: `log_dir` cannot be written.
    """

    def __init__(
        self,
        log_dir="logs",
        update_freq=100,
        histogram_freq=1000,
        thresholds=None,
        update_ratio=True,
        run_name="train",
        activation_freq=100,
    ):
        super().__init__()
        import os

        self.log_dir = os.fspath(log_dir)
        self.update_freq = _check_positive_int("update_freq", update_freq, 1)
        self.histogram_freq = _check_positive_int("histogram_freq", histogram_freq, 0)
        self.activation_freq = _check_positive_int("activation_freq", activation_freq, 0)
        if thresholds is None:
            thresholds = rules.DEFAULT_THRESHOLDS
        if not isinstance(thresholds, rules.Thresholds):
            raise ValueError(
                f"GradFlow argument thresholds must be a tb_gradflow.rules.Thresholds, got {type(thresholds).__name__}"
            )
        self.thresholds = thresholds
        self.update_ratio = bool(update_ratio)
        self.run_dir = os.path.join(self.log_dir, run_name) if run_name else self.log_dir
        self._installed = None
        self._sampling_function = None

    # ----------------------------------------------------------------- setup
    def on_train_begin(self, logs=None):
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError("GradFlow needs a compiled model: call model.compile(optimizer=...) before fit.")
        variables = list(model.trainable_variables)
        if not variables:
            raise ValueError(
                f"GradFlow: model {model.name!r} has no trainable weights, so there are no gradients to "
                "monitor (is every layer frozen with trainable=False?)."
            )
        # The host reads the statistics only between executions. A write step
        # inside an execution would be overwritten before it is read (and its
        # aggregation interval cut short), so writes fall on execution ends.
        self._steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        self._update_freq = self._whole_executions("update_freq", self.update_freq, "they are written")
        self._activation_freq = self._whole_executions(
            "activation_freq", self.activation_freq, "activation statistics are taken"
        )
        self._histogram_freq = self._whole_executions("histogram_freq", self.histogram_freq, "histograms are written")
        self._logger = RunLogger(self.run_dir, self.thresholds)
        self._variables = variables
        self._owners, self._layer_of_variable = model_layers.variable_owners(model)
        self._capture = None
        self._activation_recorder = None
        if self._activation_freq > 0:
            self._capture = activation_capture.ActivationCapture(model, self.thresholds.saturation_derivative)
            # Variable-less Activation layers get rows too, so the gradient and
            # activation heatmaps share one depth order.
            known = {id(layer) for layer in self._owners}
            self._owners = self._owners + [c.layer for c in self._capture.captured if id(c.layer) not in known]
        self._strategy = model.distribute_strategy
        self._replicas = self._strategy.num_replicas_in_sync
        self._recorder = GradientRecorder(
            sizes=[int(np.prod(v.shape)) for v in variables],
            layer_of_variable=self._layer_of_variable,
            n_layers=len(self._owners),
            update_freq=self._update_freq,
            histogram_freq=self._histogram_freq,
            strategy=self._strategy,
            initial_step=int(optimizer.iterations.numpy()),
        )
        self._has_gradient = None
        try:
            if self._capture is not None and self._capture.units:
                self._activation_recorder = ActivationRecorder(
                    units=self._capture.units,
                    thresholds=self._capture.thresholds,
                    activation_freq=self._activation_freq,
                    strategy=self._strategy,
                )
                recorder = self._recorder
                # The forward pass runs before optimizer.apply advances the
                # recorder's step: this step's number is the counter + 1.
                self._capture.install(self._activation_recorder, lambda: recorder.train_step.read_value() + 1)
            # After the activation wrappers: it restores `call` to them.
            self._call_order = model_layers.CallOrderRecorder(self._owners)
            self._install(optimizer)
        except BaseException:
            # Leave the model as it was; the error is the user's to see.
            self.restore_model()
            self._logger.close()
            raise
        self._host_step = int(optimizer.iterations.numpy())
        self._table_written = False

    def _whole_executions(self, name, steps, consequence):
        """`steps` rounded up to a multiple of steps_per_execution, with a warning."""
        spe = self._steps_per_execution
        if steps % spe == 0:
            return steps
        rounded = -(-steps // spe) * spe
        warnings.warn(
            f"GradFlow: {name}={steps} is not a multiple of steps_per_execution={spe}; statistics are "
            f"read between executions only, so {consequence} every {rounded} steps.",
            stacklevel=3,
        )
        return rounded

    def _install(self, optimizer):
        """Wraps the optimizer for this fit and retraces the train step."""
        recorder = self._recorder
        position = {id(_raw(v)): i for i, v in enumerate(self._variables)}
        position.update({id(v): i for i, v in enumerate(self._variables)})
        callback = self
        original_apply = optimizer.apply
        distributed = self._replicas > 1
        # `dynamic_scale` exists only once the optimizer is built, which
        # without a strategy happens while the step traces: test the type.
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def align(grads, trainable_variables):
            if trainable_variables is None:
                return list(grads)
            aligned = [None] * len(self._variables)
            for g, v in zip(grads, trainable_variables):
                i = position.get(id(v), position.get(id(_raw(v))))
                if i is not None:
                    aligned[i] = g
            return aligned

        def apply(grads, trainable_variables=None):
            grads = list(grads)
            if not optimizer.built and trainable_variables is not None:
                # What the optimizer's own `apply` does first; the loss scale
                # read below needs it built.
                with keras.name_scope(optimizer.name, caller=optimizer):
                    optimizer.build(list(trainable_variables))
                optimizer.built = True
            step = recorder.advance_step()
            aligned = align(grads, trainable_variables)
            callback._note_gradients(aligned)
            if not distributed:
                unscaled = aligned
                if scaled:
                    # LossScaleOptimizer.apply sees scaled gradients; report the
                    # ones the inner optimizer applies (the same division).
                    scale = tf.cast(optimizer.dynamic_scale, tf.float32)
                    unscaled = [None if g is None else tf.cast(g, tf.float32) / scale for g in aligned]
                recorder.record_gradients(step, unscaled)
            weights = [_raw(v) for v in self._variables]
            before = recorder.snapshot_weights(step, weights, xla=bool(self.model.jit_compile)) if self.update_ratio else None
            result = original_apply(grads, trainable_variables)
            recorder.record_weights(step, weights, before)
            return result

        installed = {"optimizer": optimizer, "apply": optimizer.__dict__.get("apply")}
        optimizer.apply = apply
        self._installed = installed
        if distributed:
            # Under a strategy `apply` sees each replica's share; the global
            # gradient exists only after the optimizer's own all-reduce.
            inner = _innermost_optimizer(optimizer)
            original_reduce = inner._all_reduce_sum_gradients

            def all_reduce_sum_gradients(grads_and_vars):
                reduced = original_reduce(grads_and_vars)
                reduced = list(reduced)
                step = recorder.current_step()
                # Aligned by variable: the optimizer has already dropped the
                # variables without a gradient (frozen, unused branch).
                recorder.record_gradients(
                    step, align([g for g, _ in reduced], [v for _, v in reduced])
                )
                return reduced

            installed["inner"] = inner
            installed["reduce"] = inner.__dict__.get("_all_reduce_sum_gradients")
            inner._all_reduce_sum_gradients = all_reduce_sum_gradients
        self._installed = installed
        self._capture_point = (
            "optimizer._all_reduce_sum_gradients (global gradient after the all-reduce)"
            if distributed
            else "optimizer.apply" + (" (unscaled by the loss scale)" if scaled else "")
        )
        self._make_train_functions()

    def _make_train_functions(self):
        """Retraces the train step; with activation statistics, two of them.

        The gradient-only function runs the steps in between; the sampling
        function (activation wrappers live in it) runs executions that hold
        a sample step, and the first execution, whose trace settles each
        activation's capture status before the layer table is written. So
        the steps in between pay nothing for activation statistics, not
        even a branch.
        """
        model = self.model
        model.make_train_function(force=True)
        self._gradient_only_function = model.train_function
        self._sampling_function = None
        if self._activation_recorder is None:
            return
        own = model.__dict__.get("train_step")
        # Keras' make_train_function takes `self.train_step` as it is now.
        model.train_step = self._capture.sampling_train_step(model.train_step)
        try:
            model.make_train_function(force=True)
        finally:
            if own is None:
                model.__dict__.pop("train_step", None)
            else:
                model.train_step = own
        self._sampling_function = model.train_function

    def _note_gradients(self, aligned):
        # Trace time: which variables get a gradient is static in the graph.
        self._has_gradient = [g is not None for g in aligned]

    def restore_model(self):
        """Undoes the wrapping; called by `on_train_end`. Safe to call twice.

        If `fit` raises, Keras calls no `on_train_end`: call this to drop the
        instrumented train step (a later fit would otherwise keep running it,
        harmlessly but at its cost).
        """
        installed, self._installed = self._installed, None
        self._sampling_function = self._gradient_only_function = None
        call_order = getattr(self, "_call_order", None)
        if call_order is not None:
            call_order.restore()
        capture = getattr(self, "_capture", None)
        if capture is not None:
            capture.restore()
        if installed is None:
            return
        optimizer = installed["optimizer"]
        if installed["apply"] is None:
            optimizer.__dict__.pop("apply", None)
        else:
            optimizer.apply = installed["apply"]
        if "inner" in installed:
            if installed["reduce"] is None:
                installed["inner"].__dict__.pop("_all_reduce_sum_gradients", None)
            else:
                installed["inner"]._all_reduce_sum_gradients = installed["reduce"]
        self.model.train_function = None

    # ------------------------------------------------------------- per batch
    def on_train_batch_begin(self, batch, logs=None):
        self._batch_begin = batch
        if self._sampling_function is not None:
            # Keras calls `model.train_function` afresh for every execution.
            last = self._host_step + self._steps_per_execution
            sample = not self._table_written or last // self._activation_freq > self._host_step // self._activation_freq
            self.model.train_function = self._sampling_function if sample else self._gradient_only_function

    def on_train_batch_end(self, batch, logs=None):
        steps = batch - getattr(self, "_batch_begin", batch) + 1
        previous, self._host_step = self._host_step, self._host_step + steps
        if not self._table_written:
            self._write_layer_table()
        if self._host_step // self._update_freq > previous // self._update_freq:
            self._logger.log(self._recorder.read())
        if self._activation_recorder is not None and (
            self._host_step // self._activation_freq > previous // self._activation_freq
        ):
            self._logger.log_activations(self._activation_recorder.read())

    def _write_layer_table(self):
        self._call_order.restore()  # The step is traced; stop recording.
        has_gradient = self._has_gradient or [True] * len(self._variables)
        table, order = model_layers.build_layer_table(
            self._owners, self._layer_of_variable, self._variables, has_gradient, self._call_order.order,
            activations=self._capture.by_layer() if self._capture is not None else None,
            model=self.model,
        )
        table.update_freq = self._update_freq
        table.activation_freq = self._activation_freq if self._activation_recorder is not None else 0
        # Table row -> activation recorder slot (-1: none).
        slots = {id(c.layer): c.index for c in (self._capture.captured if self._capture is not None else [])
                 if c.status == activation_capture.IN_STEP}
        activation_rows = [slots.get(id(self._owners[i]), -1) for i in order]
        table.histogram_freq = self._histogram_freq
        table.source = f"keras {keras.__version__} / tensorflow {tf.__version__}"
        table.capture_point = self._capture_point
        self._logger.set_layer_table(
            step=max(self._host_step - 1, 0), table=table, device_layer_order=order, activation_rows=activation_rows
        )
        self._table_written = True

    def on_epoch_end(self, epoch, logs=None):
        if self._table_written:
            self._logger.flush()

    def on_train_end(self, logs=None):
        try:
            if self._table_written:
                # The last, partial interval (a no-op if it was just written).
                self._logger.log(self._recorder.read())
                if self._activation_recorder is not None:
                    self._logger.log_activations(self._activation_recorder.read())
            self._logger.close()
        finally:
            self.restore_model()
