"""Device-side state: statistics computed inside the train step, kept in variables.

    >>> import tensorflow as tf
    >>> from tb_gradflow.recorder import GradientRecorder
    >>> v = tf.Variable([1.0, 2.0])
    >>> rec = GradientRecorder(sizes=[2], layer_of_variable=[0], n_layers=1,
    ...                        update_freq=1, histogram_freq=1)
    >>> rec.record_gradients(tf.constant(1, tf.int64), [tf.constant([3.0, 4.0])])
    >>> float(rec.read().moments[0, 0])   # sum of squares at step 1
    25.0

The recorder never syncs with the host: every statistic is written into a
non-trainable variable by ops of the compiled step, and the host reads them
all at once every `update_freq` steps (`read`). In `fit` (`gated=False`) the
recording step runs only on executions that hold a row; the steps in
between run the model's own step with `record_loss` alone. In a custom loop
(`gated=True`) every step pays one fused reduction per variable, and the
detailed statistics run under a `tf.cond` that is false between rows.

Under a `tf.distribute` strategy the variables are ON_READ with
ONLY_FIRST_REPLICA aggregation: the recorder is fed the all-reduced gradient,
identical on every replica, so the first replica's copy is the global value.
"""

import contextlib
import functools
import threading
import warnings
import weakref

import numpy as np
import tensorflow as tf

from tb_gradflow import aggregate
from tb_gradflow import metadata
from tb_gradflow import schedule
from tb_gradflow import stats


_POWERS_OF_TWO = [1 << k for k in range(62)]

# Without XLA, a row's statistics of models up to this many trainable
# elements are computed by two XLA-compiled calls over every gradient and
# weight at once (see `GradientRecorder.track_gradients`); larger models keep
# the per-layer calls, which need no copy of the gradients.
FUSED_MAX_ELEMENTS = 1 << 25
# ... where rows come at least every this many steps: compiling the calls
# costs start-up (seed003_mlp's first batch +0.35-0.4 s, mlp50's +0.7 s on
# 2 CPU cores) that a row saves back in some hundred rows (~4-18 ms each on
# the benchmark's models); at the defaults (a row every 100 steps) the
# per-layer calls cost under 1% of a step either way.
FUSED_MAX_UPDATE_FREQ = 10


def statistics_compiled(period, elements):
    """Without XLA, whether statistics taken every `period` steps of a model
    of `elements` trainable elements are computed by XLA-compiled calls over
    copies (gradients: `GradientRecorder.track_gradients`; activations:
    `ActivationRecorder`), the one rule both recorders follow."""
    return 0 < period <= FUSED_MAX_UPDATE_FREQ and elements <= FUSED_MAX_ELEMENTS


def due_in_graph(step, period, dense_start=schedule.DENSE_START, unit=1):
    """`schedule.is_due` as a graph op: a scalar bool for int64 `step`.

    A few scalar ops per train step: the largest power of two <= the
    execution count over `dense_start` is found by one comparison against a
    constant vector (TensorFlow has no count-leading-zeros op).
    """
    step = tf.cast(step, tf.int64)
    period, unit = int(period), int(unit)
    if period <= 0:
        return tf.constant(False)
    on_boundary = tf.logical_and(step > 0, tf.equal(step % unit, 0))
    executions = step // unit
    steady = period // unit
    if steady <= 1 or dense_start <= 0:
        return tf.logical_and(on_boundary, tf.equal(executions % max(steady, 1), 0))
    quotient = executions // dense_start
    powers = tf.constant(_POWERS_OF_TWO, tf.int64)
    largest = tf.reduce_max(tf.where(powers <= quotient, powers, tf.ones_like(powers)))
    gap = tf.minimum(largest, steady)
    due = tf.logical_or(tf.equal(executions % steady, 0), tf.equal(executions % gap, 0))
    return tf.logical_and(on_boundary, due)


# graph -> {(id(owner), name, thread): (owner, weak tensor)}; gone with the graph.
_ONCE_PER_GRAPH = weakref.WeakKeyDictionary()


def _once_per_graph(owner, name, make):
    """`make()`, built once per graph being traced (and tracing thread) for
    `owner` and `name`; in eager mode every time.

    A Keras train step is one graph per step (the multi-step loop calls a
    separately traced one-step function), so a schedule decision of the
    step is the same wherever in the graph it is asked: the activations'
    forty-odd sample gates of a keras.applications model are one, not forty
    copies of a dozen scalar ops each (trace time, and per-step op count). A
    nested graph (a `tf.cond` branch, a loop body) has its own.
    """
    if tf.executing_eagerly():
        return make()
    graph = tf.compat.v1.get_default_graph()
    cache = _ONCE_PER_GRAPH.get(graph)
    if cache is None:
        cache = _ONCE_PER_GRAPH[graph] = {}
    key = (id(owner), name, threading.get_ident())
    # Weak references: the tensor holds its graph, which must not outlive
    # its function; the owner is held so that its id is not reused.
    entry = cache.get(key)
    tensor = entry[1]() if entry is not None else None
    if tensor is None:
        tensor = make()
        cache[key] = (owner, weakref.ref(tensor))
    return tensor


def _state_variable(registry, shape, dtype, init, **kwargs):
    """A recorder's state variable of `shape`, filled with `init`, noted in
    `registry` (a list) with its initial value for `_reset_state`."""
    initial = tf.fill(shape, tf.cast(init, dtype))
    variable = tf.Variable(initial, **kwargs)
    registry.append((variable, initial))
    return variable


def _reset_state(registry):
    """Host: every variable noted in `registry` back to its initial value.

    The initial values are kept, not made again: a later fit resets some 40
    variables, and an eager cast and fill each tripled the time (5.2 ms
    against 1.2 ms for 41 variables, 2026-12-05)."""
    for variable, initial in registry:
        variable.assign(initial)


