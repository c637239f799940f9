"""The Keras callback: per-layer gradient telemetry from an unmodified `fit`."""

import functools
import os
import threading
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from tb_gradflow import rules
from tb_gradflow import schedule
from tb_gradflow.keras import activation_capture
from tb_gradflow.keras import model_layers
from tb_gradflow.keras import patching
from tb_gradflow.recorder import ActivationRecorder
from tb_gradflow.recorder import GradientRecorder
from tb_gradflow.background_logger import BackgroundLogger
from tb_gradflow.run_logger import RunLogger
from tb_gradflow.writer import LogDirError


def _innermost_optimizer(optimizer):
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


# Periods are compared with int64 step counters on the device; 2**31 - 1
# steps (two billion) is "never" for any training run, and keeps step + period
# far from overflowing.
MAX_PERIOD = 2**31 - 1


def _check_positive_int(name, value, minimum, maximum=MAX_PERIOD):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not minimum <= value <= maximum
    ):
        raise ValueError(
            f"GradFlow argument {name} must be an integer in [{minimum}, {maximum}], got {value!r}"
        )
    return int(value)


def _run_dir(log_dir, run_name):
    """log_dir/run_name, refusing a run_name that would leave log_dir."""
    if not run_name:
        return log_dir
    if not isinstance(run_name, str):
        raise ValueError(f"GradFlow argument run_name must be a string, got {type(run_name).__name__}")
    normal = os.path.normpath(run_name)
    if os.path.isabs(run_name) or normal == os.pardir or normal.startswith(os.pardir + os.sep) or "\0" in run_name:
        raise ValueError(
            f"GradFlow argument run_name must be a relative path inside log_dir, got {run_name!r}"
        )
    return os.path.join(log_dir, normal)


def _raw(variable):
    """The backend tf.Variable behind a Keras variable (tf ops need it); a
    tf.Variable as it is (its `value` is a method, not the variable)."""
    value = getattr(variable, "value", variable)
    return variable if callable(value) else value


