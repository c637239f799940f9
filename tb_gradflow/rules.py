"""Alert rules: the one place that decides every alert (gradients and activations).

    >>> import numpy as np
    >>> from tb_gradflow import rules
    >>> stats = {"grad_rms": np.array([1e-5, 5e-2, 1e-1]),
    ...          "grad_norm": np.array([1e-4, 1e-1, 1.0]),
    ...          "grad_norm_interval_max": np.array([1e-4, 1e-1, 1.0]),
    ...          "nonfinite_count": np.array([0.0, 0.0, 0.0]),
    ...          "backward_signal": np.array([2e-6, 3e-3, 1e-1])}
    >>> t = rules.Thresholds(vanishing_patience=1)
    >>> row = rules.evaluate_step(stats, has_gradient=np.ones(3, bool), history=[], thresholds=t)
    >>> row["vanishing"].fired.tolist()
    [True, True, False]

Every function here is pure (numpy in, numpy out). Each rule has one
implementation, over a run's rows (`evaluate_series`,
`evaluate_activation_series`); the training hook's per-row verdicts
(`evaluate_step`, `evaluate_activation_step`) are the last row of it over the
rows it keeps. The plugin and `tb-gradflow check` evaluate what they read
back, with the thresholds the hook recorded in the layer table. Same code,
same inputs: they cannot disagree. benchmarks/bench_diagnosis.py scores the
rules on labelled healthy and sick networks (README, "Alerts").

Where each default comes from:

* Vanishing compares the *backward signal* of each layer: the gradient RMS
  of its bias or normalisation beta, dL/d(shift of each output unit), which
  is Nielsen's measure of how fast a layer learns (dC/db = delta, "Neural
  Networks and Deep Learning", ch. 5) and means the same in a Dense, a
  convolution, a recurrent cell or a LayerNormalization. Weight gradients do
  not: they are the layer's input times that signal, so a net whose forward
  activations shrink (weights initialised too small, a squashing activation)
  has weight gradients of similar size in every layer while its backward
  signal decays a hundredfold per few layers. Layers without such a variable
  (embeddings, convolutions without bias, LayerScale) have no signal of
  their own; attention's query and key biases are left out because a
  softmax ignores a common shift (the key bias gets no gradient at all).
  Runs logged without per-variable statistics use each layer's gradient RMS.
* `vanishing_relative_signal = 0.05`: a layer whose signal is 20x below
  the largest signal of the layers after it, closer to the output, *and* so
  is every layer before it, each one's signal growing towards the next: the
  signal has faded layer by layer from the input up to it. Vanishing is
  directional (Glorot & Bengio 2010, Bradley 2009: gradients shrink as they
  travel towards the input); a quiet layer behind a healthy first layer (a
  squeeze-excite bottleneck, a branch behind a LayerScale of 1e-6, a
  zero-initialised residual branch) is structure. Nielsen measures about
  4.6x less signal per sigmoid layer ("roughly 100 times slower" over three),
  so 20x is two layers of that decay. The benchmark's healthy networks keep
  their first signal above 0.1 of the output side's, except small CNNs whose
  early convolutions sit at 0.02-0.07 of the classifier's without the signal
  growing in between (the growth condition tells them apart); its sick ones
  are at 1e-5-1e-6, and seed 001's sigmoid MLP, which learns nothing in 30
  epochs, at 0.035 growing through every layer.
* `vanishing_min_layers = 2`: the faded region spans at least two layers
  with a signal. A fade is a trend; a single low layer at the input is not
  one (DenseNet121's stem BatchNormalization sits at 1/100 of the output
  side's signal, its beta gradient summing signed deltas over 16x16
  positions, while the next layer is at 1/4).
* A layer with trainable weights that gets no gradient, or one exactly zero,
  on `vanishing_patience` rows is vanishing too (value 0): a layer detached
  from the loss by mistake, or a layer whose units all died.
* `vanishing_patience = 3`: the condition must hold on 3 consecutive logged
  steps (SageMaker Debugger rules use the same idea, "patience"), so a single
  quiet batch does not alert.
* `exploding_growth = 100`: the largest gradient norm a layer had since the last
  write is 100x the median of its own last `exploding_window` (20) logged norms,
  once `exploding_min_history` (5) norms exist. Relative to the layer's own
  history because healthy absolute norms differ by orders of magnitude between
  models; 100x mirrors the vanishing factor.
* non-finite: any NaN or Inf gradient element (SageMaker ExplodingTensor with
  only_nan=False). Counted, never stripped: a hook that drops them hides the bug.
  Under a dynamic loss scale (mixed precision) a row is an alert only once
  the scale is down to `nonfinite_loss_scale_floor` = 1: Keras'
  LossScaleOptimizer starts at 2**15, skips a step that overflows and halves
  the scale, so overflows at the start are it finding its level; a
  non-finite gradient that persists brings the scale to 1 within ~15 steps.

Activation rules (rows every `activation_freq` steps, `evaluate_activation_*`):

* `saturation_derivative = 0.0591`: a unit's activation on one sample is
  saturated when |f'(z)| < 0.0591 x the activation's peak |f'| (measured on the
  function itself, so custom activations work like built-in ones). For tanh
  (peak 1) this is exactly Karpathy's |tanh(z)| > 0.97 (1 - 0.97^2 = 0.0591,
  makemore part 3); for sigmoid it is |z| > 4.2 (outputs below 0.015 or above
  0.985). Relative to the peak, because sigmoid's derivative never exceeds 0.25
  and scaled swish's is 1.65: an absolute bound would call a healthy sigmoid
  half-saturated. SageMaker Debugger's SaturatedActivation bounds (tanh
  |z| > 9.5, sigmoid z < -23 or > 17, from a vanishing-gradient threshold of
  1e-7) flag only units that are already numerically dead; the dead-unit rule
  covers those. Applied on the device (a measurement parameter), recorded here.
* `saturation_layer_fraction = 0.5` on `saturation_patience = 3` consecutive
  activation rows: more than half of a layer's unit activations saturated
  (SageMaker Debugger's threshold_layer = 50%), sustained like the vanishing
  rule. Only for two-sided activations (the derivative vanishes on both sides:
  sigmoid, tanh, exp(-z^2)), as SageMaker applies it to tanh/sigmoid only:
  half of a healthy ReLU layer's inputs are negative by design (one-sided
  saturation, seed 002), and a ReLU that stays there is a dead unit.
* `dead_inactivity = 0.01`, `dead_window = 10`: a unit is inactive when
  f'(z) != 0 on fewer than 1% of its activations over the last 10 activation
  rows (SageMaker Debugger's DeadRelu threshold_inactivity = 1%). Measured by
  the writer, which sees every row; recorded here. The rule waits until the
  window holds 10 rows: over one or two batches a unit of a small layer (a
  squeeze-excite bottleneck of 4 units) can be silent without being dead.
* `dead_layer_fraction = 0.5`: the dead-unit alert fires when more than 50% of
  a layer's units are inactive (DeadRelu's threshold_layer = 50%; CS231n: "as
  much as 40% of your network can be dead" with a too-high learning rate). No
  patience: the window already spans 10 rows.
"""