class GradientRecorder:
    """Owns the device variables and the in-step ops that fill them.

    Args:
      sizes: element count of each recorded variable, in the order gradients
        will be passed to `record_gradients`.
      layer_of_variable: layer index of each variable.
      n_layers: number of layers (rows of the per-layer arrays).
      update_freq: the steady-state gap between rows (`schedule.is_due`
        decides the rows; each aggregation interval starts after one).
      histogram_freq: histograms every this many steps; 0 disables them.
      strategy: the `tf.distribute.Strategy` whose scope the variables need.
      initial_step: train steps already taken (the first `advance_step`
        returns initial_step + 1).
      xla: the step is compiled with XLA (`jit_compile=True`).
      clipping: the optimizer clips the gradients; `record_applied` records
        the clipped ones (metadata.CLIP_FACTOR).
      dense_start: `schedule.DENSE_START`, or 0 for a row every
        `update_freq` steps from the start.
      unit: steps per execution (rows fall on execution boundaries).
      gated: the step function runs on every step (a custom loop), so the
        detailed statistics are gated per variable to the write steps; False
        where the caller runs the recording step only on executions that
        hold a row (the Keras callback, whose steps in between run the
        user's own train function and `record_loss` alone).
    """

    def __init__(
        self, *, sizes, layer_of_variable, n_layers, update_freq, histogram_freq, strategy=None, initial_step=0, xla=False,
        clipping=False, dense_start=schedule.DENSE_START, unit=1, gated=True,
    ):
        self.sizes = np.asarray(sizes, np.int64)
        self.layer_of_variable = np.asarray(layer_of_variable, np.int64)
        self.n_layers = int(n_layers)
        self.update_freq = int(update_freq)
        self.histogram_freq = int(histogram_freq)
        self.dense_start = int(dense_start)
        self.unit = int(unit)
        self.gated = bool(gated)
        self._read_function = None
        self._read_with = None  # (activation recorder, its joint read function)
        self._isolated_functions = {}
        self._variables_of_layer = [
            [i for i, layer in enumerate(self.layer_of_variable) if layer == li] for li in range(self.n_layers)
        ]
        n_vars = len(self.sizes)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        distributed = strategy is not None and strategy.num_replicas_in_sync > 1
        self._strategy = strategy
        # Under a multi-replica strategy the recorder runs in each replica's
        # context, where a nested isolated call cannot take the distributed
        # variables; there the statistics run inline.
        self._inline = bool(xla) or distributed
        self._xla = bool(xla)
        # Under XLA (one replica) and ungated, the update ratio's "before"
        # is the weights in rows, read in the step before the update: a
        # tensor of the compiled step, not a copy in variables (see
        # `track_weights`). (graph, thread) -> those rows, until the update.
        self._rows_before = {} if (bool(xla) and not distributed and not gated) else None
        self._sync = (
            dict(synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            if distributed
            else {}
        )
        self.weight_snapshots = None
        self.weights_tracked = False
        # A copy of each gradient, for the fused statistics (`track_gradients`),
        # and the thread that compiles their calls before the first row
        # needs them (`warm_up`).
        self.gradient_copies = None
        self._warm_up_threads = []
        self._warm_up_error = None
        # (graph, thread) -> what `record_gradients` left for `record_weights`
        # to finish, where the gradients are copied (`_finish_gradients`).
        self._pending_gradients = {}
        # (variable, initial value) of every state variable, for `restart`.
        self._initial_state = []

        def state(name, shape, dtype=tf.float32, init=0):
            kwargs = dict(trainable=False, name=f"tb_gradflow_{name}")
            if distributed:
                kwargs.update(
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
            return _state_variable(self._initial_state, shape, dtype, init, **kwargs)

        with scope:
            self.moments = state("moments", [n_vars, aggregate.NUM_MOMENTS])
            self.has_gradient = state("has_gradient", [n_vars], tf.bool, False)
            self.nonfinite_interval = state("nonfinite_interval", [n_vars])
            self.variable_interval_max = state("variable_interval_max", [n_vars])
            self.variable_interval_min = state("variable_interval_min", [n_vars])
            self.layer_interval_max = state("layer_interval_max", [self.n_layers])
            self.layer_interval_min = state("layer_interval_min", [self.n_layers])
            self.weight_sum_squares = state("weight_sum_squares", [n_vars])
            self.update_sum_squares = state("update_sum_squares", [n_vars], init=float("nan"))
            self.weight_before_sum_squares = state("weight_before_sum_squares", [n_vars], init=float("nan"))
            self.snapshot_step = state("snapshot_step", [], tf.int64, -1)
            self.weight_step = state("weight_step", [], tf.int64, -1)
            self.histogram_range = state("histogram_range", [self.n_layers, 2])
            self.histogram_counts = state("histogram_counts", [self.n_layers, metadata.HISTOGRAM_BUCKETS], tf.int32)
            self.log10_counts = state("log10_counts", [self.n_layers, metadata.LOG10_BUCKETS], tf.int32)
            self.histogram_step = state("histogram_step", [], tf.int64, -1)
            self.train_step = state("train_step", [], tf.int64, int(initial_step))
            # Whether the aggregation interval has begun: False after a write
            # step (the next recorded step starts a new interval), so the
            # interval is right whichever steps in between were recorded.
            self.interval_open = state("interval_open", [], tf.bool, False)
            # The loss of every step (steps in between included, at a cost
            # that does not grow with the model): the latest, the interval's
            # extremes over its finite values, the steps it was non-finite.
            self.loss = state("loss", [], init=float("nan"))
            # (max, -min) of the interval's finite losses, -inf while it has
            # none: one maximum folds both (see `record_loss`).
            self.loss_extremes = state("loss_extremes", [2], init=float("-inf"))
            self.nonfinite_loss_steps = state("nonfinite_loss_steps", [])
            self.loss_interval_open = state("loss_interval_open", [], tf.bool, False)
            # The dynamic loss scale the latest step's gradients were computed
            # with (mixed precision); NaN without loss scaling.
            self.loss_scale = state("loss_scale", [], init=float("nan"))
            self.clipping = bool(clipping)
            if self.clipping:
                self.applied_sum_squares = state("applied_sum_squares", [n_vars], init=float("nan"))
                self.applied_step = state("applied_step", [], tf.int64, -1)

    @property
    def _sums_by_dot(self):
        """Whether the inline statistics sum along rows by dot products: XLA
        on a CPU (`stats.sum_rows`). Asked while a step is traced: asking
        TensorFlow for its devices in the constructor would start its
        runtime, after which a user's device configuration fails."""
        return self._xla and _cpu_only()

    def restart(self, step):
        """Host, between fits (one replica): every state variable back to the
        value a new recorder starts with, and the step count at `step`, so
        that train functions traced with this recorder can run another fit
        as if it were new (the Keras callback's reuse, see
        `GradFlow._resume`). The weight copy of the update ratio is left as
        it is: its step says it is stale."""
        _reset_state(self._initial_state)
        self.train_step.assign(int(step))

    def advance_step(self):
        """In-step, once per train step: the 1-based number of this step.

        The recorder counts train steps itself rather than reading the
        optimizer's `iterations`: a LossScaleOptimizer does not advance
        `iterations` on a step it skips for non-finite gradients, and the
        next step would then reuse the number (and restart or overwrite the
        interval that holds the non-finite count).
        """
        self.train_step.assign_add(1)
        return self.train_step.read_value()

    def current_step(self):
        """In-step, after `advance_step`: the number of this step."""
        return self.train_step.read_value()

    # Gates. `step` is the 1-based train step the gradients belong to.
    def is_write_step(self, step):
        if self.gated:
            # A custom loop's step function may record more than one step.
            return due_in_graph(step, self.update_freq, self.dense_start, self.unit)
        return _once_per_graph(self, "write", lambda: due_in_graph(step, self.update_freq, self.dense_start, self.unit))

    def is_histogram_step(self, step):
        if self.histogram_freq <= 0:
            return tf.constant(False)
        return tf.equal(step % self.histogram_freq, 0)

    def record_gradients(self, step, grads, scale=None, histograms=True):
        """In-step: statistics of `grads` (aligned with `sizes`; None allowed).

        `scale`: a loss scale the gradients are multiplied by (mixed
        precision); the statistics are of `grads / scale`.

        `histograms` (ungated recorders): whether this step function
        computes the histograms. In the Keras callback every recording
        function does, on histogram steps only: the branch is inside each
        layer's isolated call (`_layer_moments`), so no training graph
        carries a `tf.cond` per layer.

        Every op here reads one layer's gradients (one variable's, in a
        custom loop's gated step) and yields a few numbers, and the detailed
        ones run in a function that
        TensorFlow's graph optimizer (grappler) does not inline. Grappler's
        heuristics look at the whole graph: its memory optimizer, for one,
        picks which AddN sums to rewrite into in-place accumulations from a
        simulated peak-memory schedule, and a hook that held every gradient
        until one joint `tf.cond`, or made gradient-sized temporaries, moved
        that peak and changed the summation order of the training step
        (ResNet50V2 with oneDNN parted from its unhooked run at the second
        batch). See docs/event_contract.md, "Exactness". Where the gradients
        have copies (`track_gradients`: `fit` without XLA) the ops here copy
        each layer's gradients, and `record_weights`, which must follow in
        the same step, computes their statistics from the copies.
        """
        step = tf.cast(step, tf.int64)
        present = [g is not None for g in grads]
        write = self.is_write_step(step)
        divisor = tf.constant(1.0) if scale is None else scale
        if scale is not None:
            self.loss_scale.assign(tf.cast(scale, tf.float32))
        with_histograms = self.histogram_freq > 0 and (histograms or self.gated)
        hist = self.is_histogram_step(step) if with_histograms else None
        histograms_of, layer_histograms = {}, None
        if self.gated:
            moments = tf.stack(self._gated_moments(grads, write, scale, divisor))
        elif self._inline:
            moments, layer_histograms = self._inline_statistics(grads, divisor, with_histograms)
        elif self.gradient_copies is not None:
            # Copied now; the statistics of the copies are taken by
            # `record_weights` (`_finish_gradients`), later in the trace, so
            # that the warm-up's compile has until then (see `warm_up`).
            fused = self._copy_gradients(grads)
            self._pending_gradients[_graph_key()] = (step, grads, fused, divisor, hist, write, present,
                                                     with_histograms)
            return
        else:
            moments, histograms_of = self._layer_moments(grads, divisor, hist)
        self._keep_gradient_statistics(step, grads, divisor, hist, write, present, with_histograms, moments,
                                       histograms_of, layer_histograms)

    def _finish_gradients(self):
        """In-step, in `record_weights`: the statistics of the gradients
        `record_gradients` copied in this step's trace, if it did: from the
        copies by the compiled call (`_fused_statistics`), or, if its warm-up
        failed, per layer from the gradients themselves."""
        pending = self._pending_gradients.pop(_graph_key(), None)
        if pending is None:
            return
        step, grads, fused, divisor, hist, write, present, with_histograms = pending
        histograms_of, layer_histograms = {}, None
        if self._fused():
            moments, layer_histograms = self._fused_statistics(grads, fused, divisor, hist)
        else:
            moments, histograms_of = self._layer_moments(grads, divisor, hist)
        self._keep_gradient_statistics(step, grads, divisor, hist, write, present, with_histograms, moments,
                                       histograms_of, layer_histograms)

    def _keep_gradient_statistics(self, step, grads, divisor, hist, write, present, with_histograms, moments,
                                  histograms_of, layer_histograms):
        """In-step: a step's gradient `moments` and histograms (per layer
        from `histograms_of` or stacked in `layer_histograms`) into the
        state variables, with the interval's extremes."""
        var_sq = moments[:, aggregate.SUM_SQUARES]
        layer_sq = tf.math.unsorted_segment_sum(var_sq, self.layer_of_variable, self.n_layers)
        # The interval starts on the first step recorded after a write (and
        # on the first step recorded at all).
        reset = tf.logical_not(self.interval_open.read_value())

        def interval(var, new, reduce):
            var.assign(tf.where(reset, new, reduce(var, new)))

        interval(self.variable_interval_max, var_sq, tf.maximum)
        interval(self.variable_interval_min, var_sq, tf.minimum)
        interval(self.layer_interval_max, layer_sq, tf.maximum)
        interval(self.layer_interval_min, layer_sq, tf.minimum)
        interval(self.nonfinite_interval, moments[:, aggregate.NONFINITE_COUNT], tf.add)
        self.interval_open.assign(tf.logical_not(write))
        # The latest step is always kept, so the final, partial interval of a
        # run can still be written when training ends.
        self.moments.assign(moments)
        self.has_gradient.assign(tf.constant(present))
        self.snapshot_step.assign(step)

        if not with_histograms:
            return
        if layer_histograms is not None:
            self._keep_histograms(hist, step, layer_histograms)
            return
        ranges, counts, log_counts = [], [], []

        def per_layer(tensors, li):
            if self.gated:
                # One layer's gradients per cond, for the same reason as above.
                return tf.cond(
                    hist,
                    lambda: self._layer_histograms(divisor, tensors),
                    lambda: (self.histogram_range[li], self.histogram_counts[li], self.log10_counts[li]),
                )
            # Computed by the layer's call in `_layer_moments` (on histogram
            # steps only, zeros else); kept below on histogram steps.
            return histograms_of.get(li) or self._layer_histograms(divisor, tensors)

        for li, members in enumerate(self._variables_of_layer):
            tensors = [grads[i] for i in members if grads[i] is not None]
            if not tensors:
                ranges.append(tf.zeros([2]))
                counts.append(tf.zeros([metadata.HISTOGRAM_BUCKETS], tf.int32))
                log_counts.append(tf.zeros([metadata.LOG10_BUCKETS], tf.int32))
                continue
            low_high, count, log_count = per_layer(tensors, li)
            ranges.append(low_high)
            counts.append(count)
            log_counts.append(log_count)
        self._keep_histograms(hist, step, (tf.stack(ranges), tf.stack(counts), tf.stack(log_counts)))

    def _keep_histograms(self, hist, step, layer_histograms):
        """The per-layer (range, counts, log10 counts) arrays into their
        variables; ungated, only where the bool `hist` holds (the gated ones
        were selected per layer)."""
        for variable, stacked in zip((self.histogram_range, self.histogram_counts, self.log10_counts), layer_histograms):
            if not self.gated:
                # One select per array, not one per layer (with a slice of the
                # variable each: ~15 ops a layer to trace and optimize).
                stacked = tf.where(hist, stacked, variable.read_value())
            variable.assign(stacked)
        self.histogram_step.assign(tf.where(hist, step, self.histogram_step))

    def _inline_statistics(self, grads, divisor, histograms):
        """(moments [n_gradients, NUM_MOMENTS], (range, counts, log10 counts)
        per layer or None): a row step's statistics where they run inline in
        the step (XLA, multi-replica), all gradients cut into rows of one
        width (`stats.multi_tensor_statistics`).

        Inline, every op is part of the one compiled step: per layer, the
        statistics were some 60 ops, and XLA's compile time grew with them
        (mlp50: the hook's first execution 6.4x plain's, ~15 s for the
        gradient moments alone); over rows of all gradients, each statistic
        is one reduction whatever the number of gradients (a stack and pad
        per distinct gradient size join them). The histograms are computed on
        every row; the caller keeps them on histogram steps. Sparse
        gradients (IndexedSlices) get the per-gradient statistics, and their
        layers' histograms are computed apart.
        """
        dense = [i for i, g in enumerate(grads) if isinstance(g, tf.Tensor)]
        sparse = [i for i, g in enumerate(grads) if g is not None and not isinstance(g, tf.Tensor)]
        missing = [i for i, g in enumerate(grads) if g is None]
        blocks, order, layer_histograms = [], [], None
        if dense:
            moments, layer_histograms = stats.multi_tensor_statistics(
                [grads[i] for i in dense], [int(self.layer_of_variable[i]) for i in dense], self.n_layers, divisor,
                histograms, by_dot=self._sums_by_dot,
            )
            blocks.append(moments)
            order += dense
        if missing:
            blocks.append(tf.zeros([len(missing), aggregate.NUM_MOMENTS]))
            order += missing
        for i in sparse:
            blocks.append(_moments(grads[i], divisor)[tf.newaxis])
            order.append(i)
        moments = stats.join_in_order(blocks, order) if blocks else tf.zeros([0, aggregate.NUM_MOMENTS])
        if not histograms:
            return moments, None
        if layer_histograms is None:
            layer_histograms = stats.empty_histograms(self.n_layers)
        return moments, self._with_layers_apart(layer_histograms, sparse, grads, divisor)

    def _with_layers_apart(self, layer_histograms, gradients, grads, divisor):
        """`layer_histograms` (stacked per layer) with the rows of the layers
        of `gradients` (indices the row statistics left out: sparse, None,
        not fitting their copy) replaced by each such layer's histograms of
        its present gradients, computed apart (zeros for a layer with none)."""
        layers = sorted({int(self.layer_of_variable[i]) for i in gradients})
        if not layers:
            return layer_histograms
        empty = (tf.zeros([2]), tf.zeros([metadata.HISTOGRAM_BUCKETS], tf.int32),
                 tf.zeros([metadata.LOG10_BUCKETS], tf.int32))
        rows = []
        for li in layers:
            present = [grads[i] for i in self._variables_of_layer[li] if grads[i] is not None]
            rows.append(self._layer_histograms(divisor, present) if present else empty)
        indices = tf.constant([[li] for li in layers])
        return tuple(
            tf.tensor_scatter_nd_update(full, indices, tf.stack([row[k] for row in rows]))
            for k, full in enumerate(layer_histograms)
        )

    def _fused_statistics(self, grads, fused, divisor, hist):
        """(moments [n_gradients, NUM_MOMENTS], (range, counts, log10 counts)
        per layer or None): a row step's statistics without XLA, where the
        gradients have copies (`track_gradients`).

        `record_gradients` copied each layer's gradients into their
        variables (`_copy_gradients`: one isolated call per layer, a few ops;
        the training graph sees what it saw with the per-layer statistics,
        each layer's gradients read once as its backward ops make them);
        here, later in the trace (`record_weights`), one XLA-compiled call
        reads every copy and computes the statistics over rows of all of them
        (`stats.multi_tensor_statistics`, as inline under XLA), the
        histograms in a branch taken on histogram steps (`hist`). The call
        reads all the copies whichever gradients the step has, so that the
        one `warm_up` compiled is the one the step runs; the rows of a
        gradient that is None or does not fit its copy (sparse
        IndexedSlices, another dtype) are then replaced by its own
        statistics, and its layer's histograms computed apart from its
        present gradients, as `_inline_statistics` does. `fused`: per
        gradient, whether `_copy_gradients` copied it.
        """
        copies = self.gradient_copies
        outputs = self._fused_call(tuple(range(len(copies))), hist is not None)(
            divisor, hist if hist is not None else tf.constant(False)
        )
        moments = outputs[0]
        unfused = [i for i in range(len(grads)) if not fused[i]]
        if unfused:
            rows = [
                tf.zeros([aggregate.NUM_MOMENTS]) if grads[i] is None
                else self._statistic(_moments, grads[i])(grads[i], divisor)
                for i in unfused
            ]
            moments = tf.tensor_scatter_nd_update(moments, tf.constant([[i] for i in unfused]), tf.stack(rows))
        if hist is None:
            return moments, None
        return moments, self._with_layers_apart(tuple(outputs[1:]), unfused, grads, divisor)

    def _copy_gradients(self, grads):
        """In-step: each layer's gradients into their copies, one isolated
        call per layer (see `_fused_statistics`); per gradient, whether it
        was copied (a dense tensor of its copy's dtype and shape)."""
        copies = self.gradient_copies
        fused = [
            isinstance(g, tf.Tensor) and g.dtype == copies[i].dtype and g.shape == copies[i].shape
            for i, g in enumerate(grads)
        ]
        for members in self._variables_of_layer:
            kept = [i for i in members if fused[i]]
            if kept:
                tensors = [grads[i] for i in kept]
                copy = self._layer_call(_assign_by_handle, tensors, leading=(tf.resource,) * len(kept))
                copy(*[copies[i].handle for i in kept], *tensors)
        return fused

    def _fused_call(self, indices, histograms):
        """The XLA-compiled call of `_fused_statistics`: (divisor, bool
        histogram gate) -> moments of the copies of the gradients
        `indices` (and, with `histograms`, the per-layer histograms of
        those copies), traced and compiled once per model."""
        key = ("fused statistics", indices, histograms)
        cached = self._isolated_functions.get(key)
        if cached is None:
            copies = [self.gradient_copies[i] for i in indices]
            layers = [int(self.layer_of_variable[i]) for i in indices]
            n_layers = self.n_layers

            def fused_statistics(divisor, hist):
                moments, layer_histograms = stats.multi_tensor_statistics(
                    [c.value() for c in copies], layers, n_layers, divisor, hist if histograms else False,
                    by_dot=_cpu_only(),
                )
                return (moments,) + (tuple(layer_histograms) if histograms else ())

            cached = self._isolated_functions[key] = compiled(
                fused_statistics, [tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.bool)]
            )
        return cached

    def _fused_update_sums(self, gate, variables, snapshots):
        """[n_weights, 3] (`_handle_update_sums`) of every weight and its
        snapshot where the bool `gate` holds, NaN else, in one XLA-compiled
        call (rows of all weights, `stats.multi_tensor_update_sums`); None
        where the statistics are not fused or `snapshots` is None (the
        weight norms alone: `_fused_sum_squares`)."""
        if snapshots is None or not variables or not self._fused():
            return None
        return self._fused_update_sums_call(variables, snapshots)(gate)

    def _fused_update_sums_call(self, variables, snapshots):
        key = ("fused update sums", tuple(id(v) for v in variables))
        cached = self._isolated_functions.get(key)
        if cached is None:
            pairs = list(zip(variables, snapshots))

            def fused_update_sums(gate):
                return tf.cond(
                    gate,
                    lambda: stats.multi_tensor_update_sums(
                        [v.value() for v, _ in pairs], [b.value() for _, b in pairs], _cpu_only()
                    ),
                    lambda: tf.fill([len(pairs), 3], float("nan")),
                )

            cached = self._isolated_functions[key] = compiled(fused_update_sums, [tf.TensorSpec([], tf.bool)])
        return cached

    def _fused_sum_squares(self, variables):
        """[n_weights]: the weight norms' sums of squares (no update ratio)
        in one XLA-compiled call; None where the statistics are not fused."""
        if not variables or not self._fused():
            return None
        return self._fused_sum_squares_call(variables)()

    def _fused_sum_squares_call(self, variables):
        key = ("fused sum squares", tuple(id(v) for v in variables))
        cached = self._isolated_functions.get(key)
        if cached is None:
            cached = self._isolated_functions[key] = compiled(
                lambda: stats.multi_tensor_sum_squares([v.value() for v in variables], _cpu_only()), []
            )
        return cached

    def warm_up(self, variables):
        """Host, after `track_gradients` and `track_weights`: trace and
        compile the fused calls (`_fused_statistics`, the weights' sums) on
        a thread of their own, while the train step is traced.

        XLA compiles a call on its first execution, so the first row step
        would wait for it (statistics and weight sums: seed003_mlp ~0.5 s and
        0.2 s, MobileNetV3Small ~1.3 s and 1.2 s on 2 CPU cores). Traced
        here, then run once each on a thread of its own, from a graph as the
        train step calls them (an eager call is compiled apart), on the zero
        copies, their results discarded, they are compiled while the train
        step is being traced, and the step finds them in XLA's cache; the
        step takes the statistics of its gradient copies at the end of its
        trace (`_finish_gradients`), which is where it waits for the
        threads. The warm-up also proves the calls: if it fails, the trace
        falls back to the per-layer calls (`_fused`), with a warning, instead
        of a train step that fails.
        """
        if self.gradient_copies is None:
            return
        variables = list(variables)
        fused = self._fused_call(tuple(range(len(variables))), self.histogram_freq > 0)
        if self.weight_snapshots is not None:
            weights = self._fused_update_sums_call(variables, self.weight_snapshots)
            calls = [lambda: fused(tf.constant(1.0), tf.constant(True)), lambda: weights(tf.constant(True))]
        else:
            weights = self._fused_sum_squares_call(variables)
            calls = [lambda: fused(tf.constant(1.0), tf.constant(True)), weights]

        try:
            # Traced here, on this thread: tracing is Python, which a thread
            # of its own would run under the GIL against the train step's
            # trace; the step's trace then finds them traced.
            concrete = [tf.function(call, autograph=False).get_concrete_function() for call in calls]
        except Exception as error:  # noqa: BLE001  (any failure: fall back, see `_fused`)
            self._warm_up_error = error
            return

        def run(function):
            try:
                function()
            except Exception as error:  # noqa: BLE001
                self._warm_up_error = error

        # One thread per call: XLA compiles them (outside the GIL) in
        # parallel with the train step's trace.
        self._warm_up_threads = [
            threading.Thread(target=run, args=(function,), name="tb_gradflow_compile", daemon=True)
            for function in concrete
        ]
        for thread in self._warm_up_threads:
            thread.start()

    def _fused(self):
        """Whether a row's statistics go through the fused calls: there are
        gradient copies, and their warm-up (if any) succeeded. Waits for the
        warm-up to end (at trace time, or at the end of training)."""
        threads, self._warm_up_threads = self._warm_up_threads, []
        for thread in threads:
            thread.join()
        if self.gradient_copies is not None and self._warm_up_error is not None:
            warnings.warn(
                "tb_gradflow: the compiled statistics failed to build "
                f"({type(self._warm_up_error).__name__}: {self._warm_up_error}); "
                "computing them per layer instead",
                stacklevel=2,
            )
            self.gradient_copies = None
        return self.gradient_copies is not None

    def finish_warm_up(self):
        """Host: wait for `warm_up`'s thread, if it still runs (a fit that
        ended before its first row step was traced)."""
        self._fused()

    def _gated_moments(self, grads, write, scale, divisor):
        """Per variable: the detailed moments on write steps and on steps with
        a non-finite gradient, else only the sum of squares (a custom loop's
        step function runs on every step).

        Every step pays for one fused reduction per variable (l2_loss): the
        interval extremes need the norm of every step. Its raw sum also tells
        whether any element is non-finite (NaN/Inf propagate), so the
        detailed, finite-masked moments run under a tf.cond per variable (a
        joint one would keep every gradient alive until the last).
        """
        rows = []
        nan = tf.constant(float("nan"))
        for g in grads:
            if g is None:
                rows.append(tf.zeros([aggregate.NUM_MOMENTS]))
                continue
            raw_sq = 2.0 * tf.nn.l2_loss(tf.cast(g, tf.float32))
            if scale is not None:
                # A power of two: dividing the sum is exact, like dividing g.
                raw_sq = raw_sq / (scale * scale)
            detail = tf.logical_or(write, tf.logical_not(tf.math.is_finite(raw_sq)))
            rows.append(
                tf.cond(
                    detail,
                    lambda g=g: self._statistic(_moments, g)(g, divisor),
                    # Sum |g|, max |g| and the zero count are not measured: NaN says so.
                    lambda raw_sq=raw_sq: tf.stack([raw_sq, nan, nan, nan, tf.constant(0.0)]),
                )
            )
        return rows

    def _statistic(self, function, tensor):
        """`function(tensor, scale)` as an isolated call (see `_isolated`)
        traced once per dtype, whatever the tensor's shape: a model's
        hundreds of variables cost one trace, not one per shape. Other values
        (sparse IndexedSlices) get a call traced for their own structure."""
        if self._inline or not isinstance(tensor, tf.Tensor):
            return self._isolated(function)
        key = (function, tensor.dtype)
        cached = self._isolated_functions.get(key)
        if cached is None:
            spec = [tf.TensorSpec(None, tensor.dtype), tf.TensorSpec([], tf.float32)]
            cached = self._isolated_functions[key] = noinline(function, input_signature=spec)
        return cached

    def _layer_call(self, function, tensors, leading=(tf.float32,)):
        """`function(*scalars, *tensors)` (one layer's tensors, after scalar
        arguments of the dtypes `leading`) as an isolated call traced once
        per count and dtypes of the tensors, whatever their shapes: a few
        traces for a whole model (a Dense layer's kernel and bias, a
        BatchNormalization's four), and one call per layer, not per
        variable, in each step (a call costs tens of microseconds whatever
        it computes)."""
        if self._inline:
            return function
        dtypes = tuple(t.dtype for t in tensors)
        key = (function, dtypes)
        cached = self._isolated_functions.get(key)
        if cached is None:
            spec = [tf.TensorSpec([], dtype) for dtype in leading] + [tf.TensorSpec(None, dtype) for dtype in dtypes]
            cached = self._isolated_functions[key] = noinline(function, input_signature=spec)
        return cached

    def _layer_moments(self, grads, divisor, hist=None):
        """(moments [n_gradients, NUM_MOMENTS], {layer: (range, counts, log10 counts)}):
        a step that holds a row (ungated), one isolated call per layer.

        The call reads one layer's gradients, which its backward ops make
        together, and yields a few numbers. With `hist` (the histogram-step
        gate) it yields the layer's finite range and both kinds of counts
        too (the histograms need the whole layer's range first, and the call
        has it), computed on histogram steps only: a branch inside the
        isolated call, invisible to the training graph, so one train
        function serves rows with and without histograms (each function a
        model traces costs start-up and host memory in proportion to its
        layers). Inline (XLA, multi-replica) the statistics go through
        `_inline_statistics` instead. A layer with a sparse gradient
        (IndexedSlices, from an Embedding) gets a call per gradient instead,
        its histograms computed apart.
        """
        # Each layer's [k, NUM_MOMENTS] block as its call returns it, joined
        # once and put in gradient order by one gather where the layers'
        # order differs: no slice per gradient (with three constants each).
        blocks, order = [], []
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            blocks.append(tf.zeros([len(missing), aggregate.NUM_MOMENTS]))
            order += missing
        histograms_of = {}
        for li, members in enumerate(self._variables_of_layer):
            present = [i for i in members if grads[i] is not None]
            tensors = [grads[i] for i in present]
            if not tensors:
                continue
            if not all(isinstance(t, tf.Tensor) for t in tensors):
                for i in present:
                    blocks.append(self._statistic(_moments, grads[i])(grads[i], divisor)[tf.newaxis])
                    order.append(i)
                continue
            if hist is not None:
                call = self._layer_call(_layer_moments_and_histograms, tensors, (tf.float32, tf.bool))
                moments, low_high, counts, log_counts = call(divisor, hist, *tensors)
                histograms_of[li] = (low_high, counts, log_counts)
            else:
                moments = self._layer_call(_layer_moments, tensors)(divisor, *tensors)
            blocks.append(moments)
            order += present
        if not blocks:
            return tf.zeros([0, aggregate.NUM_MOMENTS]), histograms_of
        return stats.join_in_order(blocks, order), histograms_of

    def record_applied(self, step, grads):
        """In-step, after the optimizer clipped: the sums of squares of the
        gradients it applies (aligned with `sizes`; None allowed). One
        scalar reduction per gradient, as in `record_gradients`."""
        sums = tf.stack(
            [2.0 * tf.nn.l2_loss(tf.cast(g, tf.float32)) if g is not None else tf.constant(0.0) for g in grads]
        )
        self.applied_sum_squares.assign(sums)
        self.applied_step.assign(tf.cast(step, tf.int64))

    def _layer_histograms(self, divisor, tensors):
        """(range, equal-width counts, log10 counts) of one layer's gradients /
        divisor, in one isolated call."""
        if all(isinstance(t, tf.Tensor) for t in tensors):
            return self._layer_call(_layer_histograms, tensors)(divisor, *tensors)
        return self._isolated(_layer_histograms)(divisor, *tensors)

    def _isolated(self, function):
        """`function` as a call that grappler optimizes on its own (not inlined).

        Under XLA the whole step is one compiled cluster and there is no
        grappler to keep out; the function is called as it is.
        """
        if self._inline:
            return function
        cached = self._isolated_functions.get(function)
        if cached is None:
            cached = self._isolated_functions[function] = noinline(function)
        return cached

    def track_weights(self, variables):
        """Host, once before the first step: keep a copy of each weight for the update ratio.

        The update-to-weight ratio needs the weights before and after an
        update. Copying them inside the step, before the update, would hold a
        weight-sized tensor across the optimizer's ops, which grappler's
        memory heuristics see (and act on). Instead the copy lives in a
        variable, refreshed after the update of the step before each write
        step; everything reads variables inside an isolated call, so the
        training graph gains no tensor of a weight's size. It costs one copy
        of the trainable weights in memory. Under XLA (one replica,
        ungated) there are no such variables: the copy is a tensor of the
        compiled row step (`snapshot_weights`).
        """
        if self._rows_before is not None:
            # Under XLA the copy is taken in the step (`snapshot_weights`):
            # XLA compiles the whole step, so grappler never sees the tensor,
            # and a copy in variables cost an assign, a read and a flatten
            # per weight to trace and compile (~1,500 ops on
            # MobileNetV3Small), and one copy of the weights in memory for
            # the whole run instead of during a row step.
            self.weights_tracked = True
            return
        scope = self._strategy.scope() if self._strategy is not None else contextlib.nullcontext()
        with scope:
            self.weight_snapshots = [
                tf.Variable(tf.identity(v), trainable=False, name=f"tb_gradflow_weight_before_{i}", **self._sync)
                for i, v in enumerate(variables)
            ]

    def track_gradients(self, variables):
        """Host, once before the first step (`fit`, without XLA, one
        replica): a copy of each gradient in a variable, so that a row's
        statistics run as one XLA-compiled call over all of them.

            >>> import tensorflow as tf
            >>> rec = GradientRecorder(sizes=[2], layer_of_variable=[0], n_layers=1, update_freq=1,
            ...                        histogram_freq=1, gated=False)
            >>> rec.track_gradients([tf.Variable([1.0, 2.0])])
            >>> [c.shape.as_list() for c in rec.gradient_copies]
            [[2]]

        Without XLA every op of the per-layer statistics is a kernel of its
        own, and on the small tensors of a real model their fixed cost, not
        their arithmetic, was the time: MobileNetV3Small's row with
        histograms took 28 ms over its 41 ms step in ~40 ops per layer and
        weight; compiled, the same statistics are a few fused loops over
        rows of all the gradients. The gradients cannot go to that call as
        tensors: a consumer of every gradient would keep each alive until
        the last one is made, and grappler's memory heuristics, which see
        the whole training graph, would see another peak (see
        `record_gradients`). So each layer's gradients are copied, as its
        backward ops make them, and the compiled call reads the copies. It
        costs one copy of the trainable weights' size in memory and the
        calls' compile at start-up (`warm_up`), so models of more than
        `FUSED_MAX_ELEMENTS` elements, and rows rarer than every
        `FUSED_MAX_UPDATE_FREQ` steps (the defaults), keep the per-layer
        calls. Under XLA, a multi-replica strategy or in a custom loop
        (gated) nothing is copied.
        """
        sizes = [v.shape.num_elements() for v in variables]
        if self._inline or self.gated or None in sizes or not statistics_compiled(self.update_freq, sum(sizes)):
            return
        scope = self._strategy.scope() if self._strategy is not None else contextlib.nullcontext()
        with scope:
            self.gradient_copies = [
                tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"tb_gradflow_gradient_{i}")
                for i, v in enumerate(variables)
            ]

    def snapshot_weights(self, step, variables):
        """In-step, before the update (ungated recorders): on a write step,
        the weights the update ratio compares with.

        The step before a write step runs the user's own train function, so
        the copy is taken here, in an isolated call that writes variables:
        the training graph gains no weight-sized tensor, only the order
        "copy, then update" on each weight.
        """
        if self._rows_before is not None and self.weights_tracked:
            self._rows_before[_graph_key()] = stats.weight_rows(variables)
            return
        if self.weight_snapshots is None or self.gated:
            return
        self._copy_to_snapshots_if(self.is_write_step(step), variables, self.weight_snapshots)

    def record_loss(self, step, loss, write=None):
        """In-step, every step (the user's own train function included): the
        step's scalar loss, a few scalar ops whatever the model's size.

        Between two rows the per-variable statistics are not computed; the
        loss still shows a spike (its interval maximum) and a non-finite
        step (counted: a non-finite loss makes every gradient non-finite).

        Args:
          write: False where the caller knows no row falls on this step (the
            Keras callback's light function runs only executions that hold
            none): the schedule's dozen-odd scalar ops are left out of the
            step (with the step count it adds 32 nodes to the traced step,
            44 before the extremes were folded as one pair). Called directly
            against plain fit in one process the light function reads
            0.997x-1.006x on seed003_mlp and 0.94x-0.98x on mlp50 without
            XLA (2026-12-05): what the steps between rows read across
            processes (1.02x-1.05x) is the traces' draw, not these ops. None: the
            schedule decides in the graph.
        """
        loss = tf.cast(loss, tf.float32)
        is_open = self.loss_interval_open.read_value()
        finite = tf.math.is_finite(loss)
        # The interval's (max, -min) and this loss's (loss, -loss) in one
        # maximum; a non-finite loss counts as -inf (changes neither), a
        # new interval starts from -inf (`snapshot` reads -inf as NaN: no
        # finite loss). Two folds of max and min apart, each minding NaN,
        # traced 12 nodes more into every step between rows.
        minus_inf = tf.constant(float("-inf"))
        extremes = tf.where(is_open, self.loss_extremes.read_value(), minus_inf)
        self.loss_extremes.assign(tf.maximum(extremes, tf.where(finite, tf.stack([loss, -loss]), minus_inf)))
        count = tf.where(is_open, self.nonfinite_loss_steps.read_value(), 0.0)
        self.nonfinite_loss_steps.assign(count + tf.cast(tf.logical_not(finite), tf.float32))
        self.loss.assign(loss)
        if write is False:
            self.loss_interval_open.assign(True)
        else:
            self.loss_interval_open.assign(tf.logical_not(self.is_write_step(tf.cast(step, tf.int64))))

    def record_weights(self, step, variables):
        """In-step, after the update: weight norms and update sizes on write steps.

        Args:
          variables: the updated variables, aligned with `sizes`.
        """
        self._finish_gradients()
        step = tf.cast(step, tf.int64)
        write = self.is_write_step(step)
        snapshots = self.weight_snapshots
        rows_before = None
        if self._rows_before is not None:
            rows_before = self._rows_before.pop(_graph_key(), None)
        kept = (
            self.weight_sum_squares.read_value(),
            self.update_sum_squares.read_value(),
            self.weight_before_sum_squares.read_value(),
        )
        # By handle, one call per layer that measures only where `write`
        # holds (NaN else) and one select per array: no branch in the
        # training graph (a tf.cond here and the snapshot's captured two
        # handles per weight: a hooked Dense layer traced 28 ops, now 12;
        # tests/test_traced_ops.py).
        sums = self._fused_update_sums(write, variables, snapshots)
        if sums is None and snapshots:
            sums = self._per_weight(_handle_update_sums_if, write, variables, snapshots)
        if sums is not None:
            weight, update, weight_before = tf.unstack(tf.where(write, sums, tf.stack(kept, axis=1)), axis=1)
        else:
            def measure():
                if rows_before is not None:
                    # The rows `snapshot_weights` read before the update.
                    return tuple(tf.unstack(stats.rows_update_sums(variables, rows_before, self._sums_by_dot), axis=1))
                if snapshots is not None and self._inline:
                    # In rows of all weights, as the gradients' (see _inline_statistics).
                    sums = stats.multi_tensor_update_sums(variables, snapshots, self._sums_by_dot)
                    return tuple(tf.unstack(sums, axis=1))
                if snapshots is None and self._inline:
                    # Likewise: a per-variable reduction is a fusion each for
                    # XLA to compile (seed003_mlp: 20 of the step's 138).
                    nan = tf.fill([len(variables)], float("nan"))
                    return stats.multi_tensor_sum_squares(variables, self._sums_by_dot), nan, nan
                if snapshots is None:
                    weight = self._fused_sum_squares(variables)
                    if weight is None:
                        weight = self._isolated(_sum_squares_of)(variables)
                    nan = tf.fill([len(variables)], float("nan"))
                    return weight, nan, nan
                return self._isolated(_update_sums)(variables, snapshots)

            weight, update, weight_before = tf.cond(write, measure, lambda: kept)
        self.weight_sum_squares.assign(weight)
        self.update_sum_squares.assign(update)
        self.weight_before_sum_squares.assign(weight_before)
        self.weight_step.assign(tf.where(write, step, self.weight_step))
        if snapshots is not None and self.gated:
            # After this step's update: the "before" of the next write step.
            self._copy_to_snapshots_if(self.is_write_step(step + 1), variables, snapshots)

    def _per_weight(self, body, gate, variables, snapshots):
        """`body(gate, handles, snapshot_handles, dtypes)` of each layer's
        weights, one isolated call per layer traced once per count and dtypes
        of its weights whatever their shapes, the results joined in weight
        order ([n_weights, ...]); None where the weights cannot go by handle
        (XLA, multi-replica: the caller runs inline instead).

        The weights go in as resource handles, read inside the call: the
        training graph gains no weight-sized tensor (see `track_weights`),
        and a few traces serve every layer, where a function of all the
        weights at once traced a few ops per weight (thousands of ops, tens
        of seconds of start-up on a keras.applications model). The bool
        `gate` goes in too, so whether the call works is a branch inside it,
        traced once, not one in the training graph around every layer's call.
        """
        if self._inline or not variables or not all(hasattr(v, "handle") for v in variables + snapshots):
            return None
        blocks, order = [], []
        for members in self._variables_of_layer:
            if not members:
                continue
            dtypes = tuple(variables[i].dtype for i in members)
            key = (body, dtypes)
            call = self._isolated_functions.get(key)
            if call is None:
                k = len(dtypes)
                call = self._isolated_functions[key] = noinline(
                    lambda gate, *handles, dtypes=dtypes, k=k: body(gate, handles[:k], handles[k:], dtypes),
                    input_signature=[tf.TensorSpec([], tf.bool)] + [tf.TensorSpec([], tf.resource)] * (2 * k),
                )
            blocks.append(call(gate, *[variables[i].handle for i in members], *[snapshots[i].handle for i in members]))
            order += members
        return stats.join_in_order(blocks, order)

    def _copy_to_snapshots_if(self, gate, variables, snapshots):
        """Where the bool `gate` holds, each snapshot := its weight (see `_per_weight`)."""
        if self._per_weight(_handle_copy_if, gate, variables, snapshots) is None:
            tf.cond(gate, lambda: self._isolated(_copy_weights)(variables, snapshots), lambda: tf.constant(False))

    def state(self):
        """{name: variable} of everything `snapshot` needs."""
        names = ["moments", "has_gradient", "nonfinite_interval", "variable_interval_max",
                 "variable_interval_min", "layer_interval_max", "layer_interval_min",
                 "weight_sum_squares", "update_sum_squares", "snapshot_step", "weight_step",
                 "histogram_step", "histogram_range", "histogram_counts", "log10_counts"]
        names += ["weight_before_sum_squares", "loss_scale", "loss", "loss_extremes", "nonfinite_loss_steps"]
        if self.clipping:
            names += ["applied_sum_squares", "applied_step"]
        return {name: getattr(self, name) for name in names}

    def read_tensors(self):
        """In a tf.function: {name: value} of `state()`, what `snapshot` takes as numpy."""
        return {name: v.read_value() for name, v in self.state().items()}

    def read(self):
        """Host: one read of everything, as an `aggregate.RawSnapshot` (see `snapshot`)."""
        if self._read_function is None:
            # One function call (one dispatch, one device-to-host transfer
            # wave) instead of a .numpy() per variable.
            self._read_function = tf.function(self.read_tensors, autograph=False)
        return self.snapshot({name: t.numpy() for name, t in self._read_function().items()})

    def read_with(self, activations):
        """Host: (`read()`, `activations.read()`) from one function call: a
        call costs the training thread ~0.2 ms whatever it reads (2 CPU
        cores), and rows of both often fall on one step."""
        if self._read_with is None or self._read_with[0] is not activations:
            function = tf.function(lambda: (self.read_tensors(), activations.read_tensors()), autograph=False)
            self._read_with = (activations, function)
        gradients, activation_values = self._read_with[1]()
        return (self.snapshot({name: t.numpy() for name, t in gradients.items()}),
                activations.from_values({name: t.numpy() for name, t in activation_values.items()}))

    def snapshot(self, values):
        """RawSnapshot from {name: numpy array} of `state()`, with `.step`,
        `.histogram_step` and the histogram arrays attached.

        Inside a tf.function, read `state()` in the graph (ordered after the
        assignments) and call this from a py_function with the values.
        """
        values = {name: np.asarray(value) for name, value in values.items()}
        fields = {f for f in aggregate.RawSnapshot.__dataclass_fields__}
        raw = aggregate.RawSnapshot(sizes=self.sizes, **{k: v for k, v in values.items() if k in fields})
        raw.step = int(values["snapshot_step"])
        if int(values["weight_step"]) != raw.step:
            # Weights are measured on write steps only; a final partial
            # interval has none of its own.
            for name in ("weight_sum_squares", "update_sum_squares", "weight_before_sum_squares"):
                setattr(raw, name, np.full_like(getattr(raw, name), np.nan))
        if "applied_step" in values:
            # Clipping happens on update steps only (gradient accumulation):
            # a clip factor belongs to the row only if it is of its step.
            applied = np.asarray(values["applied_sum_squares"], np.float64)
            raw.applied_sum_squares = applied if int(values["applied_step"]) == raw.step else np.full_like(applied, np.nan)
        for name in ("loss", "nonfinite_loss_steps"):
            setattr(raw, name, float(values[name]) if name in values else float("nan"))
        if "loss_extremes" in values:
            # -inf: no finite loss in the interval (NaN, as before the first step).
            high, minus_low = (float(x) if np.isfinite(x) else float("nan") for x in values["loss_extremes"])
            raw.loss_interval_max, raw.loss_interval_min = high, -minus_low
        raw.histogram_step = int(values["histogram_step"])
        if raw.histogram_step >= 0:
            raw.histogram_range = values["histogram_range"]
            raw.histogram_counts = values["histogram_counts"]
            raw.log10_counts = values["log10_counts"]
        return raw