# Train function kinds (GradFlow._make_train_functions). FINAL is no
# function of its own: the fit's last execution, which any recording
# function serves (`_TrainFunctions.kinds`).
LIGHT, RECORDING, SAMPLING, FINAL = "light", "recording", "sampling", "final"


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
    of `fit` and traces the step again with the recording in it), computes
    statistics on the device and reads them back every `update_freq` steps.
    The executions in between run the model's own train step (see
    `_make_train_functions`). No extra forward or backward pass, no per-step
    host sync, no change to the training math: with op determinism the
    weights are bit-identical with and without the callback.
    When `fit` ends, the optimizer and the model are restored exactly.

    Events go to `log_dir/train`, the run Keras' own TensorBoard callback uses
    for training data, so both show up as one run.

    Args:
      log_dir: the log directory, as for `keras.callbacks.TensorBoard`.
      update_freq: write statistics every this many train steps (batches;
        an integer in [1, 2**31 - 1]), once the dense start is over (see
        `dense_start`). The steps in between run the model's own train step,
        unchanged, with the loss watched on each (a few scalar ops): its
        extremes and the steps it was non-finite are written with the next
        row, so a short loss spike or a NaN step is not missed. With
        `steps_per_execution` > 1 it is rounded up to a multiple of it (the
        host can read only between executions), with a warning.
      histogram_freq: write per-layer gradient histograms every this many
        steps; 0 disables them. Histograms cost more than the statistics.
        Rounded up to a multiple of `steps_per_execution` like `update_freq`.
      thresholds: `tb_gradflow.rules.Thresholds` for the alerts.
      update_ratio: measure the update-to-weight ratio
        ||w_after - w_before|| / ||w_before|| on logged steps (keeps one copy
        of the trainable weights in memory, refreshed before each logged
        step; under XLA the copy exists only during a logged step).
      activation_freq: every this many train steps, activation statistics of
        every layer with a non-linear activation (saturated and dead
        fractions, activation mean and std, a pre-activation histogram),
        computed inside the train step from that step's activations; 0
        disables them. Rounded up to a multiple of `steps_per_execution` like
        `update_freq`. They are computed in the train function that runs
        executions holding a sample step, so the steps in between pay
        nothing. See docs/event_contract.md, "The train functions".
      dense_start: the first `2 * dense_start - 1` steps are all written,
        then the gap between rows doubles each time the step count doubles
        (`dense_start` rows per doubling) until it reaches `update_freq` /
        `activation_freq`: a 100-step run gets 37 rows at the defaults, and a
        run of any length 63 more than a fixed period (see
        `tb_gradflow.schedule`). 0: a row every `update_freq` steps from the
        start. Histograms keep their fixed `histogram_freq`.
      run_name: the run's directory under `log_dir` (a relative path that
        stays inside it; "" writes into `log_dir` itself).

    Raises:
      ValueError (at construction): an argument is out of range or of the
        wrong type, or `run_name` would leave `log_dir`.
      ValueError (at `on_train_begin`): the model (built) has no trainable
        weights.
      tb_gradflow.writer.LogDirError: `log_dir` cannot be written.

    Nothing else stops `fit`: a model without `model.optimizer` trains
    unmonitored (with a warning); a model whose weights are created by its
    first step is hooked from the second step; an unexpected error in the
    hook's setup or reads warns once and training goes on unhooked. With op
    determinism the run is bit-identical with and without the callback,
    oneDNN on or off (docs/event_contract.md, "Exactness").

    A model trained in several `fit` calls (one epoch each, say) runs the
    hooked train functions the first fit traced instead of tracing (under
    XLA, compiling) them again in every later fit of the unchanged model (see
    `_resume`), whether each fit gets the same callback object or a new one
    with the same arguments (`GradFlow(log_dir)` written into the `fit`
    call): a new one takes the last one's functions over (see `_adoptable`).
    The model keeps the last callback that trained it, with its train
    functions, as Keras keeps its own `model.train_function`;
    `GradFlow.release(model)` frees them.
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
        dense_start=schedule.DENSE_START,
    ):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.update_freq = _check_positive_int("update_freq", update_freq, 1)
        self.histogram_freq = _check_positive_int("histogram_freq", histogram_freq, 0)
        self.activation_freq = _check_positive_int("activation_freq", activation_freq, 0)
        self.dense_start = _check_positive_int("dense_start", dense_start, 0, 1024)
        if thresholds is None:
            thresholds = rules.DEFAULT_THRESHOLDS
        if not isinstance(thresholds, rules.Thresholds):
            raise ValueError(
                f"GradFlow argument thresholds must be a tb_gradflow.rules.Thresholds, got {type(thresholds).__name__}"
            )
        self.thresholds = thresholds
        self.update_ratio = bool(update_ratio)
        self.run_dir = _run_dir(self.log_dir, run_name)
        self._installed = None
        self._train_functions = None
        self._last_execution = False
        # (period, dense start, unit) -> (after, next row), see `_due`.
        self._next_rows = {}
        # (fingerprint, train functions) of the last fit, for the next (see `_resume`).
        self._kept = None
        # The callback of an earlier fit this one runs through (see `_adoptable`).
        self._delegate = None

    # ----------------------------------------------------------------- setup
    def on_train_begin(self, logs=None):
        try:
            self._delegate = self._adoptable()
        except Exception:  # An odd model or callback: instrument afresh.
            self._delegate = None
        if self._delegate is not None:
            self._delegate.set_params(self.params)
            self._delegate.on_train_begin(logs)
            return
        # Resolved once per fit: each row asks for it, and realpath stats
        # every path component (a millisecond a row on the training thread).
        self._resolved_run_dir = os.path.realpath(self.run_dir)
        self._active = False
        self._pending = False
        self._table_written = False
        self._warned = set()
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        others = _other_optimizers(model)
        self._uncaptured_optimizers = others
        if optimizer is None:
            # A custom train_step may apply gradients through optimizers of
            # its own (a GAN's generator and discriminator). The hook sees
            # model.optimizer only, so it records nothing rather than stop a
            # run that trains fine.
            self._warn_once(
                "no-optimizer",
                f"GradFlow: model {model.name!r} has no model.optimizer"
                + (f"; the gradients applied through {', '.join(others)} are not captured" if others else "")
                + ". Nothing is recorded for this fit.",
            )
            return
        if others:
            self._warn_once(
                "other-optimizers",
                f"GradFlow captures the gradients applied by model.optimizer only; those applied through "
                f"{', '.join(others)} of model {model.name!r} are not captured (the layer table says so).",
            )
        if not model.trainable_variables:
            if not _all_built(model):
                # Weights created by the first step (a subclassed model that
                # builds on first call): instrument once they exist.
                self._pending = True
                return
            raise ValueError(
                f"GradFlow: model {model.name!r} has no trainable weights, so there are no gradients to "
                "monitor (is every layer frozen with trainable=False?)."
            )
        self._setup()

    def _arguments(self):
        """What the callback was made with: callbacks with equal arguments
        instrument a model alike."""
        return (type(self), self.update_freq, self.histogram_freq, self.activation_freq, self.dense_start,
                self.update_ratio, self.thresholds, self.run_dir)

    def _adoptable(self):
        """The model's last callback, for this fit to run through, where it
        was made with the same arguments and kept its train functions: a
        new `GradFlow(log_dir)` per `fit`, the way a callback is often
        written into the call, would otherwise trace (under XLA, compile)
        the hooked step afresh every fit, a minute for MobileNetV3Small
        under XLA where plain fit's later fits take a second or two
        (benchmarks/bench_refit.py). This callback then forwards every
        event of the fit to that one, which takes its functions up where the
        model is unchanged (`_resume`) and instruments it afresh otherwise:
        either way the fit is what this callback alone would do. None where
        there is no such callback (this one is then the model's last once
        its fit ends, see `on_train_end`); `_STANDING_BY` where that
        callback is in this fit's list too."""
        model = self.model
        last = getattr(model, "__dict__", {}).get(_LAST_CALLBACK)
        if last is None or last is self:
            return None
        if self.params is not None and last.params is self.params and last._arguments() == self._arguments():
            # The last callback is in this fit's list too (Keras hands every
            # callback of a fit the same params): it does the fit's work
            # itself, and this one stands by; forwarded as well, each step
            # would be counted twice.
            return _STANDING_BY
        if self._kept is not None:
            return None
        if last.model is not model or last._kept is None or last._installed is not None:
            return None
        return last if last._arguments() == self._arguments() else None

    @staticmethod
    def release(model):
        """Frees the train functions `model` keeps for a later fit (see
        `_adoptable`); that fit instruments the model afresh.

        ```python
        model.fit(x, y, callbacks=[tb_gradflow.GradFlow("logs/run1")])
        tb_gradflow.GradFlow.release(model)
        ```
        """
        last = getattr(model, "__dict__", {}).pop(_LAST_CALLBACK, None)
        if last is not None:
            last._kept = None

    def _setup(self):
        """Instruments the model (or takes up the last fit's instrumentation,
        see `_resume`); an unexpected error leaves it unhooked, with a warning."""
        kept, self._kept = self._kept, None
        try:
            if kept is None or not self._resume(kept):
                self._instrument()
        except (ValueError, LogDirError):
            self._discard()
            raise  # The documented argument errors.
        except Exception as e:
            self._give_up("instrumenting the model", e)
            return
        self._active = True

    def _discard(self):
        try:
            self.restore_model()
        finally:
            logger = getattr(self, "_logger", None)
            if logger is not None:
                self._logger = None
                try:
                    logger.close()  # Waits for the rows still being written.
                except Exception as e:  # A monitor never stops the run: warn.
                    self._warn_once("gave-up", f"GradFlow: writing the statistics failed ({type(e).__name__}: {e}).")

    def _give_up(self, doing, error):
        """Warns once, restores the model and lets training go on unhooked."""
        self._warn_once(
            "gave-up",
            f"GradFlow: {doing} failed ({type(error).__name__}: {error}); training continues without "
            "gradient monitoring.",
        )
        self._active = False
        in_fit = self._installed is not None
        self._discard()
        if in_fit:
            # fit calls model.train_function for every execution: give it
            # the unhooked one.
            self.model.make_train_function(force=True)

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _instrument(self):
        model = self.model
        optimizer = model.optimizer
        variables = list(model.trainable_variables)
        # The host reads the statistics only between executions. A write step
        # inside an execution would be overwritten before it is read (and its
        # aggregation interval cut short), so writes fall on execution ends.
        self._steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        self._update_freq = self._whole_executions("update_freq", self.update_freq, "they are written")
        self._activation_freq = self._whole_executions(
            "activation_freq", self.activation_freq, "activation statistics are taken"
        )
        self._histogram_freq = self._whole_executions("histogram_freq", self.histogram_freq, "histograms are written")
        self._strategy = model.distribute_strategy
        self._replicas = self._strategy.num_replicas_in_sync
        self._open_logger()
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
        first_step = self._first_step(optimizer)
        self._recorder = GradientRecorder(
            sizes=[int(np.prod(v.shape)) for v in variables],
            layer_of_variable=self._layer_of_variable,
            n_layers=len(self._owners),
            update_freq=self._update_freq,
            histogram_freq=self._histogram_freq,
            strategy=self._strategy,
            initial_step=first_step,
            xla=bool(model.jit_compile),
            clipping=self._clips(optimizer),
            dense_start=self.dense_start,
            unit=self._steps_per_execution,
            # The steps in between run the user's own train function (see
            # _make_train_functions), so every recorded step holds a row.
            gated=False,
        )
        self._recorder.track_gradients([_raw(v) for v in variables])
        if self.update_ratio:
            self._recorder.track_weights([_raw(v) for v in variables])
        self._recorder.warm_up([_raw(v) for v in variables])
        self._has_gradient = None
        if self._capture is not None and self._capture.units:
            self._activation_recorder = ActivationRecorder(
                units=self._capture.units,
                thresholds=self._capture.thresholds,
                activation_freq=self._activation_freq,
                strategy=self._strategy,
                xla=bool(model.jit_compile),
                dense_start=self.dense_start,
                unit=self._steps_per_execution,
                dtypes=self._capture.dtypes,
                model_elements=sum(int(np.prod(v.shape)) for v in variables),
            )
            self._install_capture()
        self._call_order = model_layers.CallOrderRecorder(self._owners)
        self._host_step = first_step
        _build_optimizer_before_tracing(model, optimizer)
        self._install(optimizer)

    def _open_logger(self):
        """This fit's logger. Under MultiWorkerMirroredStrategy every worker
        runs the same step and reads the same (global) statistics; only the
        chief writes. Rows are aggregated, judged and written on a thread of
        the logger's own while the next steps run (background_logger.py)."""
        chief = bool(getattr(self._strategy.extended, "should_save_summary", True))
        self._logger = BackgroundLogger(RunLogger(self.run_dir, self.thresholds)) if chief else _SilentLogger()

    def _install_capture(self):
        """Wraps the captured activations for this fit. The train step wrapper
        advances the recorder's step before the forward pass (see
        _monitored_train_step)."""
        recorder = self._recorder
        self._capture.install(self._activation_recorder, lambda: recorder.train_step.read_value())

    def _first_step(self, optimizer):
        """The step count this fit starts from: steps continue after the last
        step an earlier fit of this model wrote to this run (fine-tuning:
        fit, unfreeze, compile, fit on), also when compile made a new
        optimizer whose iterations restart at 0."""
        return max(int(optimizer.iterations.numpy()), _LAST_STEPS.get(self.model, {}).get(self._run_key(), 0))

    def _fingerprint(self):
        """(objects, values): what the hooked train functions are made from.
        A later fit runs them again (`_resume`) only if each object is the
        same one and each value equal. `compile` makes a new
        `_compile_config` on every call (and a new optimizer unless given
        the same instance), so a recompiled model is instrumented afresh, as
        is one whose trainable weights changed (a layer frozen or
        unfrozen)."""
        model = self.model
        objects = (model.optimizer, getattr(model, "_compile_config", None), model.distribute_strategy,
                   model.__dict__.get("train_step"), *model.trainable_variables)
        values = (type(model), bool(model.jit_compile), bool(getattr(model, "run_eagerly", False)),
                  int(getattr(model, "steps_per_execution", 1) or 1), self._clips(model.optimizer),
                  self._arguments())
        return objects, values

    def _keepable(self):
        """(fingerprint, traced train functions) of this fit for the next, or
        None where they cannot be run again: a fit that gave up, a model
        whose train functions hold other GradFlow callbacks' wrappers too,
        or a multi-replica strategy (whose per-replica state the host does
        not reset)."""
        functions = self._train_functions
        if not self._active or not self._table_written or functions is None or functions.callbacks != [self]:
            return None
        if self._replicas > 1:
            return None
        try:
            return self._fingerprint(), dict(functions.functions)
        except Exception:  # An odd model: the next fit instruments afresh.
            return None

    def _resume(self, kept):
        """Takes up the last fit's instrumentation, traced train functions and
        all, where nothing it was made from has changed (`_fingerprint`): the
        recorders restart as new ones would, the wrappers are put back (for
        a retrace: a new input shape, say) and `model.train_function` is
        again the functions the last fit traced, so a fit after the first,
        the usual `for epoch ...: model.fit(..., epochs=1)` loop, starts as
        fast as a plain one instead of tracing (under XLA, compiling) the
        hooked step again. Returns False, having changed nothing, where it
        cannot."""
        (objects, values), functions = kept
        now_objects, now_values = self._fingerprint()
        same = len(objects) == len(now_objects) and all(a is b for a, b in zip(objects, now_objects))
        if not same or values != now_values or self.model in _TRAIN_FUNCTIONS:
            return False
        optimizer = self.model.optimizer
        self._open_logger()
        first_step = self._first_step(optimizer)
        self._recorder.restart(first_step)
        if self._activation_recorder is not None:
            self._activation_recorder.restart()
            self._install_capture()
        self._host_step = first_step
        self._install(optimizer, functions)
        return True

    def _clips(self, optimizer):
        """Whether to record the clipped gradients: the optimizer clips, one device.

        Under a multi-replica strategy Keras clips each replica's share
        before the all-reduce, so there is no global clipped gradient to
        compare with."""
        inner = _innermost_optimizer(optimizer)
        clips = any((getattr(inner, a, None) or 0) > 0 for a in ("clipnorm", "global_clipnorm", "clipvalue"))
        return clips and self._replicas == 1

    def _run_key(self):
        return self._resolved_run_dir

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

    def _install(self, optimizer, functions=None):
        """Wraps the optimizer for this fit and makes the train functions
        (`functions`: those of the last fit, to run again, see `_resume`)."""
        recorder = self._recorder
        position = {id(_raw(v)): i for i, v in enumerate(self._variables)}
        position.update({id(v): i for i, v in enumerate(self._variables)})
        callback = self
        distributed = self._replicas > 1
        # `dynamic_scale` exists only once the optimizer is built, which
        # without a strategy happens while the step traces: test the type.
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def index_of(variable):
            return position.get(id(variable), position.get(id(_raw(variable))))

        def align(grads, trainable_variables):
            if trainable_variables is None:
                return list(grads)
            aligned = [None] * len(self._variables)
            for g, v in zip(grads, trainable_variables):
                i = index_of(v)
                if i is not None:
                    aligned[i] = g
            return aligned

        def make_apply(inner_apply):
            def apply(grads, trainable_variables=None):
                if not callback._recording():
                    # The user's own train function (steps between rows).
                    return inner_apply(grads, trainable_variables)
                grads = list(grads)
                if not optimizer.built and trainable_variables is not None:
                    # What the optimizer's own `apply` does first; the loss
                    # scale read below needs it built.
                    with keras.name_scope(optimizer.name, caller=optimizer):
                        optimizer.build(list(trainable_variables))
                    optimizer.built = True
                step = recorder.current_step()
                aligned = align(grads, trainable_variables)
                callback._note_gradients(aligned)
                if recorder.clipping:
                    # The optimizer drops None gradients before it clips: the
                    # clipped list's positions, for the clip wrapper below.
                    callback._clip_positions = [
                        index_of(v) for g, v in zip(grads, trainable_variables or self._variables) if g is not None
                    ]
                if not distributed:
                    # LossScaleOptimizer.apply sees scaled gradients; the
                    # recorder reports the ones the inner optimizer applies
                    # (the same division, inside its isolated statistics).
                    scale = tf.cast(optimizer.dynamic_scale, tf.float32) if scaled else None
                    recorder.record_gradients(step, aligned, scale=scale, histograms=callback._histograms())
                recorder.snapshot_weights(step, [_raw(v) for v in self._variables])
                result = inner_apply(grads, trainable_variables)
                recorder.record_weights(step, [_raw(v) for v in self._variables])
                return result

            return apply

        self._installed = [patching.wrap(optimizer, "apply", make_apply)]
        if distributed:
            # Under a strategy `apply` sees each replica's share; the global
            # gradient exists only after the optimizer's own all-reduce.
            def make_reduce(inner_reduce):
                def all_reduce_sum_gradients(grads_and_vars):
                    reduced = list(inner_reduce(grads_and_vars))
                    if not callback._recording():
                        return reduced
                    step = recorder.current_step()
                    # Aligned by variable: the optimizer has already dropped
                    # the variables without a gradient (frozen, unused branch).
                    recorder.record_gradients(
                        step, align([g for g, _ in reduced], [v for _, v in reduced]), histograms=callback._histograms()
                    )
                    return reduced

                return all_reduce_sum_gradients

            self._installed.append(
                patching.wrap(_innermost_optimizer(optimizer), "_all_reduce_sum_gradients", make_reduce)
            )
        if recorder.clipping:
            def make_clip(inner_clip):
                def clip_gradients(grads):
                    clipped = inner_clip(grads)
                    if not callback._recording():
                        return clipped
                    aligned_clipped = [None] * len(self._variables)
                    for i, g in zip(callback._clip_positions, clipped):
                        if i is not None:
                            aligned_clipped[i] = g
                    recorder.record_applied(recorder.current_step(), aligned_clipped)
                    return clipped

                return clip_gradients

            self._installed.append(patching.wrap(_innermost_optimizer(optimizer), "_clip_gradients", make_clip))
        self._installed.append(patching.wrap(self.model, "compute_loss", self._make_compute_loss))
        self._capture_point = (
            "optimizer._all_reduce_sum_gradients (global gradient after the all-reduce)"
            if distributed
            else "optimizer.apply" + (" (unscaled by the loss scale)" if scaled else "")
        )
        if self._uncaptured_optimizers:
            self._capture_point += "; not captured: gradients applied through " + ", ".join(self._uncaptured_optimizers)
        self._make_train_functions(functions)

    def _make_train_functions(self, functions=None):
        """Train functions by what they compute, each traced on its first execution.

        A kind is one of LIGHT, RECORDING, SAMPLING (the last two compute
        the histograms where `histogram_freq` > 0, on histogram steps only,
        inside the recorder's isolated calls):

        - LIGHT: the user's own train step, unchanged, plus `record_loss`
          (a few scalar ops: the loss of every step, for spikes and
          non-finite steps). It runs every execution that holds no row, so
          the steps in between cost what a plain `fit` costs.
        - RECORDING: the same step with the optimizer's gradients recorded
          (`GradientRecorder.record_gradients`), for executions that hold a
          row.
        - SAMPLING: the recording step with the activation statistics in it,
          for executions that hold an activation sample, and the first
          execution (its trace settles the layer table).

        Keras calls `model.train_function` afresh for every execution;
        `on_train_batch_begin` sets it. A function is traced only when an
        execution first needs it: at the defaults the sampling function runs
        the first 15 steps and every row after them (every 1000th step with
        histograms), the light function the rest, and the recording function
        never (the fit's last execution, recorded for its final row, runs the
        sampling function: `_TrainFunctions.kinds`). No training graph holds
        a branch: what a function computes is decided by which function
        runs, and whether a row's histograms are computed by a branch inside
        the recorder's isolated calls.
        """
        self._tracing = {RECORDING: 0}
        self._lock = threading.Lock()
        self._losses = threading.local()
        # Several GradFlow callbacks on one model (two runs, say) share its
        # train functions: each function holds every callback's wrappers.
        self._train_functions = _TRAIN_FUNCTIONS.setdefault(self.model, _TrainFunctions(self.model))
        self._train_functions.add(self)
        if functions and self._train_functions.callbacks == [self]:
            # The last fit's, traced with this callback's wrappers alone; a
            # callback that joins later clears them (`_TrainFunctions.add`).
            self._train_functions.functions.update(functions)
        self._train_functions.select()

    def on_epoch_begin(self, epoch, logs=None):
        if self._delegate is not None:
            return self._delegate.on_epoch_begin(epoch, logs)
        self._epoch = epoch

    def _current_kind(self):
        """The kind of train function the next execution needs."""
        return self._kind_of_execution(self._host_step + 1, self._host_step + self._steps_per_execution)

    def _monitored_train_step(self, train_step, kind):
        """`train_step` that advances the step count and watches the loss;
        the optimizer wrappers record what `kind` says while it traces."""
        callback, recorder = self, self._recorder
        flags = [RECORDING] if kind != LIGHT else []

        def monitored_train_step(*args, **kwargs):
            step = recorder.advance_step()
            losses = callback._losses.__dict__.setdefault("stack", [])
            losses.append([])
            # Counters, not flags: MirroredStrategy traces the replicas'
            # steps in concurrent threads.
            with callback._lock:
                for flag in flags:
                    callback._tracing[flag] += 1
            try:
                logs = train_step(*args, **kwargs)
            finally:
                with callback._lock:
                    for flag in flags:
                        callback._tracing[flag] -= 1
                seen = losses.pop()
            loss = _step_loss(seen, logs, callback._replicas)
            if loss is not None:
                # A light function runs only executions that hold no row.
                recorder.record_loss(step, loss, write=False if kind == LIGHT else None)
            return logs

        return monitored_train_step

    def _recording(self):
        """Trace time: whether the step being traced records gradients."""
        return getattr(self, "_tracing", {}).get(RECORDING, 0) > 0

    def _histograms(self):
        """Trace time: whether the step being traced computes histograms."""
        return self._recording() and self._histogram_freq > 0

    def _make_compute_loss(self, inner_compute_loss):
        """`model.compute_loss` that hands the loss it returns to the train step
        being traced (for `record_loss`); the loss itself is untouched."""
        callback = self

        def compute_loss(*args, **kwargs):
            loss = inner_compute_loss(*args, **kwargs)
            stack = getattr(callback._losses, "stack", None)
            if stack:
                stack[-1].append(loss)
            return loss

        return compute_loss

    def _note_gradients(self, aligned):
        # Trace time: which variables get a gradient is static in the graph.
        self._has_gradient = [g is not None for g in aligned]

    def restore_model(self):
        """Undoes the wrapping; called by `on_train_end`. Safe to call twice.

        If `fit` raises, Keras calls no `on_train_end`: call this to drop the
        instrumented train step (a later fit would otherwise keep running it,
        harmlessly but at its cost). Wrappers of other callbacks stay in
        place, whatever the order the callbacks are restored in.
        """
        if getattr(self, "_delegate", None) is not None:
            return self._delegate.restore_model()
        installed, self._installed = getattr(self, "_installed", None), None
        train_functions = getattr(self, "_train_functions", None)
        if train_functions is not None:
            train_functions.remove(self)
            if not train_functions.callbacks:
                _TRAIN_FUNCTIONS.pop(self.model, None)
            self._train_functions = None
        call_order = getattr(self, "_call_order", None)
        if call_order is not None:
            call_order.restore()
        capture = getattr(self, "_capture", None)
        if capture is not None:
            capture.restore()
        if installed is None:
            return
        for patch in installed:
            patch.remove()
        self.model.train_function = None

    # ------------------------------------------------------------- per batch
    def on_train_batch_begin(self, batch, logs=None):
        if self._delegate is not None:
            return self._delegate.on_train_batch_begin(batch, logs)
        self._batch_begin = batch
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        # Keras knows the fit's length when the data's is known (early
        # stopping ends it sooner: that fit's last partial interval is lost).
        self._last_execution = bool(
            epochs and steps and getattr(self, "_epoch", None) == epochs - 1
            and batch + self._steps_per_execution >= steps
        ) if self._active else False
        if self._active and self._installed is not None:
            # Keras calls `model.train_function` afresh for every execution.
            self._train_functions.select()

    def _kind_of_execution(self, first, last):
        """Which train function runs the execution of steps [first, last]
        (see `_make_train_functions`)."""
        histograms = self._histogram_freq > 0 and last // self._histogram_freq > (first - 1) // self._histogram_freq
        if self._activation_recorder is not None and (
            not self._table_written or self._due(first, last, self._activation_freq)
        ):
            kind = SAMPLING
        elif not self._table_written or histograms or self._due(first, last, self._update_freq):
            kind = RECORDING
        elif self._last_execution:
            # The last execution of the fit (where Keras' params tell it) is
            # recorded, so the final, partial interval gets its row.
            return FINAL
        else:
            return LIGHT
        # Every recording function can write histograms (on histogram steps
        # only, see GradientRecorder._layer_moments): one function fewer to
        # trace, and no retrace at the first histogram step.
        return kind

    def on_train_batch_end(self, batch, logs=None):
        if self._delegate is not None:
            return self._delegate.on_train_batch_end(batch, logs)
        if self._pending and self.model.trainable_variables:
            # The first step created the weights; the next one is hooked.
            self._pending = False
            self._setup()
            return
        if not self._active:
            return
        try:
            self._after_execution(batch)
        except Exception as e:
            self._give_up("reading or writing the statistics", e)

    def _after_execution(self, batch):
        steps = batch - getattr(self, "_batch_begin", batch) + 1
        previous, self._host_step = self._host_step, self._host_step + steps
        if not self._table_written:
            self._write_layer_table()
        self._read_and_log(
            gradients=self._due(previous + 1, self._host_step, self._update_freq),
            activations=self._activation_recorder is not None and self._due(
                previous + 1, self._host_step, self._activation_freq),
        )

    def _read_and_log(self, *, gradients, activations):
        """Reads the recorders asked for and hands their rows to the logger.

        Both reads come before either row goes to the logger: its thread
        starts on a row at once and holds the GIL while it works, and a read
        behind it waited for the GIL (the activation read of mlp50 with rows
        every step: 1.6 ms, 0.5 ms alone). Both asked for: one call."""
        if gradients and activations:
            raw, snapshot = self._recorder.read_with(self._activation_recorder)
        else:
            raw = self._recorder.read() if gradients else None
            snapshot = self._activation_recorder.read() if activations else None
        if raw is not None:
            self._log(raw)
        if snapshot is not None:
            self._logger.log_activations(snapshot)

    def _due(self, first, last, period):
        """Whether the device wrote (or will write) a row at a step in [first, last].

        Asked a few times per execution: the next row of each period is
        looked up once (`schedule.next_due`) and kept until a query starts
        past it, so an execution in between costs a comparison, not a walk
        of the schedule (some 2 us per `is_due`, six a step before).
        """
        key = (period, self.dense_start, self._steps_per_execution)
        after, due = self._next_rows.get(key, (None, None))
        # (after, due): no row in (after, due), one at due; valid for a
        # query that starts in (after, due].
        if after is None or not after < first <= due:
            due = schedule.next_due(first - 1, period, self.dense_start, self._steps_per_execution)
            if due is None:
                return False
            self._next_rows[key] = (first - 1, due)
        return due <= last

    def _log(self, raw):
        self._logger.log(raw)
        if raw.step >= 0:
            # The run's last row, for a later fit into it: known here, on the
            # training thread, though the logger writes it on its own.
            steps = _LAST_STEPS.setdefault(self.model, {})
            steps[self._run_key()] = max(steps.get(self._run_key(), -1), raw.step)

    def _write_layer_table(self):
        self._call_order.restore()  # The step is traced; stop recording.
        if self._capture is not None:
            self._capture.settle()
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
        if self._delegate is not None:
            return self._delegate.on_epoch_end(epoch, logs)
        if self._active and self._table_written:
            try:
                self._logger.flush()  # Also raises a pending row's error.
            except Exception as e:
                self._give_up("writing the statistics", e)

    def on_train_end(self, logs=None):
        if self._delegate is not None:
            # Kept until the next fit: `restore_model` after a fit that
            # raised goes to the delegate too.
            return self._delegate.on_train_end(logs)
        if not self._active:
            self.restore_model()
            return
        try:
            if self._table_written:
                # The last, partial interval (a no-op if it was just written).
                self._read_and_log(gradients=True, activations=self._activation_recorder is not None)
        except Exception as e:
            self._warn_once("gave-up", f"GradFlow: writing the last statistics failed ({type(e).__name__}: {e}).")
        finally:
            if getattr(self, "_recorder", None) is not None:
                self._recorder.finish_warm_up()
            if getattr(self, "_activation_recorder", None) is not None:
                # Its compile, if still running, goes on after the fit.
                self._activation_recorder.finish_warm_up(wait=False)
            self._kept = self._keepable()
            self._discard()
            # The model keeps its last callback with kept functions, for a
            # new callback of a later fit (`_adoptable`); `release` drops it.
            if self._kept is not None:
                self.model.__dict__[_LAST_CALLBACK] = self
            elif self.model.__dict__.get(_LAST_CALLBACK) is self:
                del self.model.__dict__[_LAST_CALLBACK]


