"""The alert rules, as pure functions (no TensorFlow)."""

import numpy as np
import pytest

from tb_gradflow import rules


def row(rms, norm=None, interval_max=None, nonfinite=None, mean_abs=None):
    rms = np.asarray(rms, float)
    norm = rms if norm is None else np.asarray(norm, float)
    return {
        "grad_rms": rms,
        "grad_mean_abs": rms if mean_abs is None else np.asarray(mean_abs, float),
        "grad_norm": norm,
        "grad_norm_interval_max": norm if interval_max is None else np.asarray(interval_max, float),
        "nonfinite_count": np.zeros_like(rms) if nonfinite is None else np.asarray(nonfinite, float),
    }


def series(rows):
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


ALL = np.ones(3, bool)


def test_vanishing_is_directional():
    # First layer large, output small: a healthy ReLU profile, no alert.
    healthy = [row([1.0, 0.5, 0.01])] * 5
    fired, _ = rules.evaluate_series(series(healthy), has_gradient=ALL)[rules.VANISHING]
    assert not fired.any()
    # The backward signal fading over the first two layers, 1000x at the first: vanishing.
    sick = [row([1e-4, 1e-3, 0.1])] * 5
    fired, value = rules.evaluate_series(series(sick), has_gradient=ALL)[rules.VANISHING]
    assert fired[-1].tolist() == [True, True, False]
    assert value[-1, 0] == pytest.approx(1e-4 / 0.1)
    # One low layer at the input is not a fade (min_layers = 2).
    single = [row([1e-4, 0.05, 0.1])] * 5
    assert not rules.evaluate_series(series(single), has_gradient=ALL)[rules.VANISHING][0].any()
    t = rules.Thresholds(vanishing_min_layers=1)
    assert rules.evaluate_series(series(single), has_gradient=ALL, thresholds=t)[rules.VANISHING][0][-1, 0]


def test_vanishing_is_a_fade_from_the_input_not_a_quiet_layer_in_the_middle():
    """A small signal behind a healthy first layer (a squeeze-excite bottleneck,
    a LayerScale branch, a zero-initialised residual branch) is structure."""
    middle = [row([0.5, 1e-5, 1e-5, 1.0])] * 5
    fired, value = rules.evaluate_series(series(middle), has_gradient=np.ones(4, bool))[rules.VANISHING]
    assert not fired.any() and value[-1, 1] == pytest.approx(1e-5)
    # Faded from the input up to layer 2: layers 0-2 alert, not the output layer.
    fade = [row([1e-6, 1e-5, 1e-4, 1.0])] * 5
    fired, _ = rules.evaluate_series(series(fade), has_gradient=np.ones(4, bool))[rules.VANISHING]
    assert fired[-1].tolist() == [True, True, True, False]
    # Small early signals that do not grow towards the output (a CNN's first
    # convolutions below its classifier) are no fade.
    flat = [row([0.03, 0.02, 1.0])] * 5
    assert not rules.evaluate_series(series(flat), has_gradient=ALL)[rules.VANISHING][0].any()


def test_vanishing_reads_the_backward_signal_when_it_is_known():
    """The signal (bias gradients) decides; the per-layer RMS is only its stand-in."""
    rows = [dict(row([1.0, 1.0, 1.0, 1.0]), backward_signal=np.array([1e-5, 1e-3, 0.2, 1.0]))] * 3
    fired, value = rules.evaluate_series(series(rows), has_gradient=np.ones(4, bool))[rules.VANISHING]
    assert fired[-1].tolist() == [True, True, False, False] and value[-1, 0] == pytest.approx(1e-5 / 1.0)
    # A layer without a signal variable (NaN) neither alerts nor ends the faded region.
    rows = [dict(row([1.0, 1.0, 1.0, 1.0]), backward_signal=np.array([1e-6, np.nan, 1e-5, 1.0]))] * 3
    fired, _ = rules.evaluate_series(series(rows), has_gradient=np.ones(4, bool))[rules.VANISHING]
    assert fired[-1].tolist() == [True, False, True, False]