def _graph_key():
    """(graph, thread) of the trace in progress: what one call of a
    recorder method leaves for a later one of the same trace."""
    return tf.compat.v1.get_default_graph(), threading.get_ident()


def noinline(function, input_signature=None):
    """`function` as a tf.function that grappler optimizes on its own, not
    inlined into the train step (see GradientRecorder.record_gradients).

    With `input_signature` (shapes left None where they vary) it is traced
    once for every input of that signature: a few traces serve a model's
    hundreds of layers.
    """
    # No autograph: the statistics are written with tf ops (tf.cond, tf.where),
    # and converting their source costs seconds of start-up per function.
    return tf.function(
        function, input_signature=input_signature, experimental_attributes={"_noinline": True},
        reduce_retracing=False, autograph=False,
    )


def compiled(function, input_signature):
    """`function` as a tf.function that XLA compiles on its first call
    (`jit_compile=True`), traced once for `input_signature`: inside a train
    step that is not compiled, one call op, run by XLA as one computation."""
    return tf.function(function, input_signature=input_signature, jit_compile=True, reduce_retracing=False,
                       autograph=False)


def _join_blocks(blocks):
    """Blocks of k parallel tensors each (rows of some activations) joined
    part by part along their rows: k tensors."""
    return [tf.concat(parts, axis=0) if len(parts) > 1 else parts[0] for parts in zip(*blocks)]