class _TrainFunctions:
    """The train functions of one model for the GradFlow callbacks hooked on
    it, by the tuple of the kinds each callback needs (see
    `GradFlow._make_train_functions`), each made when first needed and
    traced on its first execution."""

    def __init__(self, model):
        self.model = model
        self.callbacks = []
        self.functions = {}

    def add(self, callback):
        self.callbacks.append(callback)
        self.functions.clear()  # made without the new callback's wrappers

    def remove(self, callback):
        if callback in self.callbacks:
            self.callbacks.remove(callback)
            self.functions.clear()

    def kinds(self):
        """The kind of function each callback's part of the next execution
        runs. A fit's last execution (FINAL) runs a recording function
        already traced, the sampling one if the recording one is not (it
        records the gradients the same way, and samples activations on
        sample steps only: a branch in the graph); the recording function is
        traced for it only where neither is. At the defaults the sampling
        function runs every row, and the recording one was traced for the
        last execution alone: a trace of the whole step at the end of each
        first fit (mlp50 3.7 s on 2 CPU cores, 2026-12-05)."""
        wanted = tuple(callback._current_kind() for callback in self.callbacks)
        if FINAL not in wanted:
            return wanted
        stand_ins = [tuple(stand_in if kind == FINAL else kind for kind in wanted)
                     for stand_in in (RECORDING, SAMPLING)]
        return next((kinds for kinds in stand_ins if kinds in self.functions), stand_ins[0])

    def select(self):
        """Sets `model.train_function` for the next execution."""
        kinds = self.kinds()
        function = self.functions.get(kinds)
        if function is None:
            model = self.model
            train_step = model.train_step
            for callback, kind in zip(self.callbacks, kinds):
                if SAMPLING in kind:
                    train_step = callback._capture.sampling_train_step(train_step)
                train_step = callback._monitored_train_step(train_step, kind)
            # Keras' make_train_function takes `self.train_step` as it is now.
            patch = patching.wrap(model, "train_step", lambda inner: train_step)
            try:
                model.make_train_function(force=True)
            finally:
                patch.remove()
            function = self.functions[kinds] = model.train_function
        if _compiled_state_unbuilt(self.model) and _keras_train_step(self.model):
            # The first execution: build what Keras would build in its trace.
            function = functools.partial(_build_compiled_state_then, self.model, function)
        if self.model.__dict__.get("train_function") is not function:
            # Through Keras' attribute tracking only when it changes (~12 us).
            self.model.train_function = function
        return function