def test_signal_variables_are_biases_and_betas_but_not_attention_query_or_key():
    names = ["dense/kernel", "dense/bias", "bn/gamma", "bn/beta", "mha/query/kernel", "mha/query/bias",
             "mha/key/bias", "mha/value/bias", "embed/embeddings"]
    layer_of = [0, 0, 1, 1, 2, 2, 3, 4, 5]
    layers = ["dense", "bn", "mha/query", "mha/key", "mha/value", "embed"]
    assert rules.signal_variables(names, layer_of, layers).tolist() == [1, 3, -1, -1, 7, -1]
    rms = np.array([[9.0, 0.1, 9.0, 0.2, 9.0, 9.0, 9.0, 0.3, 9.0]])
    signal = rules.backward_signal(rms, rules.signal_variables(names, layer_of, layers))
    np.testing.assert_array_equal(signal, [[0.1, 0.2, np.nan, np.nan, 0.3, np.nan]])


def test_vanishing_needs_patience():
    t = rules.Thresholds(vanishing_patience=3, vanishing_min_layers=1)
    quiet_once = [row([1.0, 1.0, 1.0]), row([1e-3, 1.0, 1.0]), row([1.0, 1.0, 1.0])] * 3
    fired, _ = rules.evaluate_series(series(quiet_once), has_gradient=ALL, thresholds=t)[rules.VANISHING]
    assert not fired.any()
    sustained = [row([1e-3, 1.0, 1.0])] * 3
    fired, _ = rules.evaluate_series(series(sustained), has_gradient=ALL, thresholds=t)[rules.VANISHING]
    assert fired[:, 0].tolist() == [False, False, True]


def test_a_layer_that_gets_no_gradient_is_vanishing_and_nothing_else():
    sick = [row([1.0, np.nan, 1.0], nonfinite=[0, 5, 0])] * 6
    has = np.array([True, False, True])
    verdicts = rules.evaluate_series(series(sick), has_gradient=has)
    fired, value = verdicts[rules.VANISHING]
    assert fired[-1].tolist() == [False, True, False] and value[-1, 1] == 0.0
    for kind in (rules.EXPLODING, rules.NONFINITE):
        assert not verdicts[kind][0][:, 1].any(), kind
    # Exactly zero gradient (a dead layer, a zero-initialised branch) counts
    # too, once it lasts: the zero branch's first step alone does not.
    zero = [row([1.0, 0.0, 1.0])] * 3
    assert rules.evaluate_series(series(zero), has_gradient=ALL)[rules.VANISHING][0][-1].tolist() == [False, True, False]
    first_step_only = [row([1.0, 0.0, 1.0])] + [row([1.0, 0.5, 1.0])] * 4
    assert not rules.evaluate_series(series(first_step_only), has_gradient=ALL)[rules.VANISHING][0].any()
    # A row without parameters (a bare Activation layer) never alerts.
    fired, _ = rules.evaluate_series(series(sick), has_gradient=has, has_parameters=np.array([True, False, True]))[
        rules.VANISHING]
    assert not fired.any()


def test_steps_a_loss_scale_skipped_are_not_nonfinite_alerts():
    """LossScaleOptimizer skips overflowing steps while it lowers its scale;
    a non-finite gradient that persists drives the scale to 1 and alerts."""
    overflow = [row([1.0] * 3, nonfinite=[0, 4, 0])] * 3 + [row([1.0] * 3)] * 3
    scales = np.array([32768.0, 16384.0, 8192.0, 8192.0, 8192.0, 8192.0])
    fired, count = rules.evaluate_series(dict(series(overflow), loss_scale=scales), has_gradient=ALL)[rules.NONFINITE]
    assert not fired.any() and count[0, 1] == 4
    persistent = [row([1.0] * 3, nonfinite=[0, 4, 0])] * 17
    halving = 32768.0 / 2.0 ** np.arange(17)
    fired, _ = rules.evaluate_series(dict(series(persistent), loss_scale=halving), has_gradient=ALL)[rules.NONFINITE]
    assert fired[:, 1].tolist() == [False] * 15 + [True, True]
    # Without loss scaling every non-finite row alerts.
    assert rules.evaluate_series(series(overflow), has_gradient=ALL)[rules.NONFINITE][0][:3, 1].all()


def test_exploding_relative_to_own_history():
    calm = [row([1.0, 1.0, 1.0])] * 6
    spike = row([1.0, 1.0, 1.0], interval_max=[1.0, 500.0, 50.0])
    fired, growth = rules.evaluate_series(series(calm + [spike]), has_gradient=ALL)[rules.EXPLODING]
    assert fired[-1].tolist() == [False, True, False]
    assert growth[-1, 1] == pytest.approx(500.0)
    # Not before min_history rows exist.
    early = rules.evaluate_series(series([row([1.0] * 3)] * 2 + [spike]), has_gradient=ALL)[rules.EXPLODING][0]
    assert not early.any()


