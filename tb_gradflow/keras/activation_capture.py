"""Activation statistics inside the real train step: wrap each layer's activation.

    >>> import keras
    >>> from tb_gradflow.keras import activation_capture
    >>> layer = keras.layers.Dense(3, activation="sigmoid")
    >>> info = activation_capture.probe(layer.activation)
    >>> info.elementwise, round(info.peak, 4), info.two_sided
    (True, 0.25, True)
    >>> activation_capture.probe(keras.activations.relu).two_sided
    False
    >>> activation_capture.probe(keras.activations.softmax).elementwise
    False

For every layer whose `activation` attribute is a non-linear callable (Dense,
Conv*, EinsumDense, `keras.layers.Activation`, custom layers that expose
one), `install` replaces the attribute on the instance with a wrapper that
returns `original(z)` unchanged and, while a train step made by
`sampling_train_step` is being traced, adds the statistics of the activation
(ActivationRecorder), kept on steps that are multiples of `activation_freq`.
They are read where reading changes nothing in the step (`read_point`): at
the output a when f' follows from a (ReLU, sigmoid, tanh, ...), at the input
z when z already has several readers, else not at all (the layer table says
why). The statistics come from the activations of the step
being trained: no extra forward pass. The callback runs that sampling train
function only on executions that hold a sample step and the gradient-only
train function on the others, so the steps in between run exactly the graph
they would run without activation statistics. Activation layers of the
ReLU, LeakyReLU and ELU classes (no `activation` attribute, the function is
their `call`) are wrapped at `call`.

Not visible to this capture: activations applied as plain functions inside a
subclassed model's `call` (`keras.ops.relu(x)`): there is no layer to wrap.
Use an `Activation` layer or a layer's `activation` argument for them.
"""

import contextlib
import dataclasses
import inspect
import json
import threading

import numpy as np
import tensorflow as tf

from tb_gradflow.keras import patching

# Probe grid of the activation's derivative: its peak and whether it
# vanishes at both ends.
PROBE_LOW, PROBE_HIGH, PROBE_POINTS = -30.0, 30.0, 60001

# The elementwise test of `probe`: inputs in no sorted order (on sorted ones
# a sort along an axis is the identity) and generic weights (no two equal).
_PROBE_INPUT = np.random.default_rng(1).permutation(np.linspace(-3.0, 3.0, 12)).reshape(3, 4).astype(np.float32)
_PROBE_WEIGHTS = np.random.default_rng(0).uniform(0.5, 2.0, (3, 4)).astype(np.float32)
_EPSILON = {tf.float16: 2.0**-10, tf.bfloat16: 2.0**-7}

# Activation layers whose function is `call` itself (elementwise on the input).
CALL_ACTIVATION_CLASSES = ("ReLU", "LeakyReLU", "ELU")

IN_STEP = "in-step"


@dataclasses.dataclass
class ProbeResult:
    elementwise: bool
    peak: float  # max |f'(z)| over the probe grid
    two_sided: bool  # |f'| below the saturation threshold at both ends of the grid
    error: str = ""


def probe(function, saturation_derivative=0.0591):
    """What the activation is like, measured on the function itself (eagerly, once)."""
    try:
        x = tf.constant(_PROBE_INPUT)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = function(x)
            if tuple(y.shape) != (3, 4):
                return ProbeResult(False, float("nan"), False)
            plain_sum, weighted_sum = tf.reduce_sum(y), tf.reduce_sum(_PROBE_WEIGHTS * y)
        # Elementwise means a diagonal Jacobian J, and then the gradient of
        # sum(w * y) is w times that of sum(y) (J^T w = w * J^T 1); for
        # generic weights w a J with an off-diagonal entry breaks that (a
        # softmax's J^T 1 is 0, its J^T w is not). Two backward passes, not
        # the twelve of the whole Jacobian (a third of a fit's start-up on a
        # small MLP went to them).
        gradients = [tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO).numpy()
                     for total in (plain_sum, weighted_sum)]
        expected = _PROBE_WEIGHTS * gradients[0].astype(np.float32)
        # w * f' rounds once more in the function's dtype (a float16 output's
        # gradients carry 3 significant digits); an off-diagonal entry moves
        # it by the order of the values.
        relative = max(1e-5, 16 * _EPSILON.get(y.dtype, 2.0**-23))
        tolerance = relative * np.max(np.abs(expected), initial=0.0)
        if not np.all(np.abs(gradients[1].astype(np.float32) - expected) <= tolerance):
            return ProbeResult(False, float("nan"), False)
        grid = tf.linspace(PROBE_LOW, PROBE_HIGH, PROBE_POINTS)
        with tf.GradientTape() as tape:
            tape.watch(grid)
            y = function(grid)
        d = np.abs(np.asarray(tape.gradient(y, grid, unconnected_gradients=tf.UnconnectedGradients.ZERO)))
    except Exception as e:  # A callable that rejects plain float tensors.
        return ProbeResult(False, float("nan"), False, error=f"{type(e).__name__}: {e}")
    d = d[np.isfinite(d)]
    if d.size == 0 or d.max() <= 0:
        return ProbeResult(True, 0.0, False, error="its derivative is zero everywhere")
    peak = float(d.max())
    threshold = saturation_derivative * peak
    return ProbeResult(True, peak, bool(d[0] < threshold and d[-1] < threshold))


