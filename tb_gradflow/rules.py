"""Alert rules: the one place that decides every alert (gradients and activations).

    >>> import numpy as np
    >>> from tb_gradflow import rules
    >>> stats = {"grad_rms": np.array([1e-5, 5e-2, 1e-1]),
    ...          "grad_mean_abs": np.array([1e-5, 5e-2, 1e-1]),
    ...          "grad_norm": np.array([1e-4, 1e-1, 1.0]),
    ...          "grad_norm_interval_max": np.array([1e-4, 1e-1, 1.0]),
    ...          "nonfinite_count": np.array([0.0, 0.0, 0.0])}
    >>> t = rules.Thresholds(vanishing_patience=1)
    >>> row = rules.evaluate_step(stats, has_gradient=np.ones(3, bool), history=[], thresholds=t)
    >>> row["vanishing"].fired.tolist()
    [True, False, False]

Every function here is pure (numpy in, numpy out). The training hook runs
`evaluate_step` as it writes; the plugin and `tb-gradflow check` run
`evaluate_series` over what they read back, with the thresholds the hook
recorded in the layer table. Same code, same inputs: they cannot disagree.

Where each default comes from:

* `vanishing_relative_rms = 0.1`: a layer whose gradient RMS is 10x (one
  decade) below the largest RMS among the layers after it, closer to the
  output. Vanishing is directional: Glorot & Bengio (2010) and Bradley (2009)
  describe back-propagated gradients shrinking as they travel towards the
  input; a ReLU net whose *first* layer has the largest gradient is healthy.
  Nielsen ("Neural Networks and Deep Learning", ch. 5) measures a sigmoid net
  whose first hidden layer learns "roughly 100 times slower" than the fourth,
  about 4.6x per layer, so a decade already spans ~1.5 layers of that decay.
  Seed 001's sigmoid MLP sits at ~13x; its tanh and ReLU twins stay above 0.1
  on more than 99% of logged steps.
* `vanishing_patience = 3`: the condition must hold on 3 consecutive logged
  steps (SageMaker Debugger rules use the same idea, "patience"), so a single
  quiet batch does not alert. Seed 001's ReLU run dips below 0.1 on 3 isolated
  steps out of 320.
* `vanishing_mean_abs = 1e-7`: mean |g| below 1e-7, the default threshold of
  SageMaker Debugger's VanishingGradient rule. Catches a whole net gone quiet,
  which the relative rule cannot see.
* `exploding_growth = 100`: the largest gradient norm a layer had since the last
  write is 100x the median of its own last `exploding_window` (20) logged norms,
  once `exploding_min_history` (5) norms exist. Relative to the layer's own
  history because healthy absolute norms differ by orders of magnitude between
  models; 100x mirrors the vanishing factor.
* non-finite: any NaN or Inf gradient element (SageMaker ExplodingTensor with
  only_nan=False). Counted, never stripped: a hook that drops them hides the bug.

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
  the writer, which sees every row; recorded here.
* `dead_layer_fraction = 0.5`: the dead-unit alert fires when more than 50% of
  a layer's units are inactive (DeadRelu's threshold_layer = 50%; CS231n: "as
  much as 40% of your network can be dead" with a too-high learning rate). No
  patience: the window already spans 10 rows.
"""