class _StandingBy:
    """The delegate of a callback whose twin of the same arguments is in the
    same fit and does its work (`GradFlow._adoptable`): every event is
    dropped."""

    def __getattr__(self, name):
        # Callback events only: copy and pickle look up other names here.
        if not (name.startswith("on_") or name in ("set_params", "set_model", "restore_model")):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


_STANDING_BY = _StandingBy()

# Per model: the train functions of the GradFlow callbacks hooked on it.
_TRAIN_FUNCTIONS = weakref.WeakKeyDictionary()

# The attribute of a model that holds its last GradFlow callback with kept
# train functions (`GradFlow._adoptable`). An attribute of the model, not a
# weak mapping: the callback and its functions refer to the model, so a
# mapping's value would keep its key alive; a cycle through the model's own
# __dict__ is freed with the model. Written into __dict__ directly, past
# Keras' attribute tracking (a callback is no layer or variable).
_LAST_CALLBACK = "_tb_gradflow_last_callback"


def _step_loss(seen, logs, replicas):
    """The scalar loss of the traced step: what `model.compute_loss` returned
    in it (the last call, if several), else the step's `loss` log; None if
    neither is a scalar of this graph (nothing is watched then).

    Under a multi-replica strategy each replica sees its share of the batch
    and Keras divides its loss by the replica count; the recorder keeps the
    first replica's (ONLY_FIRST_REPLICA), so it is multiplied back: the loss
    of the first replica's share (a global mean would cost a cross-replica
    reduction on every step).
    """
    graph = tf.compat.v1.get_default_graph()
    candidates = [(loss, replicas) for loss in reversed(seen)]
    if isinstance(logs, dict) and "loss" in logs:
        candidates.append((logs["loss"], 1))
    for loss, factor in candidates:
        if isinstance(loss, tf.Tensor) and loss.shape.rank == 0 and loss.dtype.is_floating and loss.graph is graph:
            return loss * factor if factor > 1 else loss
    return None


