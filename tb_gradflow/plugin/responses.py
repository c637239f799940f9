"""The plugin's JSON responses, assembled from data already read: pure functions.

    >>> from tb_gradflow.plugin import responses
    >>> responses.json_float(float("nan"))
    'NaN'
    >>> responses.nearest(np.array([10, 20, 30]), 24)
    1

Nothing here reads data or knows about HTTP: the routes in gradflow_plugin.py
read through `tb_gradflow.reader.Reader` and hand the results to these
functions, so each response's shape is tested without a server.
docs/http_api.md describes every field.
"""

import base64
import math

import numpy as np

from tb_gradflow import metadata
from tb_gradflow import rules
from tb_gradflow.plugin import downsample
from tb_gradflow.reader import RULE_STATISTICS
from tb_gradflow.reader import has_rule_inputs

# Human names of the statistics, in picker order: the four most used first.
# A statistic without a label here is listed under its own name.
STATISTIC_LABELS = {
    metadata.GRAD_NORM: "gradient norm (L2)",
    metadata.GRAD_RMS: "gradient RMS",
    metadata.GRAD_MAX_ABS: "max |gradient|",
    metadata.UPDATE_RATIO: "update-to-weight ratio",
    "vanishing_signal": "backward signal ÷ later layers' (the vanishing rule)",
    metadata.GRAD_MEAN_ABS: "mean |gradient|",
    metadata.GRAD_NORM_INTERVAL_MAX: "gradient norm, interval max",
    metadata.GRAD_NORM_INTERVAL_MIN: "gradient norm, interval min",
    metadata.WEIGHT_NORM: "weight norm (L2)",
    metadata.NONFINITE_COUNT: "non-finite gradient elements",
    metadata.ZERO_FRACTION: "fraction of zero gradient elements",
    metadata.CLIP_FACTOR: "clip factor (applied / produced norm)",
}

# Bit i of a heatmap alert flag is rules.KINDS[i].
ALERT_BITS = {kind: 1 << i for i, kind in enumerate(rules.KINDS)}


def b64(array, dtype):
    """Little-endian base64 of an array: a 300 x 8192 matrix stays a few MB."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def json_float(value):
    """A JSON-safe float: NaN/Inf become the strings json_util.Cleanse uses."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def nearest(steps, step):
    """Index of the entry of sorted `steps` nearest to `step` (ties: the earlier)."""
    i = int(np.searchsorted(steps, step))
    if i >= steps.size:
        return steps.size - 1
    if i > 0 and step - steps[i - 1] <= steps[i] - step:
        return i - 1
    return i


def log10_range(values):
    """[min, max] of log10 over the positive finite values, or None."""
    values = np.asarray(values, np.float64)
    good = values[np.isfinite(values) & (values > 0)]
    if good.size == 0:
        return None
    return [float(np.log10(good.min())), float(np.log10(good.max()))]


def layer_json(layer, index):
    return {
        "index": index,
        "name": layer.name,
        "class_name": layer.class_name,
        "activation": layer.activation,
        "depth": layer.depth,
        "parameter_count": layer.parameter_count,
        "has_gradient": layer.has_gradient,
    }


def statistic_choices():
    """Every statistic (written, then the rules' quantities) with its label,
    labelled ones first in label order."""
    order = list(STATISTIC_LABELS)
    names = metadata.STATISTICS + tuple(RULE_STATISTICS)
    ranked = sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))
    return [{"name": s, "label": STATISTIC_LABELS.get(s, s)} for s in ranked]


def run_summary(run, tags, table, has_histograms):
    """One /runs entry: what a readable run holds."""
    prefix = metadata.layer_statistic_tag("")
    rule_statistics = list(RULE_STATISTICS) if has_rule_inputs(tags) else []
    return {
        "run": run,
        "layer_count": len(table.layers),
        "statistics": [s for s in metadata.STATISTICS if prefix + s in tags] + rule_statistics,
        "max_step": max((ts.max_step for t, ts in tags.items() if t.startswith(prefix)), default=None),
        "update_freq": table.update_freq,
        "histogram_freq": table.histogram_freq,
        "source": table.source,
        "capture_point": table.capture_point,
        "has_histograms": has_histograms,
        "has_saturation": any(metadata.activation_statistic_tag(a) in tags for a in metadata.ACTIVATION_STATISTICS),
    }