READ_INPUT, READ_OUTPUT = "input", "output"


def read_point(function):
    """Where the activation's statistics can be read without changing the step.

    Returns (read, output_op, reason): read is READ_OUTPUT (the output a of
    a single `stats.OUTPUT_DERIVATIVES` op applied to z), READ_INPUT (z
    already feeds more than one op, in the activation or its gradient) or
    None (not capturable without changing the step; `reason` says why).

    TensorFlow's graph optimizer (with oneDNN, and XLA's CPU backend) fuses
    MatMul/Conv + BiasAdd + activation into one kernel only when z has no
    other consumer, and the fused kernel's arithmetic differs (a fused ReLU
    even turns NaN into 0). One more reader of such a z would change the
    training run; a z that already has several readers, or the output a
    (which the activation's own gradient reads), can be read freely. The
    answer comes from the activation's own graph, traced once on a
    placeholder, with its gradient.
    """
    graph = tf.Graph()
    try:
        with graph.as_default():
            z = tf.compat.v1.placeholder(tf.float32, [4, 3])
            a = function(z)
            if not isinstance(a, tf.Tensor) or a.graph is not graph:
                return None, None, "its output is not a tensor of the step"
            tf.gradients(a, z, grad_ys=tf.ones_like(a))
            readers = sum(1 for op in graph.get_operations() for t in op.inputs if t is z)
    except Exception as e:  # A callable that does not take a graph tensor.
        return None, None, f"tracing it failed ({type(e).__name__}: {e})"
    from tb_gradflow import stats

    if a.op.type in stats.OUTPUT_DERIVATIVES and len(a.op.inputs) == 1 and a.op.inputs[0] is z:
        return READ_OUTPUT, a.op.type, ""
    if readers >= 2:
        return READ_INPUT, None, ""
    return None, None, (
        "its input z feeds one op only, which the graph optimizer may fuse into the layer's kernel, "
        "and its derivative does not follow from its output; reading z would change the training arithmetic"
    )


def _function_name(function):
    return getattr(function, "__name__", None) or type(function).__name__


def _unit_axis(layer):
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def _units(layer, unit_axis):
    """Size of the activation's unit axis, known before the step is traced; None if not."""
    for attribute in ("units", "filters"):
        value = getattr(layer, attribute, None)
        if isinstance(value, (int, np.integer)) and value > 0 and type(layer).__name__ != "Activation":
            return int(value)
    try:
        shape = layer.output.shape
        if shape[unit_axis] is not None:
            return int(shape[unit_axis])
    except Exception:  # Never called symbolically (subclassed models).
        pass
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        try:
            shape = layer.compute_output_shape(next(iter(shapes.values())))
            if shape[unit_axis] is not None:
                return int(shape[unit_axis])
        except Exception:
            pass
    return None


def _discover_units(model, pending):
    """{id(layer): units} for layers whose unit count is not known statically
    (layers of subclassed models): one symbolic call of the model, in a
    scratch graph (nothing runs, no state changes), recording the shape each
    activation receives."""
    if not pending:
        return {}
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) != 1:
        return {}
    import keras

    found, saved = {}, []

    def recording(layer, attribute, original):
        def record(z, *args, **kwargs):
            shape = getattr(z, "shape", None)
            if shape is not None and len(shape) and id(layer) not in found:
                axis = _unit_axis(layer)
                if shape[axis] is not None:
                    found[id(layer)] = int(shape[axis])
            return original(z, *args, **kwargs)

        return record

    for layer, attribute in pending:
        saved.append((layer, attribute, attribute in layer.__dict__, layer.__dict__.get(attribute)))
        setattr(layer, attribute, recording(layer, attribute, getattr(layer, attribute)))
    try:
        shape = tuple(next(iter(shapes.values())))
        model.compute_output_spec(keras.KerasTensor(shape, dtype=getattr(model, "input_dtype", "float32")))
    except Exception:  # No symbolic call possible: those layers stay "not captured".
        pass
    finally:
        for layer, attribute, had_own, own in saved:
            if had_own:
                setattr(layer, attribute, own)
            else:
                layer.__dict__.pop(attribute, None)
    return found