import contextlib
import dataclasses
import functools
import math
import warnings

import numpy as np

VANISHING = "vanishing"
EXPLODING = "exploding"
NONFINITE = "nonfinite"
SATURATION = "saturation"
DEAD_UNITS = "dead_units"
GRADIENT_KINDS = (VANISHING, EXPLODING, NONFINITE)
ACTIVATION_KINDS = (SATURATION, DEAD_UNITS)
KINDS = GRADIENT_KINDS + ACTIVATION_KINDS

# For each kind, whether a larger value is worse (exploding growth, NaN count)
# or a smaller one (vanishing: relative RMS).
LARGER_IS_WORSE = {VANISHING: False, EXPLODING: True, NONFINITE: True, SATURATION: True, DEAD_UNITS: True}

# What each kind's value means, for tables and docs.
VALUE_MEANING = {
    VANISHING: "backward signal (bias gradient RMS) relative to the largest of the layers after it; 0: no gradient",
    EXPLODING: "interval-max gradient norm over the median of the layer's recent norms",
    NONFINITE: "NaN/Inf gradient elements since the previous write",
    SATURATION: "share of the layer's unit activations with a saturated derivative",
    DEAD_UNITS: "share of the layer's units active on less than 1% of a window",
}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; every field is documented in this module's docstring.

    >>> Thresholds(vanishing_relative_signal=1e-3).vanishing_relative_signal
    0.001
    """

    vanishing_relative_signal: float = 0.05
    vanishing_min_layers: int = 2
    vanishing_patience: int = 3
    exploding_growth: float = 100.0
    exploding_window: int = 20
    exploding_min_history: int = 5
    saturation_derivative: float = 0.0591
    saturation_layer_fraction: float = 0.5
    saturation_patience: int = 3
    dead_inactivity: float = 0.01
    dead_window: int = 10
    dead_layer_fraction: float = 0.5
    nonfinite_loss_scale_floor: float = 1.0

    def __post_init__(self):
        def positive(name):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"threshold {name} must be a finite number > 0, got {value!r}")

        for name in ("vanishing_relative_signal", "exploding_growth", "nonfinite_loss_scale_floor"):
            positive(name)
        if not self.vanishing_relative_signal < 1:
            raise ValueError(
                f"threshold vanishing_relative_signal must be < 1, got {self.vanishing_relative_signal!r}"
            )
        for name in ("saturation_derivative", "saturation_layer_fraction", "dead_inactivity", "dead_layer_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1):
                raise ValueError(f"threshold {name} must be a number in (0, 1), got {value!r}")
        for name in ("exploding_window", "exploding_min_history", "vanishing_patience", "saturation_patience",
                     "dead_window", "vanishing_min_layers"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"threshold {name} must be an integer >= 1, got {value!r}")
        if self.exploding_min_history > self.exploding_window:
            raise ValueError(
                "threshold exploding_min_history must be <= exploding_window, got "
                f"{self.exploding_min_history} > {self.exploding_window}"
            )

    @property
    def history_length(self):
        """How many previous logged steps `evaluate_step` needs."""
        return max(self.exploding_window, self.vanishing_patience - 1)

    @property
    def activation_history_length(self):
        """How many previous activation rows `evaluate_activation_step` needs."""
        return max(self.saturation_patience - 1, self.dead_window - 1, 0)

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values):
        """Builds thresholds from a (possibly partial) mapping; unknown keys are ignored
        so that data from a newer writer with more rules still reads."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = values[f.name]
                kwargs[f.name] = int(value) if f.type in (int, "int") else float(value)
        return cls(**kwargs)


DEFAULT_THRESHOLDS = Thresholds()


@dataclasses.dataclass
class StepVerdict:
    """One kind's verdict for every layer at one logged step."""

    fired: np.ndarray  # bool [n_layers]
    value: np.ndarray  # float [n_layers], NaN where the rule has no value


class FiredValues:
    """float [n_rows, n_layers]: NaN except at the cells where a rule fired.

    The values `evaluate_series_fired` gives for the vanishing and exploding
    rules, stored as the fired cells only. Alerts are rare (134 fired cells
    in a synthetic 300-layer x 10,000-step run with a fade), and a dense NaN
    matrix of that run is 24 MB of fresh memory per kind per cold request:
    most of an /alert_cells request's time on a machine where new pages are
    slow. Indexing gives what indexing the dense matrix gives, for any key
    numpy accepts; `np.asarray` builds the dense matrix.

    >>> v = FiredValues((2, 3), cells=[4], values=[0.5])
    >>> v[1].tolist(), float(v[1, 1]), np.isnan(v[0, 0])
    ([nan, 0.5, nan], 0.5, np.True_)
    >>> np.asarray(v)[1, 1], v[[1, 1], [0, 1]].tolist()
    (np.float64(0.5), [nan, 0.5])
    """

    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, shape, cells=(), values=()):
        """cells: sorted flat (row-major) indices of the fired cells; values: theirs."""
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 2:
            raise ValueError(f"FiredValues is [n_rows, n_layers], got shape {self.shape}")
        self.cells = np.asarray(cells, np.int64)
        self.values = np.asarray(values, np.float64)
        if self.cells.shape != self.values.shape or self.cells.ndim != 1:
            raise ValueError(f"cells {self.cells.shape} and values {self.values.shape} must be two 1-D arrays of one length")

    @classmethod
    def at(cls, shape, rows, layers, values):
        """From the (rows, layers) of the fired cells in row-major order (np.nonzero's)."""
        return cls(shape, np.asarray(rows, np.int64) * shape[1] + np.asarray(layers, np.int64), values)

    @property
    def size(self):
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self):
        return self.cells.nbytes + self.values.nbytes

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"FiredValues(shape={self.shape}, fired cells={self.cells.size})"

    def __array__(self, dtype=None, copy=None):
        dense = np.full(self.shape, np.nan)
        dense.flat[self.cells] = self.values
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def __getitem__(self, key):
        n_rows, n_layers = self.shape
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)) and -n_rows <= key < n_rows:
            # One whole row (the logger takes the last row at every step): its
            # cells are one run of the sorted cells, found by two bisections
            # (a few us; the general path below builds two index grids).
            start = (int(key) % n_rows) * n_layers
            low, high = np.searchsorted(self.cells, (start, start + n_layers))
            row = np.full(n_layers, np.nan)
            row[self.cells[low:high] - start] = self.values[low:high]
            return row
        # The row and layer of each selected cell, by indexing zero-stride views
        # of the two coordinate ranges with the key itself (numpy's own
        # semantics, and memory for the selection only).
        rows = np.broadcast_to(np.arange(n_rows)[:, None], self.shape)[key]
        layers = np.broadcast_to(np.arange(n_layers)[None, :], self.shape)[key]
        flat = np.asarray(rows, np.int64) * n_layers + layers
        if self.cells.size == 0:
            return np.full(flat.shape, np.nan)[()]
        at = np.minimum(np.searchsorted(self.cells, flat), self.cells.size - 1)
        return np.where(self.cells[at] == flat, self.values[at], np.nan)[()]