def test_nonfinite_counts():
    rows = [row([1.0, 1.0, 1.0]), row([1.0, 1.0, 1.0], nonfinite=[0, 3, 0])]
    fired, count = rules.evaluate_series(series(rows), has_gradient=ALL)[rules.NONFINITE]
    assert fired.tolist() == [[False] * 3, [False, True, False]]
    assert count[1, 1] == 3


def test_a_nonfinite_loss_between_rows_alerts_every_layer_with_a_gradient():
    """The Keras hook computes no per-layer statistics between rows; it counts
    the steps whose loss was non-finite (a non-finite loss makes every
    gradient non-finite), and the rule reads that count, under the same loss
    scale exemption as the element counts."""
    rows = [row([1.0] * 3)] * 4
    loss_steps = np.array([0.0, 2.0, 0.0, 0.0])
    has = np.array([True, False, True])
    fired, count = rules.evaluate_series(dict(series(rows), nonfinite_loss_steps=loss_steps), has_gradient=has)[
        rules.NONFINITE]
    assert fired.tolist() == [[False] * 3, [True, False, True], [False] * 3, [False] * 3]
    assert not count.any()  # the rows' own steps had finite gradients
    scaled = dict(series(rows), nonfinite_loss_steps=loss_steps, loss_scale=np.full(4, 32768.0))
    assert not rules.evaluate_series(scaled, has_gradient=has)[rules.NONFINITE][0].any()
    # The hook's row-by-row verdict agrees.
    history = [dict(r, **{rules.NONFINITE_LOSS_STEPS: 0.0}) for r in rows[:1]]
    last = dict(rows[1], **{rules.NONFINITE_LOSS_STEPS: 2.0})
    verdict = rules.evaluate_step(last, has_gradient=has, history=history)[rules.NONFINITE]
    assert verdict.fired.tolist() == [True, False, True]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_step_and_series_agree(seed):
    """The vectorised series evaluation is exactly the hook's row-by-row one,
    in both value modes (every value; fired values only, as the logger asks),
    NaN/Inf rows, layers without gradient or parameters, a backward signal
    apart from grad_rms, a loss scale, non-finite loss steps and long
    histories included. The row-by-row one evaluates each rule at the last
    row only (`evaluate_step`), so this is what keeps the two equal."""
    rng = np.random.default_rng(seed)
    n_layers = 6
    has = np.array([True, True, False, True, True, True])
    has_parameters = np.array([True, True, True, True, False, True]) if seed % 2 else None
    rows = []
    for i in range(300):
        rms = 10 ** rng.uniform(-4, 0, n_layers)
        if i > 150 and seed >= 2:
            # A long fade at the input side: the vanishing rule fires on runs of rows.
            rms[:3] = [1e-8, 1e-7, 1e-6]
        norm = rms * 10
        if rng.random() < 0.05:
            norm[rng.integers(n_layers)] = np.nan
        if rng.random() < 0.02:
            norm[rng.integers(n_layers)] = 0.0
        r = row(rms, norm=norm, interval_max=norm * 10 ** rng.uniform(0, 3, n_layers),
                nonfinite=(rng.random(n_layers) < 0.02) * 3.0,
                mean_abs=np.where(rng.random(n_layers) < 0.1, 1e-9, rms))
        if seed >= 1:
            signal = rms * 10 ** rng.uniform(-0.5, 0.5, n_layers)
            if i > 150 and seed >= 2:
                signal[:3] = rms[:3]
            signal[rng.random(n_layers) < 0.1] = np.nan
            r[rules.BACKWARD_SIGNAL] = signal
            r[rules.NONFINITE_LOSS_STEPS] = float(rng.random() < 0.03)
        if seed == 3:
            r[rules.LOSS_SCALE] = float(2.0 ** rng.integers(-1, 3))
        rows.append(r)
    t = rules.Thresholds(exploding_window=(5, 20, 12, 29)[seed], exploding_min_history=3,
                         vanishing_patience=(1, 3, 2, 4)[seed], vanishing_min_layers=(1, 2, 2, 1)[seed])
    whole = {
        True: rules.evaluate_series(series(rows), has_gradient=has, thresholds=t, has_parameters=has_parameters),
        False: rules.evaluate_series_fired(series(rows), has_gradient=has, thresholds=t,
                                           has_parameters=has_parameters),
    }
    history = []
    for i, r in enumerate(rows):
        for all_values, expected in whole.items():
            verdicts = rules.evaluate_step(r, has_gradient=has, history=history, thresholds=t,
                                           has_parameters=has_parameters, all_values=all_values)
            assert set(verdicts) == set(rules.KINDS)
            for kind in rules.KINDS:
                at = f"{kind} row {i} all_values={all_values}"
                np.testing.assert_array_equal(verdicts[kind].fired, expected[kind][0][i], err_msg=at)
                np.testing.assert_allclose(verdicts[kind].value, expected[kind][1][i], rtol=1e-12, err_msg=at)
        history.append(r)
        del history[: -t.history_length]
    for kind in rules.GRADIENT_KINDS:
        assert whole[True][kind][0].any(), kind
    if seed >= 2:
        assert whole[True][rules.VANISHING][0][200:, :2].mean() > 0.5