def _recurrent_layers(model):
    """{id(layer): name of the RNN layer it runs in}, for RNN layers and their cells."""
    import keras

    inside = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.RNN):
            for sub in layer._flatten_layers(include_self=True, recursive=True):
                inside.setdefault(id(sub), layer.name)
    return inside


def _why_not_wrappable(layer, attribute, inside_rnn):
    """Why `layer.<attribute>` cannot be wrapped in the train step, or ""."""
    if id(layer) in inside_rnn:
        return (
            f"it runs inside the recurrent loop of {inside_rnn[id(layer)]!r}, once per time step "
            "(the cell's activations are not wrapped)"
        )
    declared = getattr(type(layer), attribute, None)
    if isinstance(declared, property) and declared.fset is None:
        return f"{attribute} is a read-only property of {type(layer).__name__}"
    return ""


@dataclasses.dataclass
class Captured:
    layer: object
    attribute: str  # "activation" or "call"
    had_own: bool  # the attribute was in the instance __dict__ before
    original: object
    units: int
    unit_axis: int
    probe: ProbeResult
    index: int = -1  # recorder slot; -1 when not captured
    status: str = ""
    name: str = ""  # the activation's name, for the layer table
    read: str = ""  # READ_INPUT or READ_OUTPUT once captured
    output_op: str = ""  # with READ_OUTPUT: the op type that computes a from z
    recorded: bool = False  # the sampling trace reached it
    # What the recorder measures z with (READ_INPUT): the first activation
    # that behaves the same (`_sharing_key`), so their statistics share a trace.
    measured_function: object = None


def _sharing_key(layer, attribute, function):
    """A key equal for activations that compute the same function of z, or
    None: probed, checked and traced once per key, not once per layer.

    A plain function (keras.activations.relu) is its own key. A layer's own
    `call` (ReLU, LeakyReLU, ...) shares only with layers of its class and
    configuration that hold no weights (PReLU's slopes are weights: each
    keeps its own).
    """
    if attribute == "activation":
        return ("function", function) if inspect.isfunction(function) or inspect.isbuiltin(function) else None
    if getattr(layer, "weights", None):
        return None
    try:
        config = dict(layer.get_config())
        config.pop("name", None)
        return ("call", type(layer), json.dumps(config, sort_keys=True, default=repr))
    except Exception:  # A custom layer without a serializable config.
        return None


def candidates(model):
    """Layers with a non-linear activation, model order (nested layers included)."""
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        activation = getattr(layer, "activation", None)
        if callable(activation) and not isinstance(activation, type):
            if _function_name(activation) != "linear":
                out.append((layer, "activation"))
        elif type(layer).__name__ in CALL_ACTIVATION_CLASSES:
            out.append((layer, "call"))
    return out