# --------------------------------------------------------------- the backward signal
# The leaf names of the variables whose gradient is the backward signal at a
# layer's output: a bias (Dense, Conv, recurrent cells, EinsumDense) or a
# normalisation's beta. Their gradient is dL/d(shift of each output unit),
# summed over the batch and positions: Nielsen's measure of how fast a layer
# learns (dC/db = delta), and one that means the same in every layer kind.
SIGNAL_VARIABLES = ("bias", "beta")
# Attention's query and key projections: a softmax does not change when all
# its logits shift together, so the key bias gets no gradient at all and the
# query bias almost none, whatever the network's health.
_SHIFT_INVARIANT_LAYERS = ("query", "key", "_query_dense", "_key_dense", "query_dense", "key_dense")


def signal_variables(variable_names, layer_of_variable, layer_names):
    """Per layer, the index of the variable carrying its backward signal (-1: none).

    >>> signal_variables(["d/kernel", "d/bias", "bn/gamma", "bn/beta", "mha/key/bias"],
    ...                  [0, 0, 1, 1, 2], ["d", "bn", "mha/key"]).tolist()
    [1, 3, -1]
    """
    index = np.full(len(layer_names), -1, np.int64)
    for i, (name, layer) in enumerate(zip(variable_names, layer_of_variable)):
        leaf = str(name).rsplit("/", 1)[-1].split(":")[0]
        layer_leaf = str(layer_names[layer]).rsplit("/", 1)[-1]
        if leaf in SIGNAL_VARIABLES and index[layer] < 0 and layer_leaf not in _SHIFT_INVARIANT_LAYERS:
            index[layer] = i
    return index


def layers_with_variables(layer_of_variable, n_layers):
    """bool [n_layers]: the layers owning a recorded (trainable) variable; the
    others (frozen layers, bare Activation rows) have no gradient to miss."""
    mask = np.zeros(n_layers, bool)
    mask[np.asarray(layer_of_variable, np.int64)] = True
    return mask


def backward_signal(variable_rms, signal_index, layer_rms=None):
    """[..., n_layers] gradient RMS of each layer's signal variable, NaN where it has none.

    Runs logged without per-variable statistics (`variable_rms` None: older
    runs, writers of per-layer statistics only) use each layer's gradient
    RMS instead. Float32 statistics stay float32 (picking is exact; the rules
    widen where they compute).
    """
    signal_index = np.asarray(signal_index, np.int64)
    if variable_rms is None:
        return _stored_float(layer_rms)
    variable_rms = _stored_float(variable_rms)
    picked = np.take(variable_rms, np.maximum(signal_index, 0), axis=-1)
    return np.where(signal_index >= 0, picked, np.nan)