def test_activation_step_and_series_agree():
    rng = np.random.default_rng(5)
    monitored = np.array([True, True, True, False])
    two_sided = np.array([True, False, True, True])
    rows = [{"saturated_fraction": rng.uniform(0.3, 0.8, 4), "inactive_fraction": rng.uniform(0.3, 0.7, 4)}
            for _ in range(60)]
    t = rules.Thresholds(saturation_patience=2)
    whole = rules.evaluate_activation_series(
        {k: np.stack([r[k] for r in rows]) for k in rows[0]}, monitored=monitored, two_sided=two_sided, thresholds=t)
    history = []
    for i, r in enumerate(rows):
        verdicts = rules.evaluate_activation_step(r, monitored=monitored, two_sided=two_sided, history=history,
                                                  thresholds=t)
        for kind in rules.ACTIVATION_KINDS:
            np.testing.assert_array_equal(verdicts[kind].fired, whole[kind][0][i])
        history.append(r)
    assert whole[rules.SATURATION][0].any() and whole[rules.DEAD_UNITS][0].any()


def test_summarize_reports_first_and_worst():
    rows = [row([1.0, 1.0, 1.0])] * 6 + [row([1.0, 1.0, 1.0], interval_max=[1.0, 300.0, 1.0]),
                                          row([1.0, 1.0, 1.0], interval_max=[1.0, 900.0, 1.0])]
    steps = np.arange(len(rows)) * 10
    verdicts = rules.evaluate_series(series(rows), has_gradient=ALL)
    (alert,) = rules.summarize(steps, verdicts, ["a", "b", "c"])
    assert (alert.layer, alert.kind, alert.first_step, alert.worst_step, alert.steps_fired) == ("b", "exploding", 60, 70, 2)
    assert alert.worst_value == pytest.approx(900.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vanishing_relative_signal": 0}, "vanishing_relative_signal must be a finite number > 0"),
        ({"vanishing_relative_signal": 2.0}, "vanishing_relative_signal must be < 1"),
        ({"nonfinite_loss_scale_floor": -1.0}, "nonfinite_loss_scale_floor must be a finite number > 0"),
        ({"exploding_growth": float("nan")}, "exploding_growth"),
        ({"exploding_window": 0}, "exploding_window must be an integer >= 1"),
        ({"vanishing_patience": 1.5}, "vanishing_patience must be an integer"),
        ({"exploding_min_history": 30}, "exploding_min_history must be <= exploding_window"),
    ],
)
def test_thresholds_reject_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rules.Thresholds(**kwargs)


def test_thresholds_round_trip_through_the_layer_table_map():
    t = rules.Thresholds(vanishing_relative_signal=0.05, exploding_window=7, exploding_min_history=3)
    as_doubles = {k: float(v) for k, v in t.to_dict().items()}  # what map<string, double> stores
    assert rules.Thresholds.from_dict(as_doubles) == t
    assert rules.Thresholds.from_dict({**as_doubles, "a_future_rule": 1.0}) == t


# ------------------------------------------------------------ activation rules
def act_rows(saturated, inactive):
    return {
        "saturated_fraction": np.stack([np.asarray(r, float) for r in saturated]),
        "inactive_fraction": np.stack([np.asarray(r, float) for r in inactive]),
    }


ON = np.ones(3, bool)


