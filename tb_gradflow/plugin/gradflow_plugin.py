"""The "Gradient Flow" TensorBoard dashboard: routes (thin) and their `*_impl`.

Every route parses its query, calls one `*_impl` method and responds with
JSON via `http_util.Respond`. The `*_impl` methods take plain values and
return plain dicts, so tests call them directly. Errors:

* a missing or malformed parameter: 400 `{"error": "..."}`;
* an unknown run, statistic of a run, layer or step: 404 `{"error": "..."}`;
* data this version cannot interpret (e.g. written by a newer tb_gradflow):
  422 `{"error": "..."}`; anything unexpected is logged with its traceback on
  the server and answered 422 with the exception's type only. Never a 500,
  never a traceback in a response.

All data is read through TensorBoard's data provider (both loaders), via
`tb_gradflow.reader.Reader` for tb_gradflow's own series. See
docs/http_api.md for the routes. This module imports no TensorFlow.
"""

import base64
import logging
import math
import os
import threading

import numpy as np
from tensorboard import errors
from tensorboard.backend import http_util
from tensorboard.data import provider as tb_provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradflow import metadata
from tb_gradflow import reader as reader_lib
from tb_gradflow import rules
from tb_gradflow.plugin import cache as cache_lib
from tb_gradflow.plugin import downsample

logger = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_JSON = "application/json"

# "Keep every sample" for data provider reads; the loader makes TensorBoard
# keep them all (see loader.py), this only asks for what is kept.
_ALL_SAMPLES = 10**9

DEFAULT_STATISTIC = metadata.GRAD_NORM
DEFAULT_COLUMNS = 1000
MAX_COLUMNS = 8192

# Human names of the statistics, in picker order: the four first.
STATISTIC_LABELS = {
    metadata.GRAD_NORM: "gradient norm (L2)",
    metadata.GRAD_RMS: "gradient RMS",
    metadata.GRAD_MAX_ABS: "max |gradient|",
    metadata.UPDATE_RATIO: "update-to-weight ratio",
    metadata.GRAD_MEAN_ABS: "mean |gradient|",
    metadata.GRAD_NORM_INTERVAL_MAX: "gradient norm, interval max",
    metadata.GRAD_NORM_INTERVAL_MIN: "gradient norm, interval min",
    metadata.WEIGHT_NORM: "weight norm (L2)",
    metadata.NONFINITE_COUNT: "non-finite gradient elements",
    metadata.ZERO_FRACTION: "fraction of zero gradient elements",
    metadata.CLIP_FACTOR: "clip factor (applied / produced norm)",
}


HISTOGRAMS_PLUGIN = "histograms"
HISTOGRAM_KINDS = (metadata.HISTOGRAM_KIND_GRADIENT, metadata.HISTOGRAM_KIND_LOG10_MAGNITUDE)

# Bit i of a heatmap alert flag is rules.KINDS[i].
ALERT_BITS = {kind: 1 << i for i, kind in enumerate(rules.KINDS)}


# --------------------------------------------------------------------------- parsing
def _required(args, name):
    value = args.get(name)
    if value is None or value == "":
        raise errors.InvalidArgumentError(f"missing required parameter {name!r}")
    return value


def _int(args, name, default=None, minimum=None, maximum=None):
    raw = args.get(name)
    if raw is None or raw == "":
        if default is None:
            raise errors.InvalidArgumentError(f"missing required parameter {name!r}")
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise errors.InvalidArgumentError(f"parameter {name!r} must be an integer, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise errors.InvalidArgumentError(
            f"parameter {name!r} must be in [{minimum}, {maximum}], got {value}"
        )
    return value


def _bool(args, name, default):
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise errors.InvalidArgumentError(f"parameter {name!r} must be true or false, got {raw!r}")


def _columns(args):
    """The heatmap width a request asks for (1 ... MAX_COLUMNS)."""
    return _int(args, "columns", DEFAULT_COLUMNS, 1, MAX_COLUMNS)


def _statistic(args):
    statistic = args.get("statistic") or DEFAULT_STATISTIC
    if statistic not in metadata.STATISTICS:
        raise errors.InvalidArgumentError(
            f"unknown statistic {statistic!r}; known: {', '.join(metadata.STATISTICS)}"
        )
    return statistic