def _graph_call(function, arguments):
    """A tf.function calling `function(*arguments)` from its graph."""
    return tf.function(lambda: function(*arguments), autograph=False)


def _copy_rows_by_handle(handle, tensor):
    """The variable of resource `handle` := `tensor` as rows of its last axis."""
    tf.raw_ops.AssignVariableOp(resource=handle, value=tf.reshape(tensor, [-1, tf.shape(tensor)[-1]]))


def _assign_by_handle(*handles_and_values):
    """Each of k variables (resource handles, then k values) := its value."""
    k = len(handles_and_values) // 2
    for handle, value in zip(handles_and_values[:k], handles_and_values[k:]):
        tf.raw_ops.AssignVariableOp(resource=handle, value=value)


def _sum_squares_of(variables):
    return tf.stack([stats.sum_squares(v) for v in variables])


def _update_sums(variables, snapshots):
    """(||w||^2, ||w - w_before||^2, ||w_before||^2) per variable."""
    weight = tf.stack([stats.sum_squares(v) for v in variables])
    update = tf.stack(
        [stats.sum_squares(tf.cast(v, tf.float32) - tf.cast(b, tf.float32)) for v, b in zip(variables, snapshots)]
    )
    before = tf.stack([stats.sum_squares(b) for b in snapshots])
    return weight, update, before