def _vanishing_rows(signal, grad_norm, nonfinite_count, has_gradient, has_parameters, thresholds):
    """(condition, relative) per row [..., n_layers], before patience.

    relative: the layer's backward signal over the largest signal of the
    layers after it (closer to the output). A layer is vanishing when its
    relative signal is below `vanishing_relative_signal` and so is that of
    every layer before it: the signal has faded all the way from the input
    up to it. A small signal in the middle of a network whose input layers
    still get theirs (a squeeze-excite bottleneck, a branch behind a
    LayerScale or a zero-initialised residual branch) is structure, not a
    vanishing gradient. A layer that gets no gradient at all (none, or
    exactly zero) is vanishing too, with relative value 0.
    """
    signal = np.asarray(signal, np.float64)
    usable = np.isfinite(signal)
    masked = np.where(usable, signal, -np.inf)
    after = np.maximum.accumulate(masked[..., ::-1], axis=-1)[..., ::-1]
    after = np.concatenate([after[..., 1:], np.full(after.shape[:-1] + (1,), -np.inf)], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(usable & (after > 0), signal / np.where(after > 0, after, 1.0), np.nan)
    # The signal must also grow from each layer to the next one that has a
    # signal: a fade builds up layer by layer. (A CNN's early signals can sit
    # 1/30 below its classifier's without growing in between: healthy.)
    n = signal.shape[-1]
    position = np.where(usable, np.arange(n), n)
    following = np.minimum.accumulate(position[..., ::-1], axis=-1)[..., ::-1]
    following = np.concatenate([following[..., 1:], np.full(following.shape[:-1] + (1,), n)], axis=-1)
    padded = np.concatenate([signal, np.full(signal.shape[:-1] + (1,), np.inf)], axis=-1)
    grows = np.take_along_axis(padded, following, axis=-1) >= signal
    low = usable & grows & (np.nan_to_num(relative, nan=np.inf) < thresholds.vanishing_relative_signal)
    # A usable layer that is not low ends the faded region for every layer after it.
    healthy_before = np.logical_or.accumulate(usable & ~low, axis=-1)
    faded = low & ~healthy_before
    # A fade is a trend over layers: one low layer at the input (a CNN's stem
    # normalisation, whose beta gradient sums signed deltas over every
    # position) is not one.
    faded &= np.sum(faded, axis=-1, keepdims=True) >= thresholds.vanishing_min_layers
    # (A norm of 0 over the finite elements of an all-NaN gradient is the
    # non-finite rule's, not a missing gradient.)
    zero = (np.asarray(grad_norm, np.float64) == 0) & (np.asarray(nonfinite_count, np.float64) == 0)
    no_gradient = np.asarray(has_parameters, bool) & (~np.asarray(has_gradient, bool) | zero)
    condition = faded | no_gradient
    relative = np.where(no_gradient, 0.0, relative)
    return condition, relative


def _no_gradient(grad_norm, nonfinite_count, has_gradient, has_parameters):
    """bool [n_rows, n_layers]: layers with variables that got no gradient, or one exactly zero."""
    grad_norm = _stored_float(grad_norm)
    no_gradient = np.zeros(grad_norm.shape, bool)
    has_gradient = np.asarray(has_gradient, bool)
    has_parameters = np.asarray(has_parameters, bool)
    no_gradient[:, has_parameters & ~has_gradient] = True
    watched = np.flatnonzero(has_parameters & has_gradient)
    if watched.size:
        zero = grad_norm == 0
        if zero.any():  # (a norm of 0 over the finite elements of an all-NaN gradient is not a missing gradient)
            zero &= _stored_float(nonfinite_count) == 0
            no_gradient[:, watched] |= zero[:, watched]
    return no_gradient


def _usable_max(signal, rows, start):
    """max over the finite signal of `rows` in layers >= start (-inf where none):
    np.max, and the masked maximum only for rows holding NaN or +Inf."""
    tail = signal[rows, start:] if rows is not None else signal[:, start:]
    if tail.shape[1] == 0:
        return np.full(tail.shape[0], -np.inf)
    out = tail.max(axis=1)
    redo = ~(np.isfinite(out) | (out == -np.inf))
    if redo.any():
        odd = tail[redo]
        out[redo] = np.where(np.isfinite(odd), odd, -np.inf).max(axis=1)
    return out


def _next_usable(signal, rows, start):
    """The signal of the first layer >= start with a finite signal, per row (+Inf where none)."""
    n_layers = signal.shape[1]
    count = signal.shape[0] if rows is None else rows.size
    out = np.full(count, np.inf)
    pending = np.arange(count)
    column = start
    while pending.size and column < n_layers:
        values = signal[pending if rows is None else rows[pending], column]
        found = np.isfinite(values)
        out[pending[found]] = values[found]
        pending = pending[~found]
        column += 1
    return out


def _faded_cells(signal, thresholds, first_block=8):
    """(rows, layers, relative) of the cells `_vanishing_rows` calls faded.

    A row's faded region starts at its input layer and ends at the first
    layer with a signal that is not low, so only that prefix of each row is
    examined: blocks of layers, doubling in width, over the rows still in
    their region. Every quantity of a cell is computed as `_vanishing_rows`
    computes it (the same maxima, the same division): the same cells and
    values, in a few passes over the matrix instead of some twenty.
    """
    n_rows, n_layers = signal.shape
    threshold = thresholds.vanishing_relative_signal
    active = None  # every row, as slices
    start, width = 0, first_block
    found_rows, found_layers, found_relative = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    while start < n_layers and (active is None or active.size):
        stop = min(n_layers, start + width)
        block = np.asarray(signal[:, start:stop] if active is None else signal[active, start:stop], np.float64)
        usable = np.isfinite(block)
        masked = np.where(usable, block, -np.inf)
        # after[:, k]: the largest finite signal of the layers after block layer k.
        after = np.empty_like(masked)
        after[:, -1] = _usable_max(signal, active, stop)
        if stop - start > 1:
            inside = np.maximum.accumulate(masked[:, :0:-1], axis=1)[:, ::-1]
            after[:, :-1] = np.maximum(inside, after[:, -1:])
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.where(usable & (after > 0), block / np.where(after > 0, after, 1.0), np.nan)
        # The signal of the next layer that has one (+Inf where none).
        following = np.empty_like(masked)
        following[:, -1] = _next_usable(signal, active, stop)
        for k in range(stop - start - 2, -1, -1):
            following[:, k] = np.where(usable[:, k + 1], block[:, k + 1], following[:, k + 1])
        grows = following >= block
        low = usable & grows & (np.nan_to_num(relative, nan=np.inf) < threshold)
        healthy_before = np.logical_or.accumulate(usable & ~low, axis=1)
        faded = low & ~healthy_before
        local_rows, layers = np.nonzero(faded)
        rows = local_rows if active is None else active[local_rows]
        found_rows.append(rows)
        found_layers.append(layers + start)
        found_relative.append(relative[local_rows, layers])
        still = ~healthy_before[:, -1]
        active = np.flatnonzero(still) if active is None else active[still]
        start, width = stop, width * 2
    rows, layers, relative = (np.concatenate(parts) for parts in (found_rows, found_layers, found_relative))
    keep = np.bincount(rows, minlength=n_rows)[rows] >= thresholds.vanishing_min_layers
    return rows[keep], layers[keep], relative[keep]


def _vanishing_fired(signal, grad_norm, nonfinite_count, has_gradient, has_parameters, thresholds):
    """(fired, FiredValues) of the vanishing rule: `_vanishing_rows` and
    `_held_for` decide the same cells, and give the same values where it fired.
    `signal` float32 or float64 (_stored_float)."""
    rows, layers, relative = _faded_cells(signal, thresholds)
    no_gradient = _no_gradient(grad_norm, nonfinite_count, has_gradient, has_parameters)
    condition = no_gradient.copy()
    condition[rows, layers] = True
    fired = _held_for(condition, thresholds.vanishing_patience)
    # The value of each fired cell: 0 without a gradient, else its relative signal.
    fired_rows, fired_layers = np.nonzero(fired)
    n_layers = signal.shape[1]
    faded = rows * n_layers + layers
    order = np.argsort(faded)
    at = np.minimum(np.searchsorted(faded[order], fired_rows * n_layers + fired_layers), max(faded.size - 1, 0))
    picked = relative[order][at] if faded.size else np.zeros(fired_rows.size)
    value = np.where(no_gradient[fired_rows, fired_layers], 0.0, picked)
    return fired, FiredValues.at(signal.shape, fired_rows, fired_layers, value)


def _layer_masks(has_gradient, has_parameters, n_layers):
    """(has_gradient, has_parameters) as bool arrays of the layers; no
    `has_parameters` means every layer has variables.

    >>> _layer_masks([1, 0], None, 2)[1].tolist()
    [True, True]
    """
    has_parameters = np.ones(n_layers, bool) if has_parameters is None else np.asarray(has_parameters, bool)
    return np.asarray(has_gradient, dtype=bool), has_parameters


def vanishing_relative(series, *, has_gradient, thresholds=DEFAULT_THRESHOLDS, has_parameters=None):
    """float [n_steps, n_layers]: the vanishing rule's value at every row (each
    layer's backward signal over the largest of the layers after it; 0 where
    a layer with variables gets no gradient), as `evaluate_series` gives it.
    `series` as for `evaluate_series`."""
    stats = {name: np.asarray(series[name], dtype=np.float64) for name in ("grad_norm", "nonfinite_count")}
    n_layers = stats["grad_norm"].shape[1]
    signal = np.asarray(series[BACKWARD_SIGNAL] if BACKWARD_SIGNAL in series else series["grad_rms"], np.float64)
    has_gradient, has_parameters = _layer_masks(has_gradient, has_parameters, n_layers)
    _, relative = _vanishing_rows(signal, stats["grad_norm"], stats["nonfinite_count"],
                                  has_gradient, has_parameters, thresholds)
    return relative


def _held_for(condition, patience):
    """condition [n_rows, n_layers] -> True where it held on `patience` consecutive rows."""
    if patience <= 1:
        return condition
    if patience <= 16:  # a few boolean ANDs of shifted rows (the cumulative sum below, faster)
        held = np.zeros_like(condition)
        n = condition.shape[0]
        if n >= patience:
            window = condition[patience - 1 :].copy()
            for k in range(1, patience):
                window &= condition[patience - 1 - k : n - k]
            held[patience - 1 :] = window
        return held
    counts = np.cumsum(np.concatenate([np.zeros((1,) + condition.shape[1:], np.int64), condition], axis=0), axis=0)
    held = np.zeros_like(condition)
    held[patience - 1 :] = (counts[patience:] - counts[:-patience]) == patience
    return held


@contextlib.contextmanager
def _quiet_nan_warnings():
    """nanmedian warns on all-NaN columns (a layer that was NaN throughout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _nanmedian_last_axis(values):
    """np.nanmedian(values, axis=-1), by one sort (NaN sorts last): ~20x faster
    than nanmedian's per-slice path on short windows."""
    ordered = np.sort(values, axis=-1)
    finite = np.sum(~np.isnan(values), axis=-1)
    lower = np.take_along_axis(ordered, np.maximum((finite - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    upper = np.take_along_axis(ordered, np.maximum(finite // 2, 0)[..., None], axis=-1)[..., 0]
    # The mean of the middle two in float64 whatever the input (a float32
    # run's sum would round differently from the float64 evaluation's).
    return np.where(finite > 0, (np.asarray(lower, np.float64) + upper) / 2, np.nan)


def _finite_or_nan(values):
    """`values` with every non-finite element (NaN, +-Inf) as NaN, in its own dtype."""
    return np.where(np.isfinite(values), values, np.asarray(np.nan, values.dtype))


def _exploding_series(interval_max, norm, has_gradient, thresholds, chunk=256):
    """(fired, growth) [n_steps, n_layers]: each row's interval max over the
    median of its previous window (`_exploding_rows` at every row)."""
    n_steps, n_layers = norm.shape
    rows, fired_at, growth_at = _exploding_rows(interval_max, norm, has_gradient, thresholds, np.arange(n_steps), chunk)
    fired = np.zeros((n_steps, n_layers), bool)
    growth = np.full((n_steps, n_layers), np.nan)
    fired[rows], growth[rows] = fired_at, growth_at
    return fired, growth


def _exploding_rows(interval_max, norm, has_gradient, thresholds, rows, chunk=256):
    """(rows kept, fired [kept, n_layers], growth [kept, n_layers]) at the sorted
    row indices `rows` that have history (row `exploding_min_history` on)."""
    n_steps, n_layers = norm.shape
    window, minimum = thresholds.exploding_window, thresholds.exploding_min_history
    rows = np.asarray(rows, np.int64)
    rows = rows[rows >= minimum]
    if rows.size == 0:
        return rows, np.zeros((0, n_layers), bool), np.zeros((0, n_layers))
    baseline = np.full((rows.size, n_layers), np.nan)
    with _quiet_nan_warnings():
        # Rows with a partial window (fewer than `window` previous rows).
        partial = np.flatnonzero(rows < min(window, n_steps))
        for at in partial:
            baseline[at] = np.nanmedian(_finite_or_nan(np.asarray(norm[: rows[at]], np.float64)), axis=0)
        # Full windows, in chunks to bound the [rows, window, layers] view's copy
        # (each chunk's copy is masked: no masked copy of the whole matrix).
        full = np.flatnonzero(rows >= window)
        if full.size:
            windows = np.lib.stride_tricks.sliding_window_view(norm[:-1], window, axis=0)
            for lo in range(0, full.size, chunk):
                at = full[lo : lo + chunk]
                baseline[at] = _nanmedian_last_axis(_finite_or_nan(windows[rows[at] - window]))
    with np.errstate(invalid="ignore", divide="ignore"):
        picked = np.asarray(interval_max[rows], np.float64) / np.where(baseline > 0, baseline, 1.0)
        growth = np.where(baseline > 0, picked, np.nan)
    fired = has_gradient & np.isfinite(growth) & (growth > thresholds.exploding_growth)
    return rows, fired, growth


def _where_fired(fired, rows, values):
    """FiredValues: `values` [rows.size, n_layers] at the cells of `fired` in
    `rows` (sorted), NaN elsewhere."""
    at, layers = np.nonzero(fired[rows])
    return FiredValues.at(fired.shape, rows[at], layers, values[at, layers])


def _exploding_candidates(interval_max, norm, has_gradient, thresholds):
    """Sorted rows where the exploding rule may fire: every row where it does.

    A row's baseline (the median of the finite norms of its window) is at
    least their minimum, and that is at least the minimum of the two aligned
    blocks of `exploding_window` rows that hold the window; a row whose
    interval max is not above `exploding_growth` times that cannot fire (with
    a margin far above rounding). One pass over the norms for the blocks'
    minima, one comparison: far cheaper than the medians.
    """
    n_steps, n_layers = norm.shape
    window, minimum = thresholds.exploding_window, thresholds.exploding_min_history
    first = max(minimum, 1)  # rows before it have no history to compare with
    if n_steps <= first:
        return np.zeros(0, np.int64)
    n_blocks = -(-n_steps // window)
    whole = (n_steps // window) * window
    norm = _stored_float(norm)  # minima and comparisons: exact in float32 too
    interval_max = _stored_float(interval_max)
    with _quiet_nan_warnings():
        # fmin ignores NaN; an Inf or a negative norm only lowers the bound (more candidates).
        lowest = np.empty((n_blocks, n_layers))
        lowest[: whole // window] = np.fmin.reduce(norm[:whole].reshape(-1, window, n_layers), axis=1)
        if whole < n_steps:
            lowest[-1] = np.fmin.reduce(norm[whole:], axis=0)
    # Row i (block i // window) looks at rows [i - window, i): blocks i // window - 1 and i // window.
    bound = lowest.copy()
    bound[1:] = np.fmin(lowest[1:], lowest[:-1])
    bound = np.where(np.asarray(has_gradient, bool), bound * (thresholds.exploding_growth * (1 - 1e-9)), np.inf)
    possible = np.zeros(n_steps, bool)
    with np.errstate(invalid="ignore", over="ignore"):
        if whole:
            blocks = interval_max[:whole].reshape(-1, window, n_layers) > bound[: whole // window, None, :]
            possible[:whole] = blocks.any(axis=2).reshape(-1)
        if whole < n_steps:
            possible[whole:] = (interval_max[whole:] > bound[-1]).any(axis=1)
    possible[:first] = False
    return np.flatnonzero(possible)


def _nonfinite_series(count, has_gradient, loss_scale, thresholds, nonfinite_loss_steps=None):
    """(fired, count): non-finite gradient elements, except the steps a dynamic
    loss scale skipped while it was still finding its level.

    `nonfinite_loss_steps` [n_steps]: the steps since the previous row whose
    loss was non-finite (the Keras hook watches the loss on the steps
    between rows, where it does not compute per-layer statistics). A
    non-finite loss makes every gradient non-finite, so such a row fires for
    every layer with a gradient, its count of elements being that of the
    row's own step.

    Under mixed precision `LossScaleOptimizer` multiplies the loss by a large
    scale (2**15 in Keras), skips a step whose scaled gradient overflows and
    halves the scale: overflows at the start are how it finds its level, not
    a fault. They alert only once the scale has fallen to
    `nonfinite_loss_scale_floor` (1: no scaling left, so the gradient itself
    is non-finite), which a non-finite gradient that persists reaches within
    ~15 steps.
    """
    count = _stored_float(count)  # the value reported: the count as logged
    fired = np.asarray(has_gradient, bool) & (count > 0)
    if nonfinite_loss_steps is not None:
        loss_steps = np.asarray(nonfinite_loss_steps, np.float64).reshape(count.shape[0], 1)
        fired = fired | (np.asarray(has_gradient, bool) & (loss_steps > 0))
    if loss_scale is not None:
        scale = np.asarray(loss_scale, np.float64).reshape(count.shape[0], 1)
        skipped = np.isfinite(scale) & (scale > thresholds.nonfinite_loss_scale_floor)
        fired = fired & ~skipped
    return fired, count


# The statistics the gradient rules read: written per layer (REQUIRED), or
# derived from the per-variable ones (the backward signal, see backward_signal).
REQUIRED_STATISTICS = ("grad_rms", "grad_norm", "grad_norm_interval_max", "nonfinite_count")
BACKWARD_SIGNAL = "backward_signal"
LOSS_SCALE = "loss_scale"
NONFINITE_LOSS_STEPS = "nonfinite_loss_steps"


def evaluate_series(series, *, has_gradient, thresholds=DEFAULT_THRESHOLDS, has_parameters=None):
    """Verdicts of the gradient rules for a run's rows, in step order.

    Args:
      series: mapping statistic name -> float array [n_steps, n_layers]:
        REQUIRED_STATISTICS, and BACKWARD_SIGNAL when known (else each
        layer's grad_rms stands in, and only then is grad_rms needed); optionally LOSS_SCALE, [n_steps], the
        dynamic loss scale at each row (mixed precision), and
        NONFINITE_LOSS_STEPS, [n_steps], the steps since the previous row
        with a non-finite loss.
      has_gradient: bool array [n_layers].
      has_parameters: bool array [n_layers], the layers with trainable
        variables (`layers_with_variables`; default: all); a layer among them
        without a gradient is vanishing, a layer without any (frozen, a bare
        Activation row) never.

    Returns:
      dict kind -> (fired bool [n_steps, n_layers], value float [n_steps, n_layers]).
      `evaluate_step` is the last row of this.
    """
    return _evaluate_series(series, has_gradient, thresholds, has_parameters, all_growth=True)


def evaluate_series_fired(series, *, has_gradient, thresholds=DEFAULT_THRESHOLDS, has_parameters=None):
    """`evaluate_series`, except that the vanishing and exploding values are
    given only where they fired (NaN elsewhere, stored as `FiredValues`; so
    are the activation kinds' empty values): every verdict, and every value
    an alert reports, is the same. The vanishing rule looks only at the
    faded prefix of each row (from the input layer to the first healthy
    one), and the median of each row's window, most of the rules' cost, is
    computed only for rows that could fire. Float32 statistics are worked on
    as stored, widened where the rules compute (see `_stored_float`). What
    the reader evaluates (`vanishing_relative` gives the vanishing value at
    every row).
    """
    return _evaluate_series(series, has_gradient, thresholds, has_parameters, all_growth=False)


def _stored_float(values):
    """`values` as a float32 or float64 array, as stored (no copy); other dtypes as float64.

    The reader's rules keep a run's float32 series as they are: each widening
    to float64 is a new matrix (4 x 24 MB for 300 layers x 10,000 steps, most
    of a cold request in fresh pages), and widening is exact, so every
    quantity computed from a widened slice, or compared across the two
    dtypes, is what the all-float64 evaluation computes.
    """
    values = np.asarray(values)
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)


def _evaluate_series(series, has_gradient, thresholds, has_parameters, all_growth):
    # grad_rms stands in for the backward signal only where that is unknown.
    # The fired path keeps float32 inputs as stored (see _stored_float); every
    # arithmetic step in it widens first.
    as_float = functools.partial(np.asarray, dtype=np.float64) if all_growth else _stored_float
    stats = {name: as_float(series[name]) for name in REQUIRED_STATISTICS
             if name != "grad_rms" or BACKWARD_SIGNAL not in series}
    n_steps, n_layers = stats["grad_norm"].shape
    has_gradient, has_parameters = _layer_masks(has_gradient, has_parameters, n_layers)
    signal = as_float(series[BACKWARD_SIGNAL]) if BACKWARD_SIGNAL in series else stats["grad_rms"]
    interval_max, norm = stats["grad_norm_interval_max"], stats["grad_norm"]
    if all_growth:
        condition, relative = _vanishing_rows(
            signal, norm, stats["nonfinite_count"], has_gradient, has_parameters, thresholds
        )
        vanishing = _held_for(condition, thresholds.vanishing_patience)
        exploding, growth = _exploding_series(interval_max, norm, has_gradient, thresholds)
    else:
        # Only each row's faded prefix and the rows where the growth can fire
        # are evaluated, and only fired cells get a value.
        vanishing, relative = _vanishing_fired(
            signal, norm, stats["nonfinite_count"], has_gradient, has_parameters, thresholds
        )
        candidates = _exploding_candidates(interval_max, norm, has_gradient, thresholds)
        rows, fired_at, growth_at = _exploding_rows(interval_max, norm, has_gradient, thresholds, candidates)
        exploding = np.zeros((n_steps, n_layers), bool)
        exploding[rows] = fired_at
        growth = _where_fired(exploding, rows, growth_at)
    nonfinite, count = _nonfinite_series(
        stats["nonfinite_count"], has_gradient, series.get(LOSS_SCALE), thresholds, series.get(NONFINITE_LOSS_STEPS)
    )
    out = {
        VANISHING: (vanishing, relative),
        EXPLODING: (exploding, growth),
        NONFINITE: (nonfinite, count),
    }
    # Gradient rows never fire an activation kind (no value).
    for kind in ACTIVATION_KINDS:
        nothing = np.full((n_steps, n_layers), np.nan) if all_growth else FiredValues((n_steps, n_layers))
        out[kind] = (np.zeros((n_steps, n_layers), bool), nothing)
    return out


def evaluate_step(stats, *, has_gradient, history, thresholds=DEFAULT_THRESHOLDS, has_parameters=None,
                  all_values=True):
    """Verdicts at one logged step: the last row of `evaluate_series` over
    `history` (the previous rows' stats, oldest first; the last
    `thresholds.history_length` are enough) followed by `stats`.

    `all_values=False`: the vanishing and exploding values only where they fired (as
    `evaluate_series_fired`; the same verdicts).

    Each rule is evaluated at that last row only, by the rule functions of
    `evaluate_series`, over the rows its verdict there depends on: the
    vanishing condition is row-local, so the last `vanishing_patience` rows;
    the exploding baseline, the window before the row (with
    `all_values=False` computed only where the bound of
    `evaluate_series_fired` lets the row fire); the non-finite rule, the row
    itself. The hook evaluates every row it logs: with rows every step, the
    whole window's vanishing rule was ~30% of the logger's CPU on a 50-layer
    MLP. tests/test_rules.py's `test_step_and_series_agree` keeps the two
    equal.

    >>> healthy = {"grad_rms": np.array([0.5, 1.0]), "grad_norm": np.array([5.0, 10.0]),
    ...            "grad_norm_interval_max": np.array([5.0, 10.0]), "nonfinite_count": np.zeros(2)}
    >>> verdicts = evaluate_step(healthy, has_gradient=np.ones(2, bool), history=[healthy] * 5)
    >>> verdicts[VANISHING].fired.tolist(), verdicts[EXPLODING].value.tolist()
    ([False, False], [1.0, 1.0])

    Returns:
      dict kind -> StepVerdict.
    """
    rows = list(history[max(len(history) - thresholds.history_length, 0) :]) + [stats]
    names = [name for name in rows[-1] if all(name in r for r in rows)]
    # One np.array per statistic: stacking after an asarray per row was ~4x its time.
    series = {name: np.array([r[name] for r in rows], np.float64) for name in names}
    n_rows, n_layers = series["grad_norm"].shape
    has_gradient, has_parameters = _layer_masks(has_gradient, has_parameters, n_layers)
    # grad_rms stands in for the backward signal only where that is unknown (as in _evaluate_series).
    signal = series[BACKWARD_SIGNAL] if BACKWARD_SIGNAL in series else series["grad_rms"]
    recent = slice(max(n_rows - thresholds.vanishing_patience, 0), None)
    interval_max, norm = series["grad_norm_interval_max"], series["grad_norm"]
    # `_vanishing_rows`, not `_faded_cells`: over a few rows its fixed two
    # dozen array passes cost less than the faded prefix's per-layer loop
    # on a deep fade.
    condition, relative = _vanishing_rows(signal[recent], norm[recent], series["nonfinite_count"][recent],
                                          has_gradient, has_parameters, thresholds)
    vanishing, relative = _held_for(condition, thresholds.vanishing_patience)[-1], relative[-1]
    exploding_rows = [n_rows - 1]
    if not all_values:
        # A row the cheap bound rules out gets no median (its values are not asked for).
        candidates = _exploding_candidates(interval_max, norm, has_gradient, thresholds)
        exploding_rows = candidates[candidates == n_rows - 1]
    kept, fired_at, growth_at = _exploding_rows(interval_max, norm, has_gradient, thresholds, exploding_rows)
    exploding = fired_at[0] if kept.size else np.zeros(n_layers, bool)
    growth = growth_at[0] if kept.size else np.full(n_layers, np.nan)
    last = slice(n_rows - 1, None)
    nonfinite, count = _nonfinite_series(
        series["nonfinite_count"][last], has_gradient,
        series[LOSS_SCALE][last] if LOSS_SCALE in series else None, thresholds,
        series[NONFINITE_LOSS_STEPS][last] if NONFINITE_LOSS_STEPS in series else None,
    )
    if not all_values:
        relative = np.where(vanishing, relative, np.nan)
        growth = np.where(exploding, growth, np.nan)
    verdicts = {
        VANISHING: StepVerdict(fired=vanishing, value=relative),
        EXPLODING: StepVerdict(fired=exploding, value=growth),
        NONFINITE: StepVerdict(fired=nonfinite[0], value=count[0]),
    }
    # Gradient rows never fire an activation kind (no value).
    for kind in ACTIVATION_KINDS:
        verdicts[kind] = StepVerdict(fired=np.zeros(n_layers, bool), value=np.full(n_layers, np.nan))
    return verdicts


# The per-layer activation statistics the activation rules read.
REQUIRED_ACTIVATION_STATISTICS = ("saturated_fraction", "inactive_fraction")


def saturation_applies(two_sided, is_output):
    """Layers the saturation alert watches: two-sided activations (see the module
    docstring), except the model's output layers. An output activation feeds
    the loss, and sigmoid/softmax with cross-entropy cancel f'(z) (the logit
    gradient is p - y): a confident classifier's saturated output is the goal,
    not a fault. Seed 001's ReLU and tanh nets, 99.5% accurate, saturate their
    sigmoid output on most samples after ~60 epochs.

    >>> saturation_applies([True, True, False], [False, True, False]).tolist()
    [True, False, False]
    """
    return np.asarray(two_sided, bool) & ~np.asarray(is_output, bool)


def _saturation_condition(stats, monitored, two_sided, thresholds):
    fraction = np.asarray(stats["saturated_fraction"], dtype=np.float64)
    applies = monitored & two_sided & np.isfinite(fraction)
    return applies & (np.nan_to_num(fraction, nan=0.0) > thresholds.saturation_layer_fraction), fraction


def evaluate_activation_series(series, *, monitored, two_sided, thresholds=DEFAULT_THRESHOLDS, rows_before=0):
    """Verdicts of the activation rules for a run's activation rows, in step order.

    Args:
      series: mapping activation statistic -> float array [n_rows, n_layers]
        (at least REQUIRED_ACTIVATION_STATISTICS; NaN where a layer is not
        captured).
      monitored: bool [n_layers], the layers whose activation is captured.
      two_sided: bool [n_layers], activations that saturate on both sides (the
        saturation rule applies to these only; see the module docstring).
      rows_before: activation rows of the run before the first one given
        (`evaluate_activation_step` passes its truncated history's offset).

    Returns:
      dict kind -> (fired bool [n_rows, n_layers], value float [n_rows, n_layers])
      for ACTIVATION_KINDS. The dead-unit rule waits for a full window of
      `dead_window` rows: on fewer, "inactive" means "did not fire on these
      few batches", not dead.
    """
    stats = {name: np.asarray(series[name], dtype=np.float64) for name in REQUIRED_ACTIVATION_STATISTICS}
    monitored = np.asarray(monitored, dtype=bool)
    two_sided = np.asarray(two_sided, dtype=bool)
    condition, fraction = _saturation_condition(stats, monitored, two_sided, thresholds)
    saturated = _held_for(condition, thresholds.saturation_patience)
    inactive = stats["inactive_fraction"]
    full_window = (rows_before + np.arange(inactive.shape[0]) >= thresholds.dead_window - 1)[:, None]
    dead = full_window & monitored & np.isfinite(inactive) & (
        np.nan_to_num(inactive, nan=0.0) > thresholds.dead_layer_fraction
    )
    return {
        SATURATION: (saturated, np.where(monitored & two_sided, fraction, np.nan)),
        DEAD_UNITS: (dead, np.where(monitored, inactive, np.nan)),
    }


def evaluate_activation_step(stats, *, monitored, two_sided, history, thresholds=DEFAULT_THRESHOLDS, rows_seen=None):
    """Verdicts at one activation row: the last row of
    `evaluate_activation_series` over `history` (previous rows, oldest
    first) followed by `stats`.

    Args:
      rows_seen: activation rows of the run before this one (default:
        len(history)); `history` may keep only the last
        `thresholds.activation_history_length`.

    Returns:
      dict kind -> StepVerdict for ACTIVATION_KINDS.
    """
    keep = thresholds.activation_history_length
    recent = list(history[max(len(history) - keep, 0) :]) if keep else []
    rows_seen = len(history) if rows_seen is None else rows_seen
    rows = recent + [stats]
    series = {name: np.array([r[name] for r in rows], np.float64) for name in REQUIRED_ACTIVATION_STATISTICS}
    whole = evaluate_activation_series(series, monitored=monitored, two_sided=two_sided, thresholds=thresholds,
                                       rows_before=rows_seen - len(recent))
    return {kind: StepVerdict(fired=fired[-1], value=value[-1]) for kind, (fired, value) in whole.items()}


def merge_verdicts(steps, verdicts, activation_steps, activation_verdicts):
    """One verdict set over the union of gradient and activation rows.

    Gradient kinds keep their values at gradient rows, activation kinds at
    activation rows; elsewhere a kind did not fire (value NaN). Without
    activation rows the gradient verdicts come back unchanged.

    Returns:
      (steps int [n], dict kind -> (fired [n, n_layers], value [n, n_layers])).

    >>> import numpy as np
    >>> g = {k: (np.zeros((2, 1), bool), np.zeros((2, 1))) for k in KINDS}
    >>> a = {k: (np.ones((1, 1), bool), np.ones((1, 1))) for k in ACTIVATION_KINDS}
    >>> steps, merged = merge_verdicts(np.array([10, 20]), g, np.array([15]), a)
    >>> steps.tolist(), merged[SATURATION][0][:, 0].tolist()
    ([10, 15, 20], [False, True, False])
    """
    steps = np.asarray(steps, np.int64)
    activation_steps = np.asarray(activation_steps, np.int64)
    if activation_steps.size == 0:
        return steps, verdicts
    n_layers = next(iter(verdicts.values()))[0].shape[1] if verdicts else next(iter(activation_verdicts.values()))[0].shape[1]
    if np.array_equal(steps, activation_steps):  # the same rows (the default): each kind as it is
        merged = {}
        for kind in KINDS:
            source = activation_verdicts if kind in ACTIVATION_KINDS else verdicts
            merged[kind] = source[kind] if kind in source else (
                np.zeros((steps.size, n_layers), bool), FiredValues((steps.size, n_layers)))
        return steps, merged
    union = np.union1d(steps, activation_steps)
    rows_g = np.searchsorted(union, steps)
    rows_a = np.searchsorted(union, activation_steps)
    merged = {}
    shape = (union.size, n_layers)
    for kind in KINDS:
        fired = np.zeros(shape, bool)
        source, rows = (activation_verdicts, rows_a) if kind in ACTIVATION_KINDS else (verdicts, rows_g)
        if kind not in source:
            merged[kind] = (fired, FiredValues(shape))
            continue
        fired[rows], value_in = source[kind]
        if isinstance(value_in, FiredValues):  # stays sparse: its cells move to their union rows
            at, layers = np.divmod(value_in.cells, n_layers)
            merged[kind] = (fired, FiredValues.at(shape, rows[at], layers, value_in.values))
        else:
            value = np.full(shape, np.nan)
            value[rows] = value_in
            merged[kind] = (fired, value)
    return union, merged


@dataclasses.dataclass(frozen=True)
class Alert:
    """One (layer, kind) that fired at least once in a run."""

    layer: str
    layer_index: int
    kind: str
    first_step: int
    last_step: int
    worst_step: int
    worst_value: float
    steps_fired: int  # how many logged steps it held at
    # Why, where the data can say: the activation alerts on the layer or the
    # layers between it and the output while a vanishing alert held, or
    # that the layer gets no gradient at all. "" when nothing more is known.
    explanation: str = ""

    def to_json(self):
        return dataclasses.asdict(self)


def summarize(steps, verdicts, layer_names, has_gradient=None):
    """Collapses per-step verdicts into one `Alert` per (layer, kind) that fired.

    Args:
      steps: int array [n_steps].
      verdicts: the result of `evaluate_series` (or `merge_verdicts`).
      layer_names: list of n_layers names.
      has_gradient: bool [n_layers] (for the explanations; default all True).

    Returns:
      list of Alert, ordered by first step, then depth, then kind.
    """
    steps = np.asarray(steps)
    n_layers = len(layer_names)
    has_gradient = np.ones(n_layers, bool) if has_gradient is None else np.asarray(has_gradient, bool)
    alerts = []
    for kind in KINDS:
        fired, values = verdicts[kind]
        for layer_index in np.flatnonzero(fired.any(axis=0)):
            rows = np.flatnonzero(fired[:, layer_index])
            candidates = values[rows, layer_index]
            finite = np.where(np.isnan(candidates), -np.inf if LARGER_IS_WORSE[kind] else np.inf, candidates)
            pick = int(np.argmax(finite) if LARGER_IS_WORSE[kind] else np.argmin(finite))
            explanation = ""
            if kind == VANISHING:
                explanation = _explain_vanishing(verdicts, rows, int(layer_index), layer_names, has_gradient, candidates)
            alerts.append(
                Alert(
                    layer=layer_names[layer_index],
                    layer_index=int(layer_index),
                    kind=kind,
                    first_step=int(steps[rows[0]]),
                    last_step=int(steps[rows[-1]]),
                    worst_step=int(steps[rows[pick]]),
                    worst_value=float(candidates[pick]),
                    steps_fired=int(rows.size),
                    explanation=explanation,
                )
            )
    alerts.sort(key=lambda a: (a.first_step, a.layer_index, KINDS.index(a.kind)))
    return alerts


def _explain_vanishing(verdicts, rows, layer, layer_names, has_gradient, values):
    """Cause and effect in one line: the backward signal reaching `layer`
    passes through the activations of the layer and the layers after it; if
    any of them were saturated or dead while the alert held, say which."""
    if not has_gradient[layer]:
        return "it receives no gradient: nothing connects its weights to the loss (a detached or unused layer)"
    span = slice(int(rows[0]), int(rows[-1]) + 1)
    causes = []
    for kind, word in ((DEAD_UNITS, "dead"), (SATURATION, "saturated")):
        if kind not in verdicts:
            continue
        fired, value = verdicts[kind]
        culprits = (np.flatnonzero(fired[span, layer:].any(axis=0)) + layer).tolist()
        if culprits:
            worst = {j: np.nanmax(np.where(fired[span, j], value[span, j], np.nan)) for j in culprits}
            named = ", ".join(f"{layer_names[j]} ({worst[j]:.0%})" for j in culprits[:3])
            more = f" and {len(culprits) - 3} more" if len(culprits) > 3 else ""
            causes.append(f"the activations of {named}{more} are {word}")
    zero = "its gradient is exactly zero" if np.all(values == 0) else ""
    return ": ".join(part for part in (zero, "; ".join(causes)) if part)
