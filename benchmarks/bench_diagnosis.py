"""Diagnosis benchmark: do the alerts name what is wrong, and only that?

    python benchmarks/bench_diagnosis.py                  # every case (~15 min on 2 cores)
    python benchmarks/bench_diagnosis.py --fast           # the small ones (~3 min)
    python benchmarks/bench_diagnosis.py --rescore DIR    # re-read DIR's runs with today's rules
    python benchmarks/bench_diagnosis.py --json           # the record, as JSON

Each case of `diagnosis_cases.CASES` trains ~100 steps with
`tb_gradflow.GradFlow` at its defaults. Before scoring, its label is
confirmed by an independent reference (`reference_label`): the loss on a
fixed probe batch, a plain `GradientTape` on that batch, the activation
derivative on probe inputs and, for the kinds that happen in time (non-finite,
exploding), a tape gradient norm after every step. The alerts are then read
back the way `tb-gradflow check` reads them (`Reader`, the thresholds the
hook recorded) and scored per kind: false alarms on healthy runs, misses on
sick runs, and the step of the first correct alert as a share of the run.

Reference labels, with their sources:

* healthy: the training loss (Keras' own running mean, per batch) is finite
  and its mean over the last 50 steps is below 98% of its mean over the
  first 10 (the network learns) — the loss curve, nothing else. (The probe
  loss is reported too; in inference mode it is unfair to BatchNormalization
  nets whose moving statistics are still warming up after 100 steps.)
* vanishing: on the probe batch at initialisation, the gradient RMS of the
  first layer's bias (dC/db = delta, the backward signal reaching that layer:
  Nielsen ch. 5's "speed of learning") is below 1/100 of the largest bias
  gradient RMS of the layers after it (Nielsen measures ~100x over three
  sigmoid layers), or the first layer gets no gradient at all (None from the
  tape).
* nonfinite: the probe loss or a weight is NaN/Inf at some step.
* exploding: the tape's global gradient norm at some step exceeds 100x the
  median of the norms of the steps before it (finite).
* dead_units: more than half of the probe layer's units output zero on every
  probe input at the end (CS231n's dead ReLU).
* saturation: more than half of the probe layer's unit activations have
  |f'(z)| < 0.0591 x max |f'| on the probe inputs at the end (tanh:
  |a| > 0.97, Karpathy).

`--rescore` re-reads saved runs: rules can be changed and scored again in
seconds, since alerts are decided when the logs are read.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import diagnosis_cases  # noqa: E402

KINDS = ("vanishing", "exploding", "nonfinite", "saturation", "dead_units")
PROBE = 256


# ------------------------------------------------------------------ reference
def _bias_gradients(model, x, y):
    """[(variable path, gradient RMS or None)] of the biases, in the model's order."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    variables = model.trainable_variables
    grads = tape.gradient(loss, [v.value for v in variables])
    out = []
    for v, g in zip(variables, grads):
        if not v.path.endswith("bias"):
            continue
        rms = None if g is None else float(tf.sqrt(tf.reduce_mean(tf.square(tf.cast(g, tf.float32)))))
        out.append((v.path, rms))
    return float(loss), out


def _probe_loss(model, x, y):
    return float(model.compute_loss(x=x, y=y, y_pred=model(x, training=False)))


def _derivative_stats(model, layer_name, x):
    """(dead fraction, saturated fraction) of a Dense layer's units on probe inputs."""
    import keras
    import tensorflow as tf

    layer = model.get_layer(layer_name)
    z = keras.Model(model.inputs, layer.output).predict(x, verbose=0)  # f(z) for Dense(activation=f)
    # Recompute z from the layer's input to differentiate f itself.
    inputs = keras.Model(model.inputs, layer.input).predict(x, verbose=0)
    pre = inputs @ layer.kernel.numpy() + layer.bias.numpy()
    pre_t = tf.constant(pre)
    with tf.GradientTape() as tape:
        tape.watch(pre_t)
        a = layer.activation(pre_t)
    derivative = np.abs(tape.gradient(a, pre_t).numpy())
    grid = tf.constant(np.linspace(-10, 10, 20001, dtype="float32"))
    with tf.GradientTape() as tape:
        tape.watch(grid)
        peak_out = layer.activation(grid)
    peak = float(np.max(np.abs(tape.gradient(peak_out, grid).numpy())))
    dead = float(np.mean(np.all(np.asarray(z) <= 0, axis=0)))
    saturated = float(np.mean(derivative < 0.0591 * peak))
    return dead, saturated