def _b64(array, dtype):
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _float(value):
    """A JSON-safe float: NaN/Inf become the strings json_util.Cleanse uses."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _layer_json(layer, index):
    return {
        "index": index,
        "name": layer.name,
        "class_name": layer.class_name,
        "activation": layer.activation,
        "depth": layer.depth,
        "parameter_count": layer.parameter_count,
        "has_gradient": layer.has_gradient,
    }


# --------------------------------------------------------------------------- plugin
class GradFlowPlugin(base_plugin.TBPlugin):
    """Gradient flow by depth and time: heatmap, profile, distribution, alerts."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._provider = context.data_provider
        self._cache = cache_lib.SeriesCache()
        self._static_lock = threading.Lock()

    # ---------------------------------------------------------------- TBPlugin
    def is_active(self):
        # TensorBoard lights the tab when data_plugin_names() meets the data
        # provider's list_plugins() (both loaders list "gradflow" because every
        # series sets DATA_CLASS_TENSOR); is_active is only the fallback.
        return False

    def data_plugin_names(self):
        return (metadata.PLUGIN_NAME,)

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Gradient Flow")

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_index_js,
            "/static/*": self._serve_static,
            "/runs": self._serve_runs,
            "/layers": self._serve_layers,
            "/heatmap": self._serve_heatmap,
            "/alert_cells": self._serve_alert_cells,
            "/profile": self._serve_profile,
            "/histogram": self._serve_histogram,
            "/alerts": self._serve_alerts,
            "/saturation": self._serve_saturation,
        }

    # ---------------------------------------------------------------- routes
    @wrappers.Request.application
    def _serve_index_js(self, request):
        return self._static_response(request, "index.js")

    @wrappers.Request.application
    def _serve_static(self, request):
        name = request.path.rsplit("/static/", 1)[-1]
        return self._static_response(request, name)

    @wrappers.Request.application
    def _serve_runs(self, request):
        return self._json(request, lambda ctx, eid, a: self.runs_impl(ctx, eid))

    @wrappers.Request.application
    def _serve_layers(self, request):
        return self._json(request, lambda ctx, eid, a: self.layers_impl(ctx, eid, _required(a, "run")))

    @wrappers.Request.application
    def _serve_heatmap(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.heatmap_impl(
                ctx,
                eid,
                _required(a, "run"),
                _statistic(a),
                columns=_columns(a),
                alerts=_bool(a, "alerts", True),
            ),
        )

    @wrappers.Request.application
    def _serve_alert_cells(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.alert_cells_impl(
                ctx, eid, _required(a, "run"), _statistic(a), columns=_columns(a)
            ),
        )

    @wrappers.Request.application
    def _serve_profile(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.profile_impl(
                ctx, eid, _required(a, "run"), _statistic(a), _int(a, "step", minimum=0)
            ),
        )

    @wrappers.Request.application
    def _serve_histogram(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.histogram_impl(
                ctx, eid, _required(a, "run"), _required(a, "layer"), _int(a, "step", minimum=0)
            ),
        )

    @wrappers.Request.application
    def _serve_alerts(self, request):
        return self._json(request, lambda ctx, eid, a: self.alerts_impl(ctx, eid, a.getlist("run") or None))

    @wrappers.Request.application
    def _serve_saturation(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.saturation_impl(
                ctx,
                eid,
                _required(a, "run"),
                a.get("statistic") or None,
                columns=_columns(a),
            ),
        )

    # ---------------------------------------------------------------- plumbing
    def _json(self, request, call):
        """Runs `call(ctx, experiment_id, args)`; answers JSON, errors included."""
        from tensorboard import plugin_util

        try:
            ctx = plugin_util.context(request.environ)
            eid = plugin_util.experiment_id(request.environ)
            body = call(ctx, eid, request.args)
            code = 200
        except errors.PublicError as e:
            body, code = {"error": str(e)}, e.http_code
        except metadata.UnsupportedVersionError as e:
            body, code = {"error": str(e)}, 422
        except Exception as e:  # Never a 500 or a traceback to the client.
            logger.exception("tb_gradflow: %s failed", request.path)
            body, code = {"error": f"cannot serve {request.path}: {type(e).__name__} (see the server log)"}, 422
        return http_util.Respond(request, body, _JSON, code=code)

    def _static_response(self, request, name):
        # Only names listed in the shipped directory are served: no path
        # arithmetic on user input, so no traversal.
        with self._static_lock:
            if not hasattr(self, "_static_names"):
                try:
                    self._static_names = frozenset(os.listdir(STATIC_DIR))
                except OSError:
                    self._static_names = frozenset()
        ext = os.path.splitext(name)[1]
        if name not in self._static_names or ext not in _CONTENT_TYPES:
            return http_util.Respond(request, {"error": f"Not found: no static file {name!r}"}, _JSON, code=404)
        with open(os.path.join(STATIC_DIR, name), "rb") as f:
            content = f.read()
        return http_util.Respond(request, content, _CONTENT_TYPES[ext])

    def _reader(self, experiment_id):
        return _CachingReader(self, experiment_id)

    def _listing(self, ctx, eid, plugin_name, run=None):
        result = self._provider.list_tensors(
            ctx,
            experiment_id=eid,
            plugin_name=plugin_name,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run]) if run is not None else None,
        )
        return result or {}

    def _run_listing(self, ctx, eid, run):
        """{tag: TensorTimeSeries} of a run's gradflow series; 404 without a layer table."""
        tags = self._listing(ctx, eid, metadata.PLUGIN_NAME, run).get(run, {})
        if metadata.LAYER_TABLE_TAG not in tags:
            raise errors.NotFoundError(f"run {run!r} has no tb_gradflow data")
        return tags

    @staticmethod
    def _stamp(series):
        return (series.max_step, series.max_wall_time)

    def _table(self, ctx, eid, run, tags):
        stamp = self._stamp(tags[metadata.LAYER_TABLE_TAG])
        return self._cache.get_or_compute(
            ("table", eid, run), stamp, lambda: self._reader(eid).layer_table(run, ctx)
        )

    def _series(self, ctx, eid, run, statistic, tags, n_layers):
        tag = metadata.layer_statistic_tag(statistic)
        if tag not in tags:
            raise errors.NotFoundError(f"run {run!r} has no statistic {statistic!r}")
        stamp = (self._stamp(tags[tag]), n_layers)
        return self._cache.get_or_compute(
            ("series", eid, run, statistic),
            stamp,
            lambda: self._reader(eid).layer_series(run, statistic, ctx, n_layers=n_layers),
            size=lambda s: s.values.nbytes + s.steps.nbytes,
        )

    def _verdicts(self, ctx, eid, run, tags):
        """(steps, {kind: (fired, value)}) or None when the run lacks a rule input."""
        if not _has_rule_inputs(tags):
            return None
        steps, verdicts, _ = self._reader(eid).verdicts(run, ctx)
        return steps, verdicts

    # ---------------------------------------------------------------- implementations
    def runs_impl(self, ctx, experiment_id):
        """Runs with tb_gradflow data and what each holds."""
        listing = self._listing(ctx, experiment_id, metadata.PLUGIN_NAME)
        histogram_listing = self._listing(ctx, experiment_id, HISTOGRAMS_PLUGIN)
        prefix = metadata.layer_statistic_tag("")
        runs = []
        for run in sorted(listing):
            tags = listing[run]
            if metadata.LAYER_TABLE_TAG not in tags:
                continue
            table = self._table(ctx, experiment_id, run, tags)
            histogram_prefix = f"{metadata.TAG_PREFIX}/histograms/"
            runs.append(
                {
                    "run": run,
                    "layer_count": len(table.layers),
                    "statistics": [s for s in metadata.STATISTICS if prefix + s in tags],
                    "max_step": max((ts.max_step for t, ts in tags.items() if t.startswith(prefix)), default=None),
                    "update_freq": table.update_freq,
                    "histogram_freq": table.histogram_freq,
                    "source": table.source,
                    "capture_point": table.capture_point,
                    "has_histograms": any(
                        t.startswith(histogram_prefix) for t in histogram_listing.get(run, {})
                    ),
                    "has_saturation": any(metadata.activation_statistic_tag(a) in tags
                                          for a in metadata.ACTIVATION_STATISTICS),
                }
            )
        return {
            "runs": runs,
            "statistics": [
                {"name": s, "label": STATISTIC_LABELS.get(s, s)}
                for s in sorted(metadata.STATISTICS, key=list(STATISTIC_LABELS).index)
            ],
            "alert_kinds": [{"kind": k, "meaning": rules.VALUE_MEANING.get(k, k)} for k in rules.KINDS],
        }

    def layers_impl(self, ctx, experiment_id, run):
        """The run's layer table: layers in depth order, thresholds, provenance."""
        tags = self._run_listing(ctx, experiment_id, run)
        table = self._table(ctx, experiment_id, run, tags)
        return {
            "run": run,
            "layers": [_layer_json(layer, i) for i, layer in enumerate(table.layers)],
            "thresholds": dict(table.thresholds),
            "update_freq": table.update_freq,
            "histogram_freq": table.histogram_freq,
            "source": table.source,
            "capture_point": table.capture_point,
        }

    def heatmap_impl(self, ctx, experiment_id, run, statistic, columns=DEFAULT_COLUMNS, alerts=True):
        """One statistic of one run as a [columns x layers] matrix, downsampled.

        See docs/http_api.md (/heatmap) for the response; the arrays are
        little-endian base64 so a 300 x 8192 matrix stays a few MB and parses
        without a JSON number per cell.
        """
        tags = self._run_listing(ctx, experiment_id, run)
        # The finished response is cached too: a revisit or a second tab costs
        # no downsampling or encoding until the run gets new data.
        return self._cache.get_or_compute(
            ("heatmap", experiment_id, run, statistic, columns, alerts),
            _run_stamp(tags),
            lambda: self._heatmap(ctx, experiment_id, run, statistic, columns, alerts, tags),
            size=lambda r: len(r["values"]) + len(r.get("cell_index", "")) + len(r.get("alerts", "")),
        )

    def _heatmap(self, ctx, experiment_id, run, statistic, columns, alerts, tags):
        table = self._table(ctx, experiment_id, run, tags)
        n_layers = len(table.layers)
        series = self._series(ctx, experiment_id, run, statistic, tags, n_layers)
        picked = downsample.downsample_columns(series.values, columns)
        shown = picked.pick(series.values)
        steps = series.steps
        response = {
            "run": run,
            "statistic": statistic,
            "layers": [_layer_json(layer, i) for i, layer in enumerate(table.layers)],
            "sample_count": int(steps.size),
            "column_count": int(picked.starts.size),
            "downsampled": not picked.identity,
            "column_first_step": steps[picked.starts].tolist() if steps.size else [],
            "column_last_step": steps[picked.ends - 1].tolist() if steps.size else [],
            "values": _b64(shown, "<f4"),
            "log10_range": _log10_range(shown),
            "alert_kinds": list(rules.KINDS),
        }
        if not picked.identity:
            response["steps"] = steps.tolist()
            response["cell_index"] = _b64(picked.index, "<u4")
        if alerts:
            flags = self._alert_flags(ctx, experiment_id, run, tags, steps, n_layers, picked.starts)
            response["alerts"] = _b64(flags, "u1")
        return response

    def alert_cells_impl(self, ctx, experiment_id, run, statistic, columns=DEFAULT_COLUMNS):
        """Only the alert flags of `heatmap_impl`'s cells (same columns).

        Evaluating the rules over every logged step is the slow part of a cold
        heatmap; the frontend paints with `alerts=false` first and adds the
        marks from this route when they arrive.
        """
        tags = self._run_listing(ctx, experiment_id, run)
        table = self._table(ctx, experiment_id, run, tags)
        series = self._series(ctx, experiment_id, run, statistic, tags, len(table.layers))
        starts, _ = downsample.bucket_bounds(series.steps.size, columns)
        flags = self._alert_flags(ctx, experiment_id, run, tags, series.steps, len(table.layers), starts)
        return {
            "run": run,
            "statistic": statistic,
            "column_count": int(starts.size),
            "alert_kinds": list(rules.KINDS),
            "alerts": _b64(flags, "u1"),
        }

    def _alert_flags(self, ctx, experiment_id, run, tags, steps, n_layers, starts):
        """uint8 [columns, layers]: bit ALERT_BITS[kind] set where the kind fired in the column."""
        flags = np.zeros((steps.size, n_layers), np.uint8)
        result = self._verdicts(ctx, experiment_id, run, tags)
        if result is not None and steps.size and flags.shape[1]:
            verdict_steps, verdicts = result
            rows = np.searchsorted(steps, verdict_steps)
            ok = (rows < steps.size) & (steps[np.minimum(rows, steps.size - 1)] == verdict_steps)
            for kind, (fired, _) in verdicts.items():
                if kind in ALERT_BITS and fired.shape[1] == flags.shape[1]:
                    flags[rows[ok]] |= np.where(fired[ok], ALERT_BITS[kind], 0).astype(np.uint8)
        if steps.size == 0:
            return flags
        return np.bitwise_or.reduceat(flags, starts, axis=0)

    def profile_impl(self, ctx, experiment_id, run, statistic, step):
        """Exact per-layer values at the logged step nearest to `step`."""
        tags = self._run_listing(ctx, experiment_id, run)
        table = self._table(ctx, experiment_id, run, tags)
        series = self._series(ctx, experiment_id, run, statistic, tags, len(table.layers))
        if series.steps.size == 0:
            raise errors.NotFoundError(f"run {run!r} has no logged steps of {statistic!r}")
        i = _nearest(series.steps, step)
        at = int(series.steps[i])
        alerts = [[] for _ in table.layers]
        result = self._verdicts(ctx, experiment_id, run, tags)
        if result is not None:
            verdict_steps, verdicts = result
            j = np.flatnonzero(verdict_steps == at)
            if j.size:
                for kind, (fired, _) in verdicts.items():
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
            "values": [_float(v) for v in series.values[i]],
            "alerts": alerts,
        }

    def histogram_impl(self, ctx, experiment_id, run, layer, step):
        """The layer's gradient histograms at the histogram step nearest to `step`."""
        tags = self._run_listing(ctx, experiment_id, run)
        table = self._table(ctx, experiment_id, run, tags)
        match = [entry for entry in table.layers if entry.name == layer]
        if not match:
            raise errors.NotFoundError(f"run {run!r} has no layer {layer!r}")
        entry = match[0]
        wanted = {kind: metadata.histogram_tag(entry.depth, entry.name, kind) for kind in HISTOGRAM_KINDS}
        data = (
            self._provider.read_tensors(
                ctx,
                experiment_id=experiment_id,
                plugin_name=HISTOGRAMS_PLUGIN,
                downsample=_ALL_SAMPLES,
                run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=list(wanted.values())),
            )
            or {}
        ).get(run, {})
        base = {
            "run": run,
            "layer": layer,
            "requested_step": step,
            "tag": wanted[metadata.HISTOGRAM_KIND_GRADIENT],
            "tags": wanted,
        }
        if not any(data.get(tag) for tag in wanted.values()):
            return dict(base, available=False, reason=_no_histogram_reason(table, entry))
        primary = data.get(wanted[metadata.HISTOGRAM_KIND_GRADIENT]) or next(d for d in data.values() if d)
        primary = sorted(primary, key=lambda d: d.step)
        steps = np.array([d.step for d in primary], np.int64)
        at = int(steps[_nearest(steps, step)])
        kinds = {}
        for kind, tag in wanted.items():
            datum = [d for d in data.get(tag, []) if d.step == at]
            if datum:
                buckets = np.asarray(datum[-1].numpy, np.float64).reshape(-1, 3)
                kinds[kind] = [[_float(x) for x in row] for row in buckets]
        return dict(base, available=True, step=at, histogram_steps=steps.tolist(), buckets=kinds)

    def alerts_impl(self, ctx, experiment_id, runs=None):
        """Every alert (one per run, layer and kind), ordered by run, then first step."""
        listing = self._listing(ctx, experiment_id, metadata.PLUGIN_NAME)
        available = sorted(r for r, tags in listing.items() if metadata.LAYER_TABLE_TAG in tags)
        if runs is None:
            runs = available
        for run in runs:
            if run not in available:
                raise errors.NotFoundError(f"run {run!r} has no tb_gradflow data")
        out = []
        for run in runs:
            tags = listing[run]
            if not _has_rule_inputs(tags):
                continue
            # Reader.alerts is the one definition of a run's alerts (the CLI
            # reports the same rows); its rule evaluation is cached.
            alerts = self._cache.get_or_compute(
                ("alerts", experiment_id, run), _run_stamp(tags), lambda: self._reader(experiment_id).alerts(run, ctx)
            )
            for alert in alerts:
                row = alert.to_json()
                row["worst_value"] = _float(row["worst_value"])
                row["run"] = run
                out.append(row)
        return {
            "alerts": out,
            "kinds": {k: rules.VALUE_MEANING.get(k, k) for k in rules.KINDS},
        }

    def saturation_impl(self, ctx, experiment_id, run, statistic=None, columns=DEFAULT_COLUMNS):
        """Activation-saturation heatmap when the run holds such data, else available=false."""
        tags = self._run_listing(ctx, experiment_id, run)
        # Known statistics only, in metadata order (saturated fraction first).
        names = [s for s in metadata.ACTIVATION_STATISTICS if metadata.activation_statistic_tag(s) in tags]
        if not names:
            return {"run": run, "available": False}
        if statistic is None:
            statistic = names[0]
        if statistic not in names:
            raise errors.NotFoundError(f"run {run!r} has no saturation statistic {statistic!r}")
        table = self._table(ctx, experiment_id, run, tags)
        tag = metadata.activation_statistic_tag(statistic)
        n_layers = len(table.layers)

        series = self._cache.get_or_compute(
            ("saturation", experiment_id, run, statistic),
            (self._stamp(tags[tag]), n_layers),
            lambda: self._reader(experiment_id).activation_series(run, statistic, ctx, n_layers=n_layers),
            size=lambda s: s.values.nbytes,
        )
        picked = downsample.downsample_columns(series.values, columns)
        steps = series.steps
        response = {
            "run": run,
            "available": True,
            "statistics": names,
            "statistic": statistic,
            "layers": [_layer_json(layer, i) for i, layer in enumerate(table.layers)],
            "sample_count": int(steps.size),
            "column_count": int(picked.starts.size),
            "downsampled": not picked.identity,
            "column_first_step": steps[picked.starts].tolist() if steps.size else [],
            "column_last_step": steps[picked.ends - 1].tolist() if steps.size else [],
            "values": _b64(picked.pick(series.values), "<f4"),
        }
        if not picked.identity:
            response["steps"] = steps.tolist()
            response["cell_index"] = _b64(picked.index, "<u4")
        return response