def _handle_update_sums_if(gate, handles, before_handles, dtypes):
    """[k, 3]: `_handle_update_sums` where the bool `gate` holds, NaN else."""
    return tf.cond(
        gate,
        lambda: _handle_update_sums(handles, before_handles, dtypes),
        lambda: tf.fill([len(dtypes), 3], float("nan")),
    )


def _handle_copy_if(gate, handles, snapshot_handles, dtypes):
    """[k]: `_handle_copy` where the bool `gate` holds (all True), nothing else (all False)."""
    return tf.cond(
        gate,
        lambda: _handle_copy(handles, snapshot_handles, dtypes),
        lambda: tf.fill([len(dtypes)], False),
    )


def _handle_update_sums(handles, before_handles, dtypes):
    """[k, 3]: ||w||^2, ||w - w_before||^2, ||w_before||^2 of each of one layer's weights, by handle."""
    rows = []
    for handle, before_handle, dtype in zip(handles, before_handles, dtypes):
        weight = tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype)
        before = tf.raw_ops.ReadVariableOp(resource=before_handle, dtype=dtype)
        rows.append(tf.stack([
            stats.sum_squares(weight),
            stats.sum_squares(tf.cast(weight, tf.float32) - tf.cast(before, tf.float32)),
            stats.sum_squares(before),
        ]))
    return tf.stack(rows)