def test_saturation_needs_patience_and_two_sided_activations():
    rows = act_rows([[0.9, 0.9, 0.1]] * 3, [[0.0, 0.0, 0.0]] * 3)
    two_sided = np.array([True, False, True])
    fired, value = rules.evaluate_activation_series(rows, monitored=ON, two_sided=two_sided)[rules.SATURATION]
    # Patience 3: fires on the third row; never for the one-sided (ReLU-like) layer.
    assert fired.tolist() == [[False] * 3, [False] * 3, [True, False, False]]
    assert value[2, 0] == pytest.approx(0.9) and np.isnan(value[2, 1])
    blip = act_rows([[0.9] * 3, [0.1] * 3, [0.9] * 3, [0.9] * 3], [[0.0] * 3] * 4)
    fired, _ = rules.evaluate_activation_series(blip, monitored=ON, two_sided=ON)[rules.SATURATION]
    assert not fired.any()


def test_dead_units_above_half_of_the_layer_over_a_full_window():
    t = rules.Thresholds(dead_window=3)
    rows = act_rows([[0.5] * 3] * 3, [[0.5, 0.51, np.nan]] * 3)
    fired, value = rules.evaluate_activation_series(rows, monitored=ON, two_sided=ON, thresholds=t)[rules.DEAD_UNITS]
    # Not before the window holds dead_window rows: on one batch "inactive" is not "dead".
    assert fired.tolist() == [[False] * 3, [False] * 3, [False, True, False]]
    monitored = np.array([True, False, True])
    fired, _ = rules.evaluate_activation_series(act_rows([[0.0] * 3] * 3, [[1.0] * 3] * 3), monitored=monitored,
                                                two_sided=ON, thresholds=t)[rules.DEAD_UNITS]
    assert fired[-1].tolist() == [True, False, True]


def test_gradient_rows_never_fire_activation_kinds():
    verdicts = rules.evaluate_series(series([row([1.0, 1.0, 1.0])] * 4), has_gradient=ALL)
    for kind in rules.ACTIVATION_KINDS:
        assert not verdicts[kind][0].any()


def test_merge_verdicts_over_the_union_of_steps():
    grad = rules.evaluate_series(series([row([1e-3, 1e-2, 1.0])] * 4), has_gradient=ALL)
    act = rules.evaluate_activation_series(act_rows([[0.9] * 3] * 3, [[0.9, 0.0, 0.0]] * 3), monitored=ON,
                                           two_sided=ON, thresholds=rules.Thresholds(dead_window=1))
    steps, merged = rules.merge_verdicts(np.array([10, 20, 30, 40]), grad, np.array([15, 30, 45]), act)
    assert steps.tolist() == [10, 15, 20, 30, 40, 45]
    assert merged[rules.DEAD_UNITS][0][:, 0].tolist() == [False, True, False, True, False, True]
    assert merged[rules.VANISHING][0][:, 0].tolist() == [False, False, False, True, True, False]
    alerts = rules.summarize(steps, merged, ["a", "b", "c"])
    dead = [a for a in alerts if a.kind == rules.DEAD_UNITS]
    assert [(a.layer, a.first_step, a.steps_fired) for a in dead] == [("a", 15, 3)]
    # No activation rows: the gradient verdicts come back unchanged.
    same_steps, same = rules.merge_verdicts(np.array([10, 20, 30, 40]), grad, np.zeros(0), {})
    assert same is grad and same_steps.tolist() == [10, 20, 30, 40]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"saturation_derivative": 0.0}, "saturation_derivative must be a number in \\(0, 1\\)"),
        ({"saturation_layer_fraction": 1.5}, "saturation_layer_fraction must be a number in \\(0, 1\\)"),
        ({"dead_inactivity": -0.1}, "dead_inactivity"),
        ({"dead_window": 0}, "dead_window must be an integer >= 1"),
        ({"saturation_patience": 2.0}, "saturation_patience must be an integer"),
    ],
)
def test_activation_thresholds_reject_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rules.Thresholds(**kwargs)


def test_tanh_default_matches_karpathy():
    """|f'| < 0.0591 x peak is |tanh(z)| > 0.97 for tanh (peak 1)."""
    assert rules.DEFAULT_THRESHOLDS.saturation_derivative == pytest.approx(1 - 0.97**2, abs=1e-12)