class _CachingReader(reader_lib.Reader):
    """The Reader, with its rule evaluation (seconds on a long run) cached per
    run until the run gets new data. Everything else is the Reader's own."""

    def __init__(self, plugin, experiment_id):
        super().__init__(plugin._provider, experiment_id)
        self._plugin = plugin

    def verdicts(self, run, ctx=None, *args, **kwargs):
        ctx = self._ctx(ctx)
        tags = self._plugin._run_listing(ctx, self._experiment_id, run)
        return self._plugin._cache.get_or_compute(
            ("verdicts", self._experiment_id, run, args, tuple(sorted(kwargs.items()))),
            _run_stamp(tags),
            lambda: super(_CachingReader, self).verdicts(run, ctx, *args, **kwargs),
            size=_verdicts_size,
        )


def _verdicts_size(result):
    try:
        return sum(np.asarray(f).nbytes + np.asarray(v).nbytes for f, v in result[1].values())
    except Exception:  # a shape this version does not know: count it as small
        return 0


def _has_rule_inputs(tags):
    return all(metadata.layer_statistic_tag(s) in tags for s in rules.REQUIRED_STATISTICS)


def _run_stamp(tags):
    """Changes whenever any series of the run gets new data."""
    return (
        len(tags),
        max((ts.max_step for ts in tags.values()), default=None),
        max((ts.max_wall_time for ts in tags.values()), default=None),
    )


def _nearest(steps, step):
    """Index of the entry of sorted `steps` nearest to `step` (ties: the earlier)."""
    i = int(np.searchsorted(steps, step))
    if i >= steps.size:
        return steps.size - 1
    if i > 0 and step - steps[i - 1] <= steps[i] - step:
        return i - 1
    return i


def _log10_range(values):
    """[min, max] of log10 over the positive finite values, or None."""
    values = np.asarray(values, np.float64)
    good = values[np.isfinite(values) & (values > 0)]
    if good.size == 0:
        return None
    return [float(np.log10(good.min())), float(np.log10(good.max()))]


def _no_histogram_reason(table, layer):
    if not layer.has_gradient:
        return "this layer receives no gradient"
    if table.histogram_freq == 0:
        return "histograms were disabled (histogram_freq=0)"
    return "no histogram has been written for this layer yet"