def _handle_copy(handles, snapshot_handles, dtypes):
    """[k] True: each of one layer's snapshots := its weight, by handle."""
    for handle, snapshot_handle, dtype in zip(handles, snapshot_handles, dtypes):
        tf.raw_ops.AssignVariableOp(
            resource=snapshot_handle, value=tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype)
        )
    return tf.fill([len(dtypes)], True)


def _copy_weights(variables, snapshots):
    for v, b in zip(variables, snapshots):
        b.assign(v)
    return tf.constant(True)


def _moments(grad, scale, formula=stats.gradient_moments):
    return formula(tf.cast(grad, tf.float32) / scale)


def _layer_moments(scale, *tensors):
    """[k, NUM_MOMENTS]: `_moments` of each of one layer's gradients (in an
    isolated call, where the non-finite mask can be a branch)."""
    formula = stats.gradient_moments if _gpu_visible() else stats.gradient_moments_masked_if_needed
    return tf.stack([_moments(t, scale, formula) for t in tensors])


@functools.lru_cache(maxsize=None)
def _gpu_visible():
    """Whether TensorFlow sees a GPU. There the row moments keep the masked
    formula: a branch's predicate is copied to the host (a sync per
    gradient and row), while the passes it saves are cheap on a GPU's
    bandwidth (docs/gpu_design.md). Measured on CPU only."""
    return bool(tf.config.list_logical_devices("GPU"))


@functools.lru_cache(maxsize=None)
def _cpu_only():
    """Whether TensorFlow sees neither a GPU nor a TPU: only then do the
    inline statistics sum along rows by dot products (`stats.sum_rows`).
    A float32 dot may run in TF32 on a GPU and in bfloat16 passes on a TPU
    at their default precision; a reduction is exact to float32 there."""
    return not _gpu_visible() and not tf.config.list_logical_devices("TPU")


def _layer_histograms(scale, *tensors):
    """(range [2], equal-width counts, log10 counts) of one layer's gradients / scale."""
    return stats.layer_histograms(tensors, scale)


def _layer_moments_and_histograms(scale, hist, *tensors):
    """`_layer_moments` and `_layer_histograms` of one layer's gradients, one
    call; the histograms only where the bool `hist` holds (zeros else)."""
    moments = _layer_moments(scale, *tensors)
    skipped = (tf.zeros([2]), tf.zeros([metadata.HISTOGRAM_BUCKETS], tf.int32), tf.zeros([metadata.LOG10_BUCKETS], tf.int32))
    return (moments,) + tuple(tf.cond(hist, lambda: _layer_histograms(scale, *tensors), lambda: skipped))