def test_vanishing_alerts_say_why():
    """A layer behind dead activations: zero gradient, and the dead layer named."""
    grad = rules.evaluate_series(series([row([1.0, 0.0, 1.0])] * 3), has_gradient=ALL)
    act = rules.evaluate_activation_series(act_rows([[0.0] * 3] * 3, [[0.0, 0.9, 0.0]] * 3), monitored=ON,
                                           two_sided=ON, thresholds=rules.Thresholds(dead_window=1))
    steps, merged = rules.merge_verdicts(np.array([1, 2, 3]), grad, np.array([1, 2, 3]), act)
    (vanishing,) = [a for a in rules.summarize(steps, merged, ["a", "b", "c"]) if a.kind == rules.VANISHING]
    assert vanishing.layer == "b"
    assert vanishing.explanation == "its gradient is exactly zero: the activations of b (90%) are dead"
    (detached,) = [a for a in rules.summarize(*rules.merge_verdicts(
        np.array([1, 2, 3]), rules.evaluate_series(series([row([1.0, np.nan, 1.0])] * 3),
                                                  has_gradient=np.array([True, False, True])), np.zeros(0), {}),
        ["a", "b", "c"], has_gradient=[True, False, True]) if a.kind == rules.VANISHING]
    assert "receives no gradient" in detached.explanation


def test_the_readers_evaluation_decides_exactly_what_evaluate_series_decides():
    """evaluate_series_fired skips the window medians of rows that cannot fire;
    on data with spikes, NaN, Inf, zeros and short runs every verdict stays
    the same, and so does every value an alert reports."""
    rng = np.random.default_rng(7)
    fired_somewhere = 0
    for trial in range(40):
        n, layers = int(rng.integers(1, 90)), int(rng.integers(1, 6))
        norm = 10.0 ** rng.normal(-2, 0.7, (n, layers))
        interval_max = norm * rng.uniform(1.0, 1.5, (n, layers))
        spikes = rng.random((n, layers)) < 0.05
        interval_max[spikes] *= 10.0 ** rng.uniform(1.5, 3.5, spikes.sum())
        mess = rng.random((n, layers))
        norm[mess < 0.03] = np.nan
        norm[(mess > 0.03) & (mess < 0.05)] = np.inf
        norm[(mess > 0.05) & (mess < 0.07)] = 0.0
        interval_max[(mess > 0.07) & (mess < 0.08)] = np.nan
        stats = {"grad_norm": norm, "grad_rms": np.abs(norm) / 8, "grad_norm_interval_max": interval_max,
                 "nonfinite_count": np.where(np.isnan(norm), 3.0, 0.0)}
        t = rules.Thresholds(exploding_window=int(rng.integers(1, 25)), exploding_min_history=1) if trial % 3 else \
            rules.DEFAULT_THRESHOLDS
        has = rng.random(layers) < 0.9
        if trial % 2:  # as the reader decodes a run: float32, which the fired path keeps
            stats = {name: values.astype(np.float32) for name, values in stats.items()}
        whole = rules.evaluate_series(stats, has_gradient=has, thresholds=t)
        fast = rules.evaluate_series_fired(stats, has_gradient=has, thresholds=t)
        for kind in rules.KINDS:
            np.testing.assert_array_equal(fast[kind][0], whole[kind][0], err_msg=f"{kind}, trial {trial}")
            fired = whole[kind][0]
            np.testing.assert_array_equal(fast[kind][1][fired], whole[kind][1][fired])
            if kind not in (rules.EXPLODING, rules.VANISHING):
                np.testing.assert_array_equal(fast[kind][1], whole[kind][1])
        for kind in (rules.EXPLODING, rules.VANISHING):
            assert np.isnan(fast[kind][1][~whole[kind][0]]).all()
        fired_somewhere += int(whole[rules.EXPLODING][0].any())
        steps = np.arange(n) * 10
        names = [f"l{i}" for i in range(layers)]
        assert rules.summarize(steps, fast, names) == rules.summarize(steps, whole, names)
    assert fired_somewhere >= 10  # the comparison covered rows that fire


def _fading_signal(rng, n, layers):
    """Backward signals that fade towards the input over a random depth, with
    NaN, Inf, -Inf, zeros and exact ties sprinkled in."""
    depth = rng.uniform(0.5, 8.0)
    signal = 10.0 ** (np.linspace(-depth, 0, layers)[None, :] + rng.normal(0, rng.uniform(0.05, 0.6), (n, layers)))
    mess = rng.random((n, layers))
    signal[mess < 0.02] = np.nan
    signal[(mess > 0.02) & (mess < 0.03)] = np.inf
    signal[(mess > 0.03) & (mess < 0.035)] = -np.inf
    signal[(mess > 0.035) & (mess < 0.045)] = 0.0
    if layers > 1:
        ties = rng.random(n) < 0.05
        signal[ties, 1] = signal[ties, 0]
    if rng.random() < 0.2:
        signal[:, rng.integers(layers)] = np.nan  # a layer without a signal of its own
    return signal