class _SilentLogger:
    """A non-chief worker's RunLogger: it keeps count and writes nothing."""

    def __init__(self):
        self.last_step = -1

    def set_layer_table(self, **kwargs):
        pass

    def log(self, raw):
        self.last_step = max(self.last_step, raw.step)

    def log_activations(self, snapshot):
        pass

    def flush(self):
        pass

    def close(self):
        pass


# Per model: {run directory: last step written}, so a later fit into the same
# run continues the step count. Weak: it never keeps a model alive.
_LAST_STEPS = weakref.WeakKeyDictionary()


def _build_optimizer_before_tracing(model, optimizer):
    """Builds `optimizer` for the model's trainable variables if Keras would
    build it inside the first traced step, as `optimizer.apply` would.

    Without a distribution strategy Keras leaves the optimizer unbuilt until
    the first step runs: its slot variables are then created while the step
    traces, and a tf.function that creates variables on its first call
    traces again without them. That second trace costs a plain fit little;
    with the hook it repeats the statistics' tracing too (seed003 under XLA:
    two traces of 0.9 s each). Building it here is what Keras itself does
    before the first trace under a strategy (`Trainer._symbolic_build`), and
    what `apply` does on the first step: the same variables, names and
    initial values. Only for Keras' own `train_step`, which applies the
    optimizer to `model.trainable_variables`: a custom one may apply it to a
    subset, and building it for all would add slots it never uses.

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> _build_optimizer_before_tracing(model, model.optimizer)
    >>> model.optimizer.built, len(model.optimizer.variables)
    (True, 6)
    """
    if optimizer is None or getattr(optimizer, "built", True) or not model.trainable_variables:
        return
    if not _keras_train_step(model):
        return
    with model.distribute_strategy.scope(), keras.name_scope(optimizer.name, caller=optimizer):
        optimizer.build(list(model.trainable_variables))
    optimizer.built = True