class _LossCurve:
    """Keras' running-mean training loss after every batch (one epoch)."""

    def __init__(self):
        import keras

        class Callback(keras.callbacks.Callback):
            def __init__(inner):
                super().__init__()
                inner.running = []

            def on_train_batch_end(inner, batch, logs=None):
                inner.running.append(float((logs or {}).get("loss", np.nan)))

        self.callback = Callback()

    def window_means(self, first=10, last=50):
        """(mean over the first `first` batches, mean over the last `last`)."""
        r = np.asarray(self.callback.running)
        n = len(r)
        if n <= first or n <= last:
            return float("nan"), float("nan")
        return float(r[first - 1]), float((n * r[-1] - (n - last) * r[n - last - 1]) / last)


class _StepReference:
    """A plain GradientTape on the probe batch after every step (the seeds' way)."""

    def __init__(self, x, y):
        import keras

        class Callback(keras.callbacks.Callback):
            def __init__(inner):
                super().__init__()
                inner.norms, inner.finite = [], []

            def on_train_batch_end(inner, batch, logs=None):
                import tensorflow as tf

                model = inner.model
                with tf.GradientTape() as tape:
                    loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
                grads = [g for g in tape.gradient(loss, [v.value for v in model.trainable_variables]) if g is not None]
                norm = float(tf.linalg.global_norm(grads))
                weights_finite = all(bool(np.all(np.isfinite(v.numpy()))) for v in model.trainable_variables)
                inner.norms.append(norm)
                inner.finite.append(bool(np.isfinite(float(loss))) and weights_finite and np.isfinite(norm))

        self.callback = Callback()


def reference_label(case, start, end, steps, curve=None):
    """(label, evidence dict) from the measurements, independent of tb_gradflow."""
    evidence = {"probe_loss_start": start["loss"], "probe_loss_end": end["loss"]}
    if curve is not None:
        evidence["train_loss_first_10"], evidence["train_loss_last_50"] = curve.window_means()
    biases = start["biases"]
    first_rms = biases[0][1] if biases else None
    later = [r for _, r in biases[1:] if r is not None]
    decay = None if first_rms is None or not later or max(later) == 0 else first_rms / max(later)
    evidence["first_bias_rms_over_later_max"] = decay
    evidence["first_layer_without_gradient"] = bool(biases) and first_rms is None
    if steps is not None:
        evidence["nonfinite_at_step"] = next((i + 1 for i, ok in enumerate(steps.finite) if not ok), None)
        norms = np.asarray(steps.norms)
        growth = [norms[i] / np.median(norms[:i]) for i in range(5, len(norms))
                  if np.isfinite(norms[i]) and np.all(np.isfinite(norms[:i])) and np.median(norms[:i]) > 0]
        evidence["max_step_norm_growth"] = float(max(growth)) if growth else None
    if "dead" in end:
        evidence["dead_fraction_end"], evidence["saturated_fraction_end"] = end["dead"], end["saturated"]

    expected = case.expected
    if expected == "healthy":
        first, last = evidence.get("train_loss_first_10", np.nan), evidence.get("train_loss_last_50", np.nan)
        ok = bool(np.isfinite(last) and last < 0.98 * first)
    elif expected == "vanishing":
        ok = evidence["first_layer_without_gradient"] or (decay is not None and decay < 1e-2)
    elif expected == "nonfinite":
        ok = evidence.get("nonfinite_at_step") is not None
    elif expected == "exploding":
        ok = (evidence.get("max_step_norm_growth") or 0) > 100
    elif expected == "dead_units":
        ok = evidence.get("dead_fraction_end", 0) > 0.5
    elif expected == "saturation":
        ok = evidence.get("saturated_fraction_end", 0) > 0.5
    else:
        raise ValueError(expected)
    return (expected if ok else "unconfirmed"), evidence


# ------------------------------------------------------------------ training
def run_case(case, logdir):
    import keras

    import tb_gradflow

    keras.utils.set_random_seed(0)
    model, x, y, batch_size, callbacks = case.build()
    xp, yp = x[:PROBE], y[:PROBE]
    start = {"loss": _probe_loss(model, xp, yp)}
    start["loss_train"], start["biases"] = _bias_gradients(model, xp, yp)
    timed = case.expected in ("nonfinite", "exploding")
    steps = _StepReference(xp, yp) if timed else None
    hook = tb_gradflow.GradFlow(logdir, run_name=case.name)
    curve = _LossCurve()
    began = time.perf_counter()
    # The reference runs after the hook's own batch-end work, outside the train step.
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=[hook, *callbacks, curve.callback] + ([steps.callback] if steps else []))
    seconds = time.perf_counter() - began
    end = {"loss": _probe_loss(model, xp, yp)}
    if case.probe_layer:
        end["dead"], end["saturated"] = _derivative_stats(model, case.probe_layer, xp)
    label, evidence = reference_label(case, start, end, steps.callback if steps else None, curve)
    n_steps = int(np.ceil(len(x) / batch_size))
    return {"case": case.name, "expected": case.expected, "family": case.family, "label": label,
            "steps": n_steps, "train_seconds": round(seconds, 1), "evidence": evidence}