def test_the_readers_vanishing_rule_decides_exactly_what_evaluate_series_decides():
    """evaluate_series_fired examines only each row's faded prefix; on fades
    of every depth, short and wide networks, NaN, Inf, zeros, ties, layers
    without gradient or without variables and every patience and minimum,
    it fires on exactly the same cells with the same values, and gives
    vanishing_relative's value wherever it fired."""
    rng = np.random.default_rng(11)
    fired_cells = 0
    for trial in range(60):
        n, layers = int(rng.integers(0, 120)), int(rng.integers(1, 70))
        signal = _fading_signal(rng, n, layers)
        norm = np.abs(np.nan_to_num(signal, nan=1.0, posinf=1.0, neginf=1.0)) * 8
        norm[rng.random((n, layers)) < 0.03] = 0.0
        stats = {"grad_norm": norm, "grad_rms": np.abs(norm) / 8, "grad_norm_interval_max": norm * 1.1,
                 "nonfinite_count": np.where(rng.random((n, layers)) < 0.02, 2.0, 0.0),
                 rules.BACKWARD_SIGNAL: signal}
        if trial % 4 == 0:
            del stats[rules.BACKWARD_SIGNAL]  # the layer RMS stands in
        if trial % 3 == 0:
            stats = {name: values.astype(np.float32) for name, values in stats.items()}
        t = rules.Thresholds(vanishing_patience=int(rng.integers(1, 20)), vanishing_min_layers=int(rng.integers(1, 5)),
                             vanishing_relative_signal=float(rng.choice([0.05, 0.2, 0.5])))
        has = rng.random(layers) < 0.9
        params = rng.random(layers) < 0.9
        whole = rules.evaluate_series(stats, has_gradient=has, thresholds=t, has_parameters=params)
        fast = rules.evaluate_series_fired(stats, has_gradient=has, thresholds=t, has_parameters=params)
        fired, value = whole[rules.VANISHING]
        np.testing.assert_array_equal(fast[rules.VANISHING][0], fired, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(fast[rules.VANISHING][1][fired], value[fired], err_msg=f"trial {trial}")
        assert np.isnan(fast[rules.VANISHING][1][~fired]).all()
        np.testing.assert_array_equal(
            rules.vanishing_relative(stats, has_gradient=has, thresholds=t, has_parameters=params), value)
        fired_cells += int(fired.sum())
    assert fired_cells > 1000


def test_float32_windows_take_their_median_in_float64():
    """The exploding rule's baseline: the mean of two float32 norms rounds
    differently in float32 (here by one ulp, enough to move a verdict at the
    threshold); the fired path keeps float32 inputs, so it must widen."""
    a, b = np.float32(1.0), np.nextafter(np.float32(1.0), np.float32(2.0))
    window = np.array([[[a, b]]], np.float32)
    assert rules._nanmedian_last_axis(window)[0, 0] == (np.float64(a) + np.float64(b)) / 2
    assert rules._nanmedian_last_axis(window)[0, 0] != np.float64((a + b) / np.float32(2))


def _dense_keys(rng, n_rows, n_layers):
    """Keys of every kind numpy takes for a 2-D array, sized for [n_rows, n_layers]."""
    rows = rng.integers(-n_rows, n_rows, 5)
    layers = rng.integers(-n_layers, n_layers, 5)
    mask = rng.random((n_rows, n_layers)) < 0.3
    # Whole rows (an int, a numpy int, the last) take FiredValues' one-row path.
    return [int(rows[0]), rows[1], -1, n_rows - 1, (int(rows[0]), int(layers[0])), rows, (rows, int(layers[0])), (rows, layers),
            slice(1, None, 2), (slice(None), int(layers[1])), (slice(2, -1), layers[:3]), mask, ~mask,
            mask[:, 0], (mask[:, 0], slice(None)), (rows[:, None], layers[None, :]), Ellipsis, (Ellipsis, -1)]


def test_fired_values_index_as_the_dense_matrix_does():
    rng = np.random.default_rng(5)
    for trial in range(20):
        n_rows, n_layers = int(rng.integers(1, 30)), int(rng.integers(1, 9))
        fired = rng.random((n_rows, n_layers)) < (0.0 if trial % 5 == 0 else 0.2)
        rows, layers = np.nonzero(fired)
        values = rng.normal(size=rows.size)
        sparse = rules.FiredValues.at((n_rows, n_layers), rows, layers, values)
        dense = np.full((n_rows, n_layers), np.nan)
        dense[rows, layers] = values
        np.testing.assert_array_equal(np.asarray(sparse), dense)
        for key in _dense_keys(rng, n_rows, n_layers):
            got, want = sparse[key], dense[key]
            assert np.shape(got) == np.shape(want), (trial, key)
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}, key {key!r}")
        assert sparse.nbytes == 16 * rows.size and sparse.shape == dense.shape and len(sparse) == n_rows
    with pytest.raises(IndexError):
        rules.FiredValues((2, 3))[2]
    with pytest.raises(ValueError, match="must be two 1-D arrays of one length"):
        rules.FiredValues((2, 3), cells=[1, 2], values=[0.5])