def runs(summaries, unreadable):
    """/runs: readable runs' summaries, the unreadable ones with reasons, the pickers' choices."""
    return {
        "runs": summaries,
        "unreadable": [u.to_json() for u in unreadable],
        "statistics": statistic_choices(),
        "alert_kinds": [{"kind": k, "meaning": rules.VALUE_MEANING.get(k, k)} for k in rules.KINDS],
    }


def layers(run, table):
    return {
        "run": run,
        "layers": [layer_json(layer, i) for i, layer in enumerate(table.layers)],
        "thresholds": dict(table.thresholds),
        "update_freq": table.update_freq,
        "histogram_freq": table.histogram_freq,
        "source": table.source,
        "capture_point": table.capture_point,
    }


def alert_flags(steps, n_layers, verdicts, starts):
    """uint8 [columns, layers]: bit ALERT_BITS[kind] set where the kind fired in the column.

    Args:
      steps: the series' logged steps (sorted), one per row before downsampling.
      verdicts: (verdict steps, {kind: (fired, value)}) from Reader.verdicts, or None.
      starts: first row of each column (downsample.bucket_bounds).
    """
    if verdicts is not None and steps.size and n_layers and np.array_equal(verdicts[0], steps):
        return _column_flags(verdicts[1], n_layers, starts, steps.size)
    flags = np.zeros((steps.size, n_layers), np.uint8)
    if verdicts is not None and steps.size and n_layers:
        verdict_steps, by_kind = verdicts
        rows = np.searchsorted(steps, verdict_steps)
        ok = (rows < steps.size) & (steps[np.minimum(rows, steps.size - 1)] == verdict_steps)
        for kind, (fired, _) in by_kind.items():
            if kind in ALERT_BITS and fired.shape[1] == n_layers:
                flags[rows[ok]] |= np.where(fired[ok], ALERT_BITS[kind], 0).astype(np.uint8)
    if steps.size == 0:
        return flags
    return np.bitwise_or.reduceat(flags, starts, axis=0)


def _column_flags(by_kind, n_layers, starts, n_rows):
    """`alert_flags` where the verdicts are on the series' own rows: each fired
    cell sets its kind's bit in its column directly (alerts are rare: no
    per-row flag matrix), or the kind's fired rows are OR-ed per column."""
    flags = np.zeros((starts.size, n_layers), np.uint8)
    column_of_row = np.repeat(np.arange(starts.size), np.diff(np.append(starts, n_rows)))
    for kind, (fired, _) in by_kind.items():
        if kind not in ALERT_BITS or fired.shape[1] != n_layers:
            continue
        count = np.count_nonzero(fired)
        if count == 0:
            continue
        if count <= fired.size // 16:
            rows, layers = np.nonzero(fired)
            flags[column_of_row[rows], layers] |= ALERT_BITS[kind]
        else:
            flags |= np.logical_or.reduceat(fired, starts, axis=0).astype(np.uint8) * np.uint8(ALERT_BITS[kind])
    return flags


def _matrix(series, columns):
    """The downsampled-matrix fields shared by /heatmap and /saturation."""
    picked = downsample.downsample_columns(series.values, columns)
    steps = series.steps
    shown = picked.pick(series.values)
    response = {
        "sample_count": int(steps.size),
        "column_count": int(picked.starts.size),
        "downsampled": not picked.identity,
        "column_first_step": steps[picked.starts].tolist() if steps.size else [],
        "column_last_step": steps[picked.ends - 1].tolist() if steps.size else [],
        "values": b64(shown, "<f4"),
    }
    if not picked.identity:
        response["steps"] = steps.tolist()
        response["cell_index"] = b64(picked.index, "<u4")
    return response, picked, shown


def heatmap(run, statistic, table, series, columns, verdicts=None, with_alerts=True):
    """/heatmap: one statistic of one run as a [columns x layers] matrix, downsampled.

    Args:
      verdicts: as for `alert_flags`; used when `with_alerts`.
    """
    response, picked, shown = _matrix(series, columns)
    response.update(
        run=run,
        statistic=statistic,
        layers=[layer_json(layer, i) for i, layer in enumerate(table.layers)],
        log10_range=log10_range(shown),
        alert_kinds=list(rules.KINDS),
    )
    if with_alerts:
        response["alerts"] = b64(alert_flags(series.steps, len(table.layers), verdicts, picked.starts), "u1")
    return response