class ActivationCapture:
    """Finds, probes and wraps the activations of a model; `restore()` undoes it.

    Args:
      model: the Keras model.
      saturation_derivative: rules.Thresholds.saturation_derivative.

    After construction, `captured` lists every candidate layer with its
    status ("in-step" or "not captured: <why>"); `units` and `thresholds`
    (for ActivationRecorder) cover the in-step ones, in recorder order.
    """

    def __init__(self, model, saturation_derivative):
        self.captured = []
        self._tracing = 0
        self._lock = threading.Lock()
        self._recorder = None
        found = candidates(model)
        discovered = _discover_units(model, [(layer, attribute) for layer, attribute in found
                                             if _units(layer, _unit_axis(layer)) is None])
        inside_rnn = _recurrent_layers(model)
        shared = {}  # sharing key -> (probe result, read point, function measured)
        for layer, attribute in found:
            function = getattr(layer, attribute)
            unit_axis = _unit_axis(layer)
            blocked = _why_not_wrappable(layer, attribute, inside_rnn)
            if blocked:
                entry = Captured(layer, attribute, False, None, 0, unit_axis, ProbeResult(False, float("nan"), False))
                entry.name = _function_name(function) if attribute == "activation" else type(layer).__name__.lower()
                entry.status = f"not captured: {blocked}"
                self.captured.append(entry)
                continue
            key = _sharing_key(layer, attribute, function)
            known = shared.get(key) if key is not None else None
            if known is None:
                result = probe(function, saturation_derivative)
                point = read_point(function) if result.elementwise and not result.error else (None, None, "")
                known = (result, point, function)
                if key is not None:
                    shared[key] = known
            result, (read, output_op, why), measured = known
            entry = Captured(layer, attribute, attribute in layer.__dict__, layer.__dict__.get(attribute), 0, unit_axis, result)
            entry.measured_function = measured
            name = _function_name(function) if attribute == "activation" else type(layer).__name__.lower()
            entry.name = name
            units = _units(layer, unit_axis) or discovered.get(id(layer))
            if result.error:
                entry.status = f"not captured: probing {name} failed ({result.error})"
            elif not result.elementwise:
                entry.status = f"not captured: {name} is not elementwise (saturation needs a per-element derivative)"
            elif units is None:
                entry.status = "not captured: the number of units is unknown before the step is traced"
            elif read is None:
                entry.status = f"not captured: {why}"
            else:
                entry.read, entry.output_op = read, output_op or ""
                entry.units = units
                entry.index = sum(1 for c in self.captured if c.index >= 0)
                entry.status = IN_STEP
            self.captured.append(entry)
        self.units = [c.units for c in self.captured if c.index >= 0]
        self.thresholds = [saturation_derivative * c.probe.peak for c in self.captured if c.index >= 0]
        # The dtype the step computes each activation in (its copy's, see
        # ActivationRecorder); a tensor of another dtype is measured apart.
        self.dtypes = [getattr(c.layer, "compute_dtype", None) or "float32" for c in self.captured if c.index >= 0]
        self._installed = False

    def by_layer(self):
        return {id(c.layer): c for c in self.captured}

    def install(self, recorder, step_fn):
        """Wraps the captured activations; `step_fn()` gives, in the step, the
        number of the train step whose forward pass is running. A layer whose
        attribute cannot be replaced is marked "not captured" with the reason."""
        self._patches = []
        self._recorder = recorder
        for entry in self.captured:
            if entry.index < 0:
                continue
            try:
                patch = patching.wrap(
                    entry.layer, entry.attribute,
                    lambda inner, entry=entry: self._wrapper(entry, inner, recorder, step_fn),
                )
            except Exception as e:  # A read-only property, a frozen custom layer.
                entry.status = f"not captured: its {entry.attribute} cannot be wrapped ({type(e).__name__}: {e})"
                continue
            self._patches.append(patch)
        self._installed = True

    def _wrapper(self, entry, original, recorder, step_fn):
        capture = self

        def capturing(z, *args, **kwargs):
            out = original(z, *args, **kwargs)
            # Only in the train step (not in evaluate/predict functions traced
            # while the wrapper is in place), and only on real tensors.
            if capture._tracing > 0 and isinstance(z, tf.Tensor) and not args and not kwargs:
                if z.shape.rank is None or z.shape[entry.unit_axis] != entry.units:
                    entry.status = (
                        f"not captured: the activation's input has {z.shape[entry.unit_axis] if z.shape.rank else '?'} "
                        f"units, {entry.units} expected"
                    )
                else:
                    if entry.read == READ_OUTPUT and not (
                        isinstance(out, tf.Tensor) and out.op.type == entry.output_op and out.op.inputs[0] is z
                    ):
                        entry.status = "not captured: in the step its output is not the op it was probed to be"
                    elif entry.read == READ_OUTPUT:
                        entry.recorded = True
                        recorder.record(entry.index, out, step_fn(), entry.unit_axis, output_op=entry.output_op)
                    else:
                        entry.recorded = True
                        # `out` is f(z) also when another activation's
                        # function is measured: they share it by computing
                        # the same function of z (`_sharing_key`).
                        recorder.record(entry.index, z, step_fn(), entry.unit_axis,
                                        function=entry.measured_function or original, output=out)
            return out

        return capturing


    def settle(self):
        """After the sampling step is traced: an activation the trace never
        reached (not called in the train step, or only with arguments the
        capture does not read) delivers no data, and its row says so."""
        for entry in self.captured:
            if entry.status == IN_STEP and not entry.recorded:
                entry.status = "not captured: it was not called on a tensor in the train step"

    def sampling_train_step(self, train_step):
        """`train_step` with the activation wrappers live while it traces.

        The callback traces two train functions: the gradient-only one from
        `train_step`, which runs on the steps in between, and one from this
        wrapper, which runs only on executions that hold a sample step. The
        wrappers add their ops to the second one only, so the steps in
        between run the gradient-only graph unchanged.
        """
        capture = self

        def sampling_train_step(*args, **kwargs):
            # A counter, not a flag: MirroredStrategy traces the replicas'
            # steps in concurrent threads.
            with capture._lock:
                capture._tracing += 1
            try:
                # Under XLA the step's activations are measured together at
                # its end (ActivationRecorder.stacked).
                with capture._recorder.stacked() if capture._recorder is not None else contextlib.nullcontext():
                    return train_step(*args, **kwargs)
            finally:
                with capture._lock:
                    capture._tracing -= 1

        return sampling_train_step

    def restore(self):
        """Puts every wrapped attribute back; safe to call twice."""
        for patch in getattr(self, "_patches", []):
            patch.remove()
        self._patches = []
        self._installed = False