def test_merge_verdicts_moves_fired_values_to_their_union_rows():
    """The reader's verdicts (FiredValues) merged over the union of gradient and
    activation steps give what the dense verdicts give."""
    grad_rows = [row([1e-3, 1e-2, 1.0])] * 3 + [row([1.0, 1.0, 1.0])] + [row([1e-3, 1e-2, 1.0])] * 3
    act = rules.evaluate_activation_series(act_rows([[0.9] * 3] * 3, [[0.9, 0.0, 0.0]] * 3), monitored=ON,
                                           two_sided=ON, thresholds=rules.Thresholds(dead_window=1))
    t = rules.Thresholds(vanishing_patience=2)
    dense = rules.evaluate_series(series(grad_rows), has_gradient=ALL, thresholds=t)
    fired = rules.evaluate_series_fired(series(grad_rows), has_gradient=ALL, thresholds=t)
    assert isinstance(fired[rules.VANISHING][1], rules.FiredValues) and fired[rules.VANISHING][0].any()
    steps = np.arange(1, 8) * 10
    union, from_dense = rules.merge_verdicts(steps, dense, np.array([15, 30, 75]), act)
    same_union, from_fired = rules.merge_verdicts(steps, fired, np.array([15, 30, 75]), act)
    np.testing.assert_array_equal(union, same_union)
    for kind in rules.KINDS:
        np.testing.assert_array_equal(from_fired[kind][0], from_dense[kind][0], err_msg=kind)
        where = from_dense[kind][0]
        if kind in (rules.VANISHING, rules.EXPLODING):  # values only where they fired
            np.testing.assert_array_equal(from_fired[kind][1][where], from_dense[kind][1][where], err_msg=kind)
            assert np.isnan(np.asarray(from_fired[kind][1])[~where]).all()
        else:
            np.testing.assert_array_equal(np.asarray(from_fired[kind][1]), from_dense[kind][1], err_msg=kind)
    assert rules.summarize(union, from_fired, ["a", "b", "c"]) == rules.summarize(union, from_dense, ["a", "b", "c"])


def test_fast_rule_helpers_equal_their_plain_definitions():
    """_held_for's shifted ANDs against the cumulative count; the exploding
    candidates hold every row where the growth fires."""
    rng = np.random.default_rng(3)
    for patience in range(1, 20):
        condition = rng.random((int(rng.integers(0, 60)), 4)) < 0.8
        counts = np.cumsum(np.concatenate([np.zeros((1, 4), np.int64), condition]), axis=0)
        expected = np.zeros_like(condition)
        expected[patience - 1:] = (counts[patience:] - counts[:-patience]) == patience
        np.testing.assert_array_equal(rules._held_for(condition, patience), expected if patience > 1 else condition)
    for trial in range(40):
        n, layers = int(rng.integers(1, 200)), int(rng.integers(1, 5))
        norm = 10.0 ** rng.normal(-2, 0.5, (n, layers))
        norm[rng.random((n, layers)) < 0.05] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0])
        interval_max = norm * 10.0 ** np.where(rng.random((n, layers)) < 0.05, rng.uniform(1.5, 3, (n, layers)), 0)
        t = rules.Thresholds(exploding_window=int(rng.integers(1, 30)), exploding_min_history=1)
        has = rng.random(layers) < 0.9
        fired, _ = rules._exploding_series(interval_max, norm, has, t)
        candidates = rules._exploding_candidates(interval_max, norm, has, t)
        assert set(np.flatnonzero(fired.any(axis=1))) <= set(candidates.tolist()), trial