def alert_cells(run, statistic, table, series, columns, verdicts):
    """/alert_cells: only the alert flags of `heatmap`'s cells (same columns)."""
    starts, _ = downsample.bucket_bounds(series.steps.size, columns)
    flags = alert_flags(series.steps, len(table.layers), verdicts, starts)
    return {
        "run": run,
        "statistic": statistic,
        "column_count": int(starts.size),
        "alert_kinds": list(rules.KINDS),
        "alerts": b64(flags, "u1"),
    }


def profile(run, statistic, table, series, step, verdicts=None):
    """/profile: exact per-layer values at the logged step nearest to `step`.

    `series` has at least one row (the reader drops non-numeric rows; the
    caller answers 404 for an empty series).
    """
    i = nearest(series.steps, step)
    at = int(series.steps[i])
    alerts = [[] for _ in table.layers]
    if verdicts is not None:
        verdict_steps, by_kind = verdicts
        j = np.flatnonzero(verdict_steps == at)
        if j.size:
            for kind, (fired, _) in by_kind.items():
                for layer in np.flatnonzero(fired[j[0]]):
                    if layer < len(alerts):
                        alerts[layer].append(kind)
    return {
        "run": run,
        "statistic": statistic,
        "requested_step": step,
        "step": at,
        "layers": [layer.name for layer in table.layers],
        "has_gradient": [layer.has_gradient for layer in table.layers],
        "values": [json_float(v) for v in series.values[i]],
        "alerts": alerts,
    }


def histogram(run, table, layer, step, tags, data):
    """/histogram: the layer's gradient histograms at the histogram step nearest to `step`.

    Args:
      layer: the layer's `Layer` entry of `table`.
      tags: {kind: tag} of the layer's histograms.
      data: {kind: [TensorDatum] sorted by step} (Reader.histograms).
    """
    base = {
        "run": run,
        "layer": layer.name,
        "requested_step": step,
        "tag": tags[metadata.HISTOGRAM_KIND_GRADIENT],
        "tags": tags,
    }
    primary = data.get(metadata.HISTOGRAM_KIND_GRADIENT) or next(iter(data.values()), None)
    if not primary:
        return dict(base, available=False, reason=_no_histogram_reason(table, layer))
    steps = np.array([d.step for d in primary], np.int64)
    at = int(steps[nearest(steps, step)])
    buckets = {}
    for kind, series in data.items():
        datum = [d for d in series if d.step == at]
        if datum:
            value = np.asarray(datum[-1].numpy)
            if value.dtype.kind in "fiu" and value.size % 3 == 0:
                rows = value.astype(np.float64).reshape(-1, 3)
                buckets[kind] = [[json_float(x) for x in row] for row in rows]
    return dict(base, available=True, step=at, histogram_steps=steps.tolist(), buckets=buckets)


def _no_histogram_reason(table, layer):
    if not layer.has_gradient:
        return "this layer receives no gradient"
    if table.histogram_freq == 0:
        return "histograms were disabled (histogram_freq=0)"
    return "no histogram has been written for this layer yet"


def alert_row(run, alert):
    row = alert.to_json()
    row["worst_value"] = json_float(row["worst_value"])
    row["run"] = run
    return row


def alerts(rows, unreadable):
    """/alerts: every alert row, the runs whose alerts could not be evaluated, the kinds."""
    return {
        "alerts": rows,
        "unreadable": [u.to_json() for u in unreadable],
        "kinds": {k: rules.VALUE_MEANING.get(k, k) for k in rules.KINDS},
    }


def saturation(run, table, names, statistic, series, columns):
    """/saturation: one activation statistic of one run, downsampled like /heatmap."""
    response, _, _ = _matrix(series, columns)
    response.update(
        run=run,
        available=True,
        statistics=names,
        statistic=statistic,
        layers=[layer_json(layer, i) for i, layer in enumerate(table.layers)],
    )
    return response