import contextlib
import dataclasses
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
    VANISHING: "gradient RMS relative to the largest RMS of the layers after it",
    EXPLODING: "interval-max gradient norm over the median of the layer's recent norms",
    NONFINITE: "NaN/Inf gradient elements since the previous write",
    SATURATION: "share of the layer's unit activations with a saturated derivative",
    DEAD_UNITS: "share of the layer's units active on less than 1% of a window",
}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; every field is documented in this module's docstring.

    >>> Thresholds(vanishing_relative_rms=1e-3).vanishing_relative_rms
    0.001
    """

    vanishing_relative_rms: float = 0.1
    vanishing_mean_abs: float = 1e-7
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

    def __post_init__(self):
        def positive(name):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"threshold {name} must be a finite number > 0, got {value!r}")

        for name in ("vanishing_relative_rms", "vanishing_mean_abs", "exploding_growth"):
            positive(name)
        if not self.vanishing_relative_rms < 1:
            raise ValueError(
                f"threshold vanishing_relative_rms must be < 1, got {self.vanishing_relative_rms!r}"
            )
        for name in ("saturation_derivative", "saturation_layer_fraction", "dead_inactivity", "dead_layer_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1):
                raise ValueError(f"threshold {name} must be a number in (0, 1), got {value!r}")
        for name in ("exploding_window", "exploding_min_history", "vanishing_patience", "saturation_patience",
                     "dead_window"):
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
        return max(self.saturation_patience - 1, 0)

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


def _vanishing_condition(stats, has_gradient, thresholds):
    """(condition, relative) for one row: the rule before patience is applied."""
    rms = np.asarray(stats["grad_rms"], dtype=np.float64)
    mean_abs = np.asarray(stats["grad_mean_abs"], dtype=np.float64)
    usable = has_gradient & np.isfinite(rms)
    masked = np.where(usable, rms, -np.inf)
    # Largest RMS among the layers after each layer (closer to the output);
    # the last axis is layers, so one row and a [steps, layers] series both work.
    after = np.maximum.accumulate(masked[..., ::-1], axis=-1)[..., ::-1]
    after = np.concatenate([after[..., 1:], np.full(after.shape[:-1] + (1,), -np.inf)], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(usable & (after > 0), rms / np.where(after > 0, after, 1.0), np.nan)
    condition = usable & (
        (np.nan_to_num(relative, nan=np.inf) < thresholds.vanishing_relative_rms)
        | (mean_abs < thresholds.vanishing_mean_abs)
    )
    return condition, relative


def _vanishing(stats, has_gradient, history, thresholds):
    condition, relative = _vanishing_condition(stats, has_gradient, thresholds)
    # Patience: the condition must also have held on the previous logged
    # steps, so one quiet batch does not raise an alert.
    previous = history[len(history) - (thresholds.vanishing_patience - 1) :] if thresholds.vanishing_patience > 1 else []
    if len(previous) < thresholds.vanishing_patience - 1:
        condition = np.zeros_like(condition)
    for row in previous:
        condition = condition & _vanishing_condition(row, has_gradient, thresholds)[0]
    # The last layer has no layer after it; if the absolute rule caught it,
    # report 0 ("silent") rather than no value.
    return StepVerdict(fired=condition, value=np.where(condition & np.isnan(relative), 0.0, relative))


def _exploding(stats, has_gradient, history, thresholds):
    interval_max = np.asarray(stats["grad_norm_interval_max"], dtype=np.float64)
    n = interval_max.shape[0]
    recent = [np.asarray(row["grad_norm"], dtype=np.float64) for row in history[-thresholds.exploding_window :]]
    if len(recent) < thresholds.exploding_min_history:
        return StepVerdict(fired=np.zeros(n, bool), value=np.full(n, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
        stacked = np.stack(recent)
        stacked = np.where(np.isfinite(stacked), stacked, np.nan)
        baseline = np.nanmedian(stacked, axis=0)
        growth = np.where(baseline > 0, interval_max / baseline, np.nan)
    fired = has_gradient & np.isfinite(growth) & (growth > thresholds.exploding_growth)
    return StepVerdict(fired=fired, value=growth)


def _nonfinite(stats, has_gradient):
    count = np.asarray(stats["nonfinite_count"], dtype=np.float64)
    return StepVerdict(fired=has_gradient & (count > 0), value=count)


@contextlib.contextmanager
def _quiet_nan_warnings():
    """nanmedian warns on all-NaN columns (a layer that was NaN throughout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# The per-layer statistics the rules read. Writers must log them all.
REQUIRED_STATISTICS = ("grad_rms", "grad_mean_abs", "grad_norm", "grad_norm_interval_max", "nonfinite_count")


def evaluate_step(stats, *, has_gradient, history, thresholds=DEFAULT_THRESHOLDS):
    """Verdicts of every rule at one logged step.

    Args:
      stats: mapping statistic name -> float array [n_layers] at this step.
      has_gradient: bool array [n_layers]; layers without one never alert.
      history: the previous logged steps' `stats` mappings, oldest first
        (only the last `thresholds.history_length` are used).
      thresholds: a `Thresholds`.

    Returns:
      dict kind -> StepVerdict.
    """
    has_gradient = np.asarray(has_gradient, dtype=bool)
    verdicts = {
        VANISHING: _vanishing(stats, has_gradient, history, thresholds),
        EXPLODING: _exploding(stats, has_gradient, history, thresholds),
        NONFINITE: _nonfinite(stats, has_gradient),
    }
    # Gradient rows hold no activation statistics: those kinds never fire here
    # (see evaluate_activation_step).
    for kind in ACTIVATION_KINDS:
        verdicts[kind] = StepVerdict(fired=np.zeros(has_gradient.shape, bool), value=np.full(has_gradient.shape, np.nan))
    return verdicts


def _held_for(condition, patience):
    """condition [n_rows, n_layers] -> True where it held on `patience` consecutive rows."""
    if patience <= 1:
        return condition
    counts = np.cumsum(np.concatenate([np.zeros((1,) + condition.shape[1:], np.int64), condition], axis=0), axis=0)
    held = np.zeros_like(condition)
    held[patience - 1 :] = (counts[patience:] - counts[:-patience]) == patience
    return held


def _nanmedian_last_axis(values):
    """np.nanmedian(values, axis=-1), by one sort (NaN sorts last): ~20x faster
    than nanmedian's per-slice path on short windows."""
    ordered = np.sort(values, axis=-1)
    finite = np.sum(~np.isnan(values), axis=-1)
    lower = np.take_along_axis(ordered, np.maximum((finite - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    upper = np.take_along_axis(ordered, np.maximum(finite // 2, 0)[..., None], axis=-1)[..., 0]
    return np.where(finite > 0, (lower + upper) / 2, np.nan)


def _exploding_series(interval_max, norm, has_gradient, thresholds, chunk=256):
    """growth [n_steps, n_layers] over the median of each row's previous window."""
    n_steps, n_layers = norm.shape
    window, minimum = thresholds.exploding_window, thresholds.exploding_min_history
    finite_norm = np.where(np.isfinite(norm), norm, np.nan)
    baseline = np.full((n_steps, n_layers), np.nan)
    with _quiet_nan_warnings():
        # Rows with a partial window (fewer than `window` previous rows).
        for i in range(minimum, min(window, n_steps)):
            baseline[i] = np.nanmedian(finite_norm[:i], axis=0)
        # Full windows, in chunks to bound the [rows, window, layers] view's copy.
        if n_steps > window:
            windows = np.lib.stride_tricks.sliding_window_view(finite_norm[:-1], window, axis=0)
            for lo in range(0, n_steps - window, chunk):
                hi = min(lo + chunk, n_steps - window)
                baseline[window + lo : window + hi] = _nanmedian_last_axis(windows[lo:hi])
    with np.errstate(invalid="ignore", divide="ignore"):
        growth = np.where(baseline > 0, interval_max / np.where(baseline > 0, baseline, 1.0), np.nan)
    fired = has_gradient & np.isfinite(growth) & (growth > thresholds.exploding_growth)
    return fired, growth


def evaluate_series(series, *, has_gradient, thresholds=DEFAULT_THRESHOLDS):
    """Verdicts for a whole run: `evaluate_step` applied row after row, vectorised.

    Args:
      series: mapping statistic name -> float array [n_steps, n_layers], rows in
        step order (as written).
      has_gradient: bool array [n_layers].

    Returns:
      dict kind -> (fired bool [n_steps, n_layers], value float [n_steps, n_layers]).
      (tests/test_rules.py checks it equals the row-by-row `evaluate_step`.)
    """
    stats = {name: np.asarray(series[name], dtype=np.float64) for name in REQUIRED_STATISTICS}
    n_steps, n_layers = stats["grad_norm"].shape
    has_gradient = np.asarray(has_gradient, dtype=bool)
    condition, relative = _vanishing_condition(stats, has_gradient, thresholds)
    vanishing = _held_for(condition, thresholds.vanishing_patience)
    exploding, growth = _exploding_series(stats["grad_norm_interval_max"], stats["grad_norm"], has_gradient, thresholds)
    count = stats["nonfinite_count"]
    out = {
        VANISHING: (vanishing, np.where(vanishing & np.isnan(relative), 0.0, relative)),
        EXPLODING: (exploding, growth),
        NONFINITE: (has_gradient & (count > 0), count),
    }
    for kind in ACTIVATION_KINDS:
        out[kind] = (np.zeros((n_steps, n_layers), bool), np.full((n_steps, n_layers), np.nan))
    return out


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


def evaluate_activation_step(stats, *, monitored, two_sided, history, thresholds=DEFAULT_THRESHOLDS):
    """Verdicts of the activation rules at one activation row.

    Args:
      stats: mapping activation statistic -> float array [n_layers] (at least
        REQUIRED_ACTIVATION_STATISTICS; NaN where a layer is not captured).
      monitored: bool [n_layers], the layers whose activation is captured.
      two_sided: bool [n_layers], activations that saturate on both sides (the
        saturation rule applies to these only; see the module docstring).
      history: the previous activation rows' `stats`, oldest first.

    Returns:
      dict kind -> StepVerdict for ACTIVATION_KINDS.
    """
    monitored = np.asarray(monitored, dtype=bool)
    two_sided = np.asarray(two_sided, dtype=bool)
    condition, fraction = _saturation_condition(stats, monitored, two_sided, thresholds)
    previous = history[len(history) - (thresholds.saturation_patience - 1) :] if thresholds.saturation_patience > 1 else []
    if len(previous) < thresholds.saturation_patience - 1:
        condition = np.zeros_like(condition)
    for row in previous:
        condition = condition & _saturation_condition(row, monitored, two_sided, thresholds)[0]
    inactive = np.asarray(stats["inactive_fraction"], dtype=np.float64)
    dead = monitored & np.isfinite(inactive) & (np.nan_to_num(inactive, nan=0.0) > thresholds.dead_layer_fraction)
    return {
        SATURATION: StepVerdict(fired=condition, value=np.where(monitored & two_sided, fraction, np.nan)),
        DEAD_UNITS: StepVerdict(fired=dead, value=np.where(monitored, inactive, np.nan)),
    }


def evaluate_activation_series(series, *, monitored, two_sided, thresholds=DEFAULT_THRESHOLDS):
    """`evaluate_activation_step` over a run's activation rows, vectorised.

    Args:
      series: mapping activation statistic -> float array [n_rows, n_layers].

    Returns:
      dict kind -> (fired bool [n_rows, n_layers], value float [n_rows, n_layers])
      for ACTIVATION_KINDS.
    """
    stats = {name: np.asarray(series[name], dtype=np.float64) for name in REQUIRED_ACTIVATION_STATISTICS}
    monitored = np.asarray(monitored, dtype=bool)
    two_sided = np.asarray(two_sided, dtype=bool)
    condition, fraction = _saturation_condition(stats, monitored, two_sided, thresholds)
    saturated = _held_for(condition, thresholds.saturation_patience)
    inactive = stats["inactive_fraction"]
    dead = monitored & np.isfinite(inactive) & (np.nan_to_num(inactive, nan=0.0) > thresholds.dead_layer_fraction)
    return {
        SATURATION: (saturated, np.where(monitored & two_sided, fraction, np.nan)),
        DEAD_UNITS: (dead, np.where(monitored, inactive, np.nan)),
    }


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
    union = np.union1d(steps, activation_steps)
    n_layers = next(iter(verdicts.values()))[0].shape[1] if verdicts else next(iter(activation_verdicts.values()))[0].shape[1]
    rows_g = np.searchsorted(union, steps)
    rows_a = np.searchsorted(union, activation_steps)
    merged = {}
    for kind in KINDS:
        fired = np.zeros((union.size, n_layers), bool)
        value = np.full((union.size, n_layers), np.nan)
        source, rows = (activation_verdicts, rows_a) if kind in ACTIVATION_KINDS else (verdicts, rows_g)
        if kind in source:
            fired[rows], value[rows] = source[kind]
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

    def to_json(self):
        return dataclasses.asdict(self)


def summarize(steps, verdicts, layer_names):
    """Collapses per-step verdicts into one `Alert` per (layer, kind) that fired.

    Args:
      steps: int array [n_steps].
      verdicts: the result of `evaluate_series`.
      layer_names: list of n_layers names.

    Returns:
      list of Alert, ordered by first step, then depth, then kind.
    """
    steps = np.asarray(steps)
    alerts = []
    for kind in KINDS:
        fired, values = verdicts[kind]
        for layer_index in np.flatnonzero(fired.any(axis=0)):
            rows = np.flatnonzero(fired[:, layer_index])
            candidates = values[rows, layer_index]
            finite = np.where(np.isnan(candidates), -np.inf if LARGER_IS_WORSE[kind] else np.inf, candidates)
            pick = int(np.argmax(finite) if LARGER_IS_WORSE[kind] else np.argmin(finite))
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
                )
            )
    alerts.sort(key=lambda a: (a.first_step, a.layer_index, KINDS.index(a.kind)))
    return alerts