class ActivationRecorder:
    """Device state of the activation statistics (saturation, dead units).

    Args:
      units: units of each captured activation (its input's unit axis size).
      thresholds: per captured activation, the absolute |f'(z)| below which
        an element counts as saturated (saturation_derivative x its peak).
      activation_freq: statistics on train steps that are multiples of this.
      strategy: the `tf.distribute.Strategy` whose scope the variables need.
      xla: the step is compiled with XLA.
      dtypes: per captured activation, the dtype the step computes it in;
        with `model_elements` (the model's trainable elements), where
        `statistics_compiled` holds (without XLA, on one replica) the
        activations are copied as the step makes them and measured at its
        end by one XLA-compiled call (`_record_copied`); None: one isolated
        call per activation.

    Each replica sees its own share of the batch, so the counts and sums are
    ON_READ variables with SUM aggregation: a host read adds the replicas'
    shares up (exact for counts; mean and variance combine through additive
    moments, see stats.activation_statistics). The pre-activation histogram's
    range is per replica, so under a multi-replica strategy it is the first
    replica's share only (ONLY_FIRST_REPLICA).

    >>> import tensorflow as tf
    >>> rec = ActivationRecorder(units=[2], thresholds=[0.0591], activation_freq=1)
    >>> rec.record(0, tf.constant([[-1.0, 2.0], [-3.0, 4.0]]), tf.constant(1, tf.int64), function=tf.nn.relu)
    >>> snap = rec.read()
    >>> snap.step, snap.active[0].tolist(), float(snap.moments[0][0])
    (1, [0.0, 2.0], 2.0)
    """

    def __init__(self, *, units, thresholds, activation_freq, strategy=None, xla=False,
                 dense_start=schedule.DENSE_START, unit=1, dtypes=None, model_elements=0):
        self.units = [int(u) for u in units]
        self.thresholds = [float(t) for t in thresholds]
        self.activation_freq = int(activation_freq)
        self.dense_start = int(dense_start)
        self.unit = int(unit)
        self._read_function = None
        self._measure_functions = {}
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        distributed = strategy is not None and strategy.num_replicas_in_sync > 1
        self._inline = bool(xla) or distributed
        self._xla = bool(xla)
        # (graph, thread) -> activations recorded in a `stacked()` block.
        self._pending = {}
        # Without XLA, at rows every few steps: a copy of each activation
        # (see `_record_copied`); None: one isolated call per activation.
        self.copies = None
        self._copies_warning = None
        self._copies_warned = False
        # The compiled calls traced and not yet given to `warm_up`:
        # (function, the activations whose copies are its arguments).
        self._compiled_calls = []
        self._warm_up_thread = None

        # (variable, initial value) of every state variable, for `restart`.
        self._initial_state = []

        def state(name, shape, dtype=tf.float32, init=0, aggregation=tf.VariableAggregation.SUM):
            kwargs = dict(trainable=False, name=f"tb_gradflow_activation_{name}")
            if distributed:
                kwargs.update(synchronization=tf.VariableSynchronization.ON_READ, aggregation=aggregation)
            return _state_variable(self._initial_state, shape, dtype, init, **kwargs)

        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        n = len(self.units)
        # Where activation i's units lie in the joined `active` vector.
        self._unit_offsets = np.concatenate([[0], np.cumsum(self.units, dtype=np.int64)])
        copied = (
            not self._inline and dtypes is not None and n > 0
            and statistics_compiled(self.activation_freq, model_elements)
        )
        with scope:
            if self._xla or copied:
                # Under XLA, four variables for all activations, rows written
                # together at the end of a sampling step (`stacked`): each
                # variable is a resource the compiled step reads and writes,
                # and four per activation cost mlp50's 50 ReLUs ~2 s of XLA
                # compile and ~2 ms a sampled step in a micro-benchmark
                # (0.3 s and 0.4 ms for four in all). Without XLA each
                # activation keeps its own: its isolated call writes them by
                # handle, and calls sharing a variable would be chained
                # (automatic control dependencies order every op on one
                # resource), changing the forward pass's schedule.
                self._stacked_state = (
                    state("moments", [n, stats.NUM_ACTIVATION_MOMENTS]),
                    state("active", [int(self._unit_offsets[-1])]),
                    state("histogram_range", [n, 2], aggregation=first),
                    state("histogram_counts", [n, metadata.HISTOGRAM_BUCKETS], tf.int32, aggregation=first),
                )
                self._per_activation_state = None
                if copied:
                    # [elements / units, units]: the activation's elements
                    # with its unit axis last, as the step last made them;
                    # emptied again after each step (see `_record_copied`).
                    self.copies = [
                        tf.Variable(tf.zeros([0, u], dtype), shape=tf.TensorShape([None, u]), trainable=False,
                                    name=f"tb_gradflow_activation_copy_{i}")
                        for i, (u, dtype) in enumerate(zip(self.units, dtypes))
                    ]
                    # Per activation, the row count of its copy in the
                    # last step measured uncompiled, and the one the
                    # compiled call is built for (-1: none; see `warm_up`).
                    self._observed_rows = tf.Variable(tf.fill([n], tf.constant(-1, tf.int64)), trainable=False,
                                                      name="tb_gradflow_activation_observed_rows")
                    self._compiled_rows = tf.Variable(tf.fill([n], tf.constant(-1, tf.int64)), trainable=False,
                                                      name="tb_gradflow_activation_compiled_rows")
                    # Steps measured by the compiled call (for tests and benchmarks).
                    self.compiled_steps = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                                      name="tb_gradflow_activation_compiled_steps")
            else:
                self._stacked_state = None
                self._per_activation_state = [
                    (
                        state(f"moments_{i}", [stats.NUM_ACTIVATION_MOMENTS]),
                        state(f"active_{i}", [u]),
                        state(f"histogram_range_{i}", [2], aggregation=first),
                        state(f"histogram_counts_{i}", [metadata.HISTOGRAM_BUCKETS], tf.int32, aggregation=first),
                    )
                    for i, u in enumerate(self.units)
                ]
            self.step = state("step", [], tf.int64, -1, aggregation=first)

    def restart(self):
        """Host, between fits (one replica): every state variable back to the
        value a new recorder starts with (no sample taken), as
        `GradientRecorder.restart`."""
        _reset_state(self._initial_state)

    def sample_gate(self, step):
        """Whether `step` (int64) is a sample step; built once per graph, and
        with it the record of the sampled step (a side effect, hence not an
        `is_` name): the activations of a graph
        share one gate and one step, not a copy each (select, read and
        assign per activation: hundreds of ops to trace on a
        keras.applications model)."""
        def gate():
            sample = due_in_graph(step, self.activation_freq, self.dense_start, self.unit)
            self.step.assign(tf.where(sample, step, self.step.read_value()))
            return sample

        return _once_per_graph(self, "sample", gate)

    def record(self, index, tensor, step, unit_axis=-1, function=None, output_op=None, output=None):
        """In-step: statistics of activation `index`, on sample steps only.

        Either `tensor` is the activation's input z and `function` the
        activation, or `tensor` is its output a and `output_op` the op type
        that made it (a key of `stats.OUTPUT_DERIVATIVES`). The statistics
        run in an isolated call, like the gradient ones (see
        GradientRecorder.record_gradients), on every step of the sampling
        train function; they are kept on sample steps only.

        With `copies` (without XLA, rows every few steps) the tensor is
        copied here and measured at the end of the step with the others
        (`_copy_or_measure`, `_record_copied`).

        `output` (with `function`): f(z) as the step computed it. Under XLA
        (`stacked`) the statistics of the activation are taken from it, and
        only f'(z) is computed from z: XLA does not share the step's f(z)
        with a recomputation, and on the Transformer block's GELU (1M
        elements) computing f(z) again was 7 of the 13 ms the activation
        statistics added to a sampled step. Elsewhere it is not read (see
        `stacked`: without XLA, which tensors the graph reads is what
        grappler's heuristics see).
        """
        step = tf.cast(step, tf.int64)
        pending = self._pending.get((tf.compat.v1.get_default_graph(), threading.get_ident()))
        if self.copies is not None:
            self._copy_or_measure(pending, index, tensor, step, unit_axis, function, output_op)
            return
        if pending is not None and tensor.shape.rank and tensor.shape[unit_axis] is not None:
            if function is None or not isinstance(output, tf.Tensor) or output.shape != tensor.shape:
                output = None
            pending.append((index, tensor, step, unit_axis, function, output_op, output))
            return
        measure_fn = self._measure_function(tensor, self.thresholds[index], unit_axis, function, output_op)

        # No control flow in the forward pass: the sampling train function
        # runs only on executions that hold a sample step, so the statistics
        # are computed on each of its steps and kept on sample steps only (a
        # select, not a branch). Fewer nodes that reorder the forward pass;
        # see docs/event_contract.md, "Exactness", for why order matters.
        sample = self.sample_gate(step)
        if self._stacked_state is not None:
            moments, active, low_high, counts = measure_fn(tensor)
            self._keep_rows_if_sampled(sample, [index], (moments[None], active, low_high[None], counts[None]))
        elif self._inline:
            for variable, value in zip(self._per_activation_state[index], measure_fn(tensor)):
                variable.assign(tf.where(sample, value, variable.read_value()))
        else:
            # Kept inside the isolated call, by handle: the training graph
            # gains one call per activation, not a read, a select and an
            # assign per variable (a dozen ops to trace and optimize each).
            measure_fn(tensor, sample, *[v.handle for v in self._per_activation_state[index]])

    def _keep_rows_if_sampled(self, sample, indices, values):
        """Under XLA: the statistics of activations `indices` (moments,
        active units joined in the order of `indices`, histogram range,
        histogram counts; one row per activation) into the stacked state,
        where the bool `sample` holds. When `indices` are all the
        activations, each variable gets one select; otherwise their rows
        are scattered into it first."""
        indices = np.asarray(indices, np.int64)
        unit_rows = np.concatenate(
            [np.arange(self._unit_offsets[i], self._unit_offsets[i + 1]) for i in indices]
        ) if indices.size else np.zeros(0, np.int64)
        for variable, rows, value in zip(self._stacked_state, (indices, unit_rows, indices, indices), values):
            old = variable.read_value()
            if rows.size == variable.shape[0] and np.array_equal(np.sort(rows), np.arange(rows.size)):
                new = stats.join_in_order([value], rows.tolist())
            else:
                new = tf.tensor_scatter_nd_update(old, rows[:, None], value)
            variable.assign(tf.where(sample, new, old))

    @contextlib.contextmanager
    def stacked(self):
        """Trace time, around a sampling train step: under XLA, the
        activations `record`ed in the block (in the block's graph) are
        measured together when it ends, joined by kind
        (`stats.multi_activation_statistics`), instead of one at a time where
        each is made.

        Inline, every op of the statistics is compiled into the step, and
        one activation's were some 60 ops: on mlp50 the activation
        statistics were the largest part of the hook's XLA compile time. The
        tensors are the step's own; under XLA where in the step they are
        read changes no result (the bit-identity tests), only what XLA keeps
        until the end of the step (activations the backward pass mostly
        keeps anyway). Without XLA the tensors are not deferred: there, where
        the graph reads a tensor is what grappler's heuristics see (see
        docs/event_contract.md, "Exactness"); with `copies` each is copied
        where it is made, and the copies are measured when the block ends
        (`_record_copied`).
        """
        if not self._xla and self.copies is None:
            yield
            return
        key = (tf.compat.v1.get_default_graph(), threading.get_ident())
        pending = self._pending[key] = []
        try:
            yield
        finally:
            del self._pending[key]
        if self._xla:
            self._record_stacked(pending)
        else:
            self._record_copied(pending)

    def _record_stacked(self, pending):
        """The deferred activations of `stacked`, one computation per kind
        (op type or function, and dtype), kept on sample steps."""
        if not pending:
            return
        sample = self.sample_gate(pending[0][2])
        # A layer called twice in the step (a shared layer) records twice:
        # its last call is kept, as when each call assigned in turn (one
        # scatter with a repeated row would keep either, unordered).
        pending = list({entry[0]: entry for entry in pending}.values())
        groups = {}
        for entry in pending:
            index, tensor, _, unit_axis, function, output_op, output = entry
            output_dtype = None if output is None else output.dtype
            groups.setdefault((output_op, function, tensor.dtype, output_dtype), []).append(entry)
        indices, blocks = [], []
        for (output_op, function, _, output_dtype), entries in groups.items():
            moments, active, low_high, counts = stats.multi_activation_statistics(
                [e[1] for e in entries], [self.thresholds[e[0]] for e in entries], [e[3] for e in entries],
                op_type=output_op, function=function,
                outputs=None if output_dtype is None else [e[6] for e in entries],
            )
            indices += [e[0] for e in entries]
            blocks.append((moments, active, low_high, counts))
        # One read, select and assign per variable for all the step's activations.
        joined = _join_blocks(blocks)
        self._keep_rows_if_sampled(sample, indices, joined)

    def _copy_or_measure(self, pending, index, tensor, step, unit_axis, function, output_op):
        """Without XLA, with `copies`: activation `index`'s tensor into its
        copy (one isolated call: the training graph reads the tensor where it
        is made, as with the per-activation statistics), measured at the end
        of the step by `_record_copied`. A tensor that does not fit its copy
        (another dtype, its unit axis not last, no static unit count) is
        measured where it is made, by an isolated call returning its rows."""
        rank = tensor.shape.rank
        fits = (
            rank and tensor.dtype == self.copies[index].dtype and unit_axis % rank == rank - 1
            and tensor.shape[-1] == self.units[index]
        )
        if fits:
            copy = self._measure_functions.get(("copy", rank, tensor.dtype))
            if copy is None:
                copy = self._measure_functions[("copy", rank, tensor.dtype)] = noinline(
                    _copy_rows_by_handle,
                    input_signature=[tf.TensorSpec([], tf.resource), tf.TensorSpec([None] * rank, tensor.dtype)],
                )
            copy(self.copies[index].handle, tensor)
            entry = (index, None, output_op, function)
        else:
            measure = self._measure_function(tensor, self.thresholds[index], unit_axis, function, output_op,
                                             values=True)
            values = measure(tensor)
            entry = (index, values, None, None)
        if pending is None:  # Outside a sampling step's `stacked` block (a direct call).
            self._record_copied([entry + (step,)])
        else:
            pending.append(entry + (step,))

    def _record_copied(self, pending):
        """Without XLA, at the end of a sampling step: the statistics of the
        activations copied in it (`_copy_or_measure`) from one call, kept on
        sample steps, with the rows of those measured apart.

        One activation's statistics were an isolated call of some 25
        kernels over its elements; here every copied activation of a kind
        is measured by one `stats.multi_activation_statistics`, as under XLA,
        and the call is XLA-compiled (MobileNetV3Small's 19 hard-swishes
        and 15 ReLUs in a micro-benchmark: 2.3 ms vs 4.4 ms one call each;
        mlp50's 50 ReLUs 0.5 ms vs 3.0 ms). XLA compiles a computation per
        input shape, and the row counts are known only once a step has run:
        the first sampled steps measure each copy uncompiled (the
        per-activation statistics), and `warm_up` compiles the call for the
        row counts they saw on a thread of its own while training goes on;
        steps of those row counts then run it, steps of others (a last,
        smaller batch; inputs of varying length) stay uncompiled rather than
        compile again. The copies are emptied afterwards: between steps they
        hold no memory.
        """
        if not pending:
            return
        sample = self.sample_gate(pending[0][-1])
        # A layer called twice in the step keeps its last call (its copy
        # holds the last one too).
        pending = list({entry[0]: entry for entry in pending}.values())
        copied = tuple((e[0], e[2], e[3]) for e in pending if e[1] is None)
        indices, blocks = [], []
        if copied:
            call, order = self._copies_call(copied)
            blocks.append(call(sample))
            indices += order
        for entry in pending:
            if entry[1] is not None:
                moments, active, low_high, counts = entry[1]
                blocks.append((moments[None], active, low_high[None], counts[None]))
                indices.append(entry[0])
        joined = _join_blocks(blocks)
        self._keep_rows_if_sampled(sample, indices, joined)

    def _copies_call(self, copied):
        """(isolated call: bool sample -> (moments, active, range, counts) of
        the copies of `copied` ((index, output op, function) each), zeros
        where not `sample`, the copies emptied after; the activation indices
        of its rows in order), traced once per set of activations."""
        key = ("copies", copied)
        cached = self._measure_functions.get(key)
        if cached is not None:
            return cached
        groups = {}
        for index, output_op, function in copied:
            groups.setdefault((output_op, function, self.copies[index].dtype), []).append(index)
        order = [index for members in groups.values() for index in members]
        copies = self.copies

        def statistics(*values):
            # The copies' values as arguments, not read by capture: `warm_up`
            # compiles the call on zeros of their shapes, not on the copies
            # the step writes meanwhile.
            value_of = dict(zip(order, values))
            blocks = []
            for (output_op, function, _), members in groups.items():
                blocks.append(stats.multi_activation_statistics(
                    [value_of[i] for i in members], [self.thresholds[i] for i in members], [-1] * len(members),
                    op_type=output_op, function=None if output_op else function,
                ))
            return tuple(_join_blocks(blocks))

        signature = [tf.TensorSpec([None, self.units[i]], copies[i].dtype) for i in order]
        jit = compiled(statistics, signature)
        # Traced here, in the step's context (`warm_up` runs it from another).
        jit.get_concrete_function()
        self._compiled_calls.append((jit, order))

        kind_of = {index: (output_op, function) for index, output_op, function in copied}

        def one_at_a_time():
            # Each copy by the per-activation statistics (one trace per kind).
            rows = []
            for index in order:
                copy = copies[index].value()
                output_op, function = kind_of[index]
                rows.append(self._measure_function(copy, self.thresholds[index], -1, function, output_op,
                                                   values=True)(copy))
            moments, active, low_high, counts = zip(*rows)
            return tf.stack(moments), tf.concat(active, axis=0), tf.stack(low_high), tf.stack(counts)

        # A numpy constant: a tensor made here would belong to the graph
        # tracing now, and the call serves later traces too.
        rows_of = np.asarray(order, np.int64)[:, None]
        n_units = int(sum(self.units[i] for i in order))

        def measure_and_empty(sample):
            def measure():
                rows = tf.stack([tf.raw_ops.VariableShape(input=copies[i].handle, out_type=tf.int64)
                                 for i in order])[:, 0]
                fits = tf.reduce_all(tf.equal(rows, tf.gather_nd(self._compiled_rows, rows_of)))

                def compiled_statistics():
                    values = jit(*[copies[i].value() for i in order])
                    with tf.control_dependencies(values):
                        self.compiled_steps.assign_add(1)
                    return tuple(tf.identity(v) for v in values)

                def uncompiled_statistics():
                    values = one_at_a_time()
                    with tf.control_dependencies(values):
                        self._observed_rows.scatter_nd_update(rows_of, rows)
                    return tuple(tf.identity(v) for v in values)

                return tf.cond(fits, compiled_statistics, uncompiled_statistics)

            def skipped():
                k = len(order)
                return (tf.zeros([k, stats.NUM_ACTIVATION_MOMENTS]), tf.zeros([n_units]), tf.zeros([k, 2]),
                        tf.zeros([k, metadata.HISTOGRAM_BUCKETS], tf.int32))

            values = tf.cond(sample, measure, skipped)
            with tf.control_dependencies(values):
                for i in order:
                    copies[i].assign(tf.zeros([0, self.units[i]], copies[i].dtype))
            return tuple(tf.identity(v) for v in values)

        cached = self._measure_functions[key] = (
            noinline(measure_and_empty, [tf.TensorSpec([], tf.bool)]), order)
        return cached

    def warm_up(self, observed_rows):
        """Host, after a sampled execution (`read`): the compiled calls not
        built yet whose activations all have a row count observed
        (`observed_rows`, per activation, -1 if none) are compiled for those
        counts on a thread of their own, from a graph as the step calls them
        (XLA's cache is shared that way; an eager call is compiled apart), on
        zeros of the copies' shapes; once one is built its row counts go to
        `_compiled_rows` and the steps that fit them run it. A call that
        fails to build (an activation with an op XLA has no kernel for) is
        never run: its steps stay uncompiled, with one warning (`_warn`)."""
        if self._warm_up_thread is not None and self._warm_up_thread.is_alive():
            return
        todo = [(jit, order) for jit, order in self._compiled_calls if all(observed_rows[i] >= 0 for i in order)]
        if not todo:
            return
        self._compiled_calls = [call for call in self._compiled_calls if call not in todo]
        calls = []
        for jit, order in todo:
            rows = [int(observed_rows[i]) for i in order]
            zeros = [tf.zeros([r, self.units[i]], self.copies[i].dtype) for r, i in zip(rows, order)]
            try:
                # Traced here, on the training thread (tracing is Python).
                calls.append((_graph_call(jit, zeros).get_concrete_function(), order, rows))
            except Exception as error:  # noqa: BLE001  (any failure: uncompiled)
                self._copies_warning = self._copies_warning or error

        def run():
            for concrete, order, rows in calls:
                try:
                    concrete()
                except Exception as error:  # noqa: BLE001  (any failure: uncompiled)
                    self._copies_warning = self._copies_warning or error
                    continue
                self._compiled_rows.scatter_nd_update(np.asarray(order, np.int64)[:, None], rows)

        # Not a daemon: training does not wait for it (not even at its end:
        # MobileNetV3Small's compile takes ~4 s on 2 CPU cores), but the
        # interpreter does before it exits, rather than stop it mid-compile.
        self._warm_up_thread = threading.Thread(target=run, name="tb_gradflow_compile", daemon=False)
        self._warm_up_thread.start()

    def finish_warm_up(self, wait=True):
        """Host: waits for `warm_up`'s thread if it still runs and `wait`
        (where a test needs the compiled call in place); warns if a compile
        failed."""
        if wait and self._warm_up_thread is not None:
            self._warm_up_thread.join()
        self._warn()

    def _warn(self):
        """On the training thread: one warning if a compiled call failed to build."""
        if self._copies_warning is not None and not self._copies_warned:
            self._copies_warned = True
            error = self._copies_warning
            warnings.warn(
                "tb_gradflow: the compiled activation statistics failed to build "
                f"({type(error).__name__}: {error}); computing them uncompiled instead",
                stacklevel=3,
            )

    def _measure_function(self, tensor, threshold, unit_axis, function, output_op, values=False):
        """The statistics of one activation tensor, as an isolated call traced
        once per kind of activation and tensor signature (rank, dtype), not
        once per layer or width: a model's many activations of one kind share
        a trace (each trace and its graph optimization cost start-up time)."""
        rank = tensor.shape.rank
        key = (output_op, function, float(threshold), unit_axis, rank, tensor.dtype, values)
        measure_fn = self._measure_functions.get(key)
        if measure_fn is not None:
            return measure_fn

        def measure_tensor(t):
            if output_op is not None:
                moments, active = stats.activation_statistics_from_output(output_op, t, threshold, unit_axis)
            else:
                moments, active = stats.activation_statistics(function, t, threshold, unit_axis)
            low, high = stats.finite_range([t])
            return moments, active, tf.stack([low, high]), stats.equal_width_counts([t], low, high)

        def measure_and_keep(t, sample, *handles):
            """measure_tensor(t) into the activation's variables (by handle) on sample steps."""
            for handle, value in zip(handles, measure_tensor(t)):
                old = tf.raw_ops.ReadVariableOp(resource=handle, dtype=value.dtype)
                tf.raw_ops.AssignVariableOp(resource=handle, value=tf.where(sample, value, old))

        measure_fn = measure_tensor
        if values and not self._inline:
            measure_fn = noinline(measure_tensor, input_signature=[tf.TensorSpec([None] * rank, tensor.dtype)]
                                  if rank else None)
        elif not self._inline:
            if not rank:
                measure_fn = noinline(measure_and_keep)
            else:
                measure_fn = noinline(
                    measure_and_keep,
                    input_signature=[tf.TensorSpec([None] * rank, tensor.dtype), tf.TensorSpec([], tf.bool)]
                    + [tf.TensorSpec([], tf.resource)] * 4,
                )
        self._measure_functions[key] = measure_fn
        return measure_fn

    def read_tensors(self):
        """In a tf.function: {name: value} of the state a read fetches, what `from_values` takes as numpy.

        The per-activation variables are stacked (the unit counts joined)
        on the device (under XLA they are kept stacked), so a read fetches
        five tensors whatever the number of activations: each fetched
        tensor is a host round trip on the training thread, and with the row
        writer's thread holding the GIL in between a few hundred of them
        cost tens of milliseconds a read."""
        out = {"step": self.step.read_value()}
        if not self.units:
            return out
        names = ("moments", "active", "histogram_range", "histogram_counts")
        if self.copies is not None:
            out["observed_rows"] = self._observed_rows.read_value()
        if self._stacked_state is not None:
            out.update((name, v.read_value()) for name, v in zip(names, self._stacked_state))
            return out
        for name, variables in zip(names, zip(*self._per_activation_state)):
            values = [v.read_value() for v in variables]
            out[name] = tf.concat(values, axis=0) if name == "active" else tf.stack(values)
        return out

    def from_values(self, values):
        """Host: the `aggregate.ActivationSnapshot` of `read_tensors`' values (numpy);
        row counts seen uncompiled go to `warm_up`."""
        values = {name: np.asarray(value) for name, value in values.items()}
        if "observed_rows" in values:
            self._warn()
            self.warm_up(values["observed_rows"])
        if not self.units:
            return aggregate.ActivationSnapshot(step=int(values["step"]), moments=[], active=[],
                                                histogram_range=[], histogram_counts=[])
        return aggregate.ActivationSnapshot(
            step=int(values["step"]),
            moments=list(values["moments"]),
            active=np.split(values["active"], np.cumsum(self.units)[:-1]),
            histogram_range=list(values["histogram_range"]),
            histogram_counts=list(values["histogram_counts"]),
        )

    def read(self):
        """Host: one read of everything, as an `aggregate.ActivationSnapshot` (`read_tensors`, `from_values`)."""
        if self._read_function is None:
            self._read_function = tf.function(self.read_tensors, autograph=False)
        return self.from_values({name: t.numpy() for name, t in self._read_function().items()})