def _keras_train_step(model):
    """Whether `model` trains with Keras' own `train_step` (which applies
    `model.optimizer` to `model.trainable_variables` and updates the compiled
    loss and metrics)."""
    return "train_step" not in model.__dict__ and getattr(type(model), "train_step", None) is keras.Model.train_step


def _compiled_state_unbuilt(model):
    """Whether Keras will create variables for the compiled metrics or loss
    inside the next traced step (see `_build_compiled_state_then`): compiled
    metrics not yet built, or the compiled loss of a model with several
    outputs (a `Mean` tracker per output loss; one output has none)."""
    metrics, loss = getattr(model, "_compile_metrics", None), getattr(model, "_compile_loss", None)
    if metrics is not None and not metrics.built:
        return True
    return loss is not None and not loss.built and len(getattr(model, "outputs", None) or ()) > 1


def _build_compiled_state_then(model, function, iterator):
    """Builds the compiled metrics and loss trackers from the batch's
    element_spec, then runs `function(iterator)`: Keras' first execution,
    traced once.

    Without a distribution strategy Keras builds the metrics (and a
    multi-output model's loss trackers) inside the first traced step, from
    the first batch (`get_metric` picks binary, categorical or sparse
    accuracy by the labels' rank); their variables are created there,
    and tf.function traces the step, with the hook's statistics, a second
    time (as for the optimizer, `_build_optimizer_before_tracing`). Under a
    strategy Keras builds them before tracing with `_symbolic_build` from a
    batch's shapes and dtypes; that is called here with the iterator's
    element_spec (the same shapes and dtypes, nothing consumed), at the cost
    of one symbolic forward pass instead of a second trace of the whole step.
    A Keras without it, an iterator without an element_spec, or a build that
    fails leaves them to the trace, as without the hook.
    """
    build = getattr(model, "_symbolic_build", None)
    spec = getattr(iterator, "element_spec", None)
    if build is not None and spec is not None:
        try:
            with model.distribute_strategy.scope():
                build(data_batch=spec)
        except Exception:  # Built in the trace instead, as an unhooked fit does.
            pass
    return function(iterator)


def _other_optimizers(model):
    """Names of optimizer attributes of `model` other than model.optimizer."""
    names = []
    for name, value in vars(model).items():
        if isinstance(value, keras.optimizers.Optimizer) and value is not getattr(model, "optimizer", None) and not name.startswith("_"):
            names.append(name)
    return names


def _all_built(model):
    return all(getattr(layer, "built", True) for layer in model._flatten_layers(include_self=True, recursive=True))