# ------------------------------------------------------------------ scoring
def alerts_of(logdir, run):
    from tb_gradflow.reader import Reader

    return [a for a in Reader.for_logdir(logdir).alerts(run)]


def score(records, logdir):
    """Adds each record's alerts and returns the per-kind summary."""
    summary = {k: {"false_alarms": [], "misses": [], "caught": [], "first_alert_share": []} for k in KINDS}
    for record in records:
        alerts = alerts_of(logdir, record["case"]) if record.get("label") != "error" else []
        record["alerts"] = sorted({(a.kind, a.layer) for a in alerts})
        record["alert_kinds"] = sorted({a.kind for a in alerts})
        record["explanations"] = sorted({a.explanation for a in alerts if getattr(a, "explanation", "")})
        if record["label"] == "unconfirmed":
            continue
        if record["family"] == "healthy":
            for kind in record["alert_kinds"]:
                summary[kind]["false_alarms"].append(record["case"])
        else:
            kind = record["expected"]
            hits = [a for a in alerts if a.kind == kind]
            if hits:
                first = min(a.first_step for a in hits)
                record["first_correct_alert_step"] = first
                summary[kind]["caught"].append(record["case"])
                summary[kind]["first_alert_share"].append(round(first / record["steps"], 3))
            else:
                summary[kind]["misses"].append(record["case"])
            for other in set(record["alert_kinds"]) - {kind}:
                record.setdefault("other_kinds", []).append(other)
    return summary


def format_table(records, summary):
    lines = [f"{'case':<24} {'expected':<11} {'reference':<11} {'alerts':<40} first"]
    for r in records:
        first = r.get("first_correct_alert_step", "")
        lines.append(f"{r['case']:<24} {r['expected']:<11} {r['label']:<11} {','.join(r['alert_kinds']) or '-':<40} {first}")
    lines.append("")
    lines.append(f"{'kind':<11} {'false alarms':>12} {'misses':>7} {'caught':>7}  first alert (share of run)")
    for kind, s in summary.items():
        shares = ", ".join(f"{x:.2f}" for x in s["first_alert_share"]) or "-"
        lines.append(f"{kind:<11} {len(s['false_alarms']):>12} {len(s['misses']):>7} {len(s['caught']):>7}  {shares}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="only the cases that train in seconds")
    parser.add_argument("--cases", help="comma-separated case names")
    parser.add_argument("--logdir", help="where the runs go (default: a new temporary directory)")
    parser.add_argument("--rescore", metavar="DIR", help="score DIR's saved runs again, no training")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    args = parser.parse_args(argv)

    if args.rescore:
        logdir = args.rescore
        with open(os.path.join(logdir, "references.json")) as f:
            records = json.load(f)["records"]
    else:
        logdir = args.logdir or tempfile.mkdtemp(prefix="tb_gradflow_diagnosis_")
        names = args.cases.split(",") if args.cases else [
            n for n, c in diagnosis_cases.CASES.items() if c.fast or not args.fast]
        records = []
        for name in names:
            case = diagnosis_cases.CASES[name]
            print(f"training {name} ...", file=sys.stderr, flush=True)
            try:
                records.append(run_case(case, logdir))
            except Exception as e:  # a broken case is reported, the others still run
                records.append({"case": name, "expected": case.expected, "family": case.family, "label": "error",
                                "error": f"{type(e).__name__}: {e}"})
        with open(os.path.join(logdir, "references.json"), "w") as f:
            json.dump({"records": records}, f, indent=1)
    summary = score(records, logdir)
    result = {
        "benchmark": "diagnosis",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.processor() or platform.platform()}",
        "logdir": logdir,
        "records": records,
        "summary": {k: {"false_alarms": len(v["false_alarms"]), "misses": len(v["misses"]),
                        "caught": len(v["caught"]), "first_alert_share": v["first_alert_share"],
                        "false_alarm_cases": v["false_alarms"], "missed_cases": v["misses"]}
                    for k, v in summary.items()},
    }
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(format_table(records, summary))
    return result


if __name__ == "__main__":
    main()
