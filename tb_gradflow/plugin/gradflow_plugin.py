"""The "Gradient Flow" TensorBoard dashboard: its HTTP routes.

    >>> from tensorboard.plugins import base_plugin
    >>> plugin = GradFlowPlugin(base_plugin.TBContext())
    >>> sorted(plugin.get_plugin_apps())[:3]
    ['/alert_cells', '/alerts', '/heatmap']

Three layers, as TensorBoard's hparams plugin is split:

* routes (here): parse the query (`params`), call one `*_impl` method, answer
  JSON via `http_util.Respond`;
* reading: every `*_impl` reads through one `tb_gradflow.reader.Reader`
  (TensorBoard's data provider, either loader) sharing the plugin's cache;
* assembly: `responses` turns what was read into the JSON body (pure functions).

Errors are JSON too: a missing or malformed parameter 400; an unknown run,
statistic, layer or step 404; a run whose data cannot be interpreted (newer
format version, corrupt layer table, no rows yet) 422 naming the run and the
reason; anything unexpected is logged with its traceback on the server and
answered 422 with the exception's type only. Never a 500, never a traceback
in a response. Routes over all runs (/runs, /alerts) list unreadable runs
apart and answer for the others: one broken run never changes another run's
responses. See docs/http_api.md. This module imports no TensorFlow.
"""

import logging

from tensorboard import errors
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradflow import metadata
from tb_gradflow import reader as reader_lib
from tb_gradflow import series_cache
from tb_gradflow.plugin import params
from tb_gradflow.plugin import responses
from tb_gradflow.plugin import static_files

logger = logging.getLogger(__name__)

_JSON = "application/json"


class GradFlowPlugin(base_plugin.TBPlugin):
    """Gradient flow by depth and time: heatmap, profile, distribution, alerts."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._provider = context.data_provider
        self._cache = series_cache.SeriesCache()

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
        return self._static(request, "index.js")

    @wrappers.Request.application
    def _serve_static(self, request):
        return self._static(request, request.path.rsplit("/static/", 1)[-1])

    @wrappers.Request.application
    def _serve_runs(self, request):
        return self._json(request, lambda ctx, eid, a: self.runs_impl(ctx, eid))

    @wrappers.Request.application
    def _serve_layers(self, request):
        return self._json(request, lambda ctx, eid, a: self.layers_impl(ctx, eid, params.required(a, "run")))

    @wrappers.Request.application
    def _serve_heatmap(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.heatmap_impl(
                ctx,
                eid,
                params.required(a, "run"),
                params.statistic(a),
                columns=params.columns(a),
                alerts=params.boolean(a, "alerts", True),
            ),
        )

    @wrappers.Request.application
    def _serve_alert_cells(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.alert_cells_impl(
                ctx, eid, params.required(a, "run"), params.statistic(a), columns=params.columns(a)
            ),
        )

    @wrappers.Request.application
    def _serve_profile(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.profile_impl(
                ctx, eid, params.required(a, "run"), params.statistic(a), params.step(a)
            ),
        )

    @wrappers.Request.application
    def _serve_histogram(self, request):
        return self._json(
            request,
            lambda ctx, eid, a: self.histogram_impl(
                ctx, eid, params.required(a, "run"), params.required(a, "layer"), params.step(a)
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
                ctx, eid, params.required(a, "run"), a.get("statistic") or None, columns=params.columns(a)
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
        except Exception as e:  # Never a 500 or a traceback to the client.
            logger.exception("tb_gradflow: %s failed", request.path)
            body, code = {"error": f"cannot serve {request.path}: {type(e).__name__} (see the server log)"}, 422
        return http_util.Respond(request, body, _JSON, code=code)

    def _static(self, request, name):
        found = static_files.read(name)
        if found is None:
            return http_util.Respond(request, {"error": f"Not found: no static file {name[:200]!r}"}, _JSON, code=404)
        content, content_type = found
        return http_util.Respond(request, content, content_type)

    def _reader(self, experiment_id):
        return reader_lib.Reader(self._provider, experiment_id, cache=self._cache)

    @staticmethod
    def _verdicts(reader, run, ctx, tags):
        """Reader.verdicts' (steps, {kind: (fired, value)}), or None when the
        run's alerts cannot be evaluated (it lacks a rule input)."""
        if not reader_lib.has_rule_inputs(tags):
            return None
        steps, verdicts, _ = reader.verdicts(run, ctx, listing={run: tags})  # no second listing
        return steps, verdicts

    # ---------------------------------------------------------------- implementations
    def runs_impl(self, ctx, experiment_id):
        """Readable runs and what each holds; unreadable runs with the reason."""
        reader = self._reader(experiment_id)
        listing = reader.listing(ctx)
        readable, unreadable = reader.survey(ctx, listing=listing)
        with_histograms = reader.runs_with_histograms(ctx) if readable else set()
        summaries = [
            responses.run_summary(run, listing[run], reader.layer_table(run, ctx, tags=listing[run]),
                                  run in with_histograms)
            for run in readable
        ]
        return responses.runs(summaries, unreadable)

    def layers_impl(self, ctx, experiment_id, run):
        """The run's layer table: layers in depth order, thresholds, provenance."""
        reader = self._reader(experiment_id)
        tags = reader.check_run(run, ctx)
        return responses.layers(run, reader.layer_table(run, ctx, tags=tags))

    def heatmap_impl(self, ctx, experiment_id, run, statistic, columns=params.DEFAULT_COLUMNS, alerts=True):
        """One statistic of one run as a [columns x layers] matrix (responses.heatmap)."""
        reader = self._reader(experiment_id)
        tags = reader.check_run(run, ctx)
        table = reader.layer_table(run, ctx, tags=tags)

        def assemble():
            series = reader.statistic_series(run, statistic, ctx, tags=tags)
            verdicts = self._verdicts(reader, run, ctx, tags) if alerts else None
            return responses.heatmap(run, statistic, table, series, columns, verdicts, with_alerts=alerts)

        # The finished response is cached too: a revisit or a second tab costs
        # no downsampling or encoding until the run gets new data.
        return self._cache.get_or_compute(
            (experiment_id, "heatmap", run, statistic, columns, alerts),
            reader_lib.run_stamp(tags),
            assemble,
            size=lambda r: len(r["values"]) + len(r.get("cell_index", "")) + len(r.get("alerts", "")),
        )

    def alert_cells_impl(self, ctx, experiment_id, run, statistic, columns=params.DEFAULT_COLUMNS):
        """Only the alert flags of `heatmap_impl`'s cells (same columns).

        Evaluating the rules over every logged step is the slow part of a cold
        heatmap; the frontend paints with `alerts=false` first and adds the
        marks from this route when they arrive.
        """
        reader = self._reader(experiment_id)
        tags = reader.check_run(run, ctx)
        table = reader.layer_table(run, ctx, tags=tags)
        series = reader.statistic_series(run, statistic, ctx, tags=tags)
        verdicts = self._verdicts(reader, run, ctx, tags)
        return responses.alert_cells(run, statistic, table, series, columns, verdicts)

    def profile_impl(self, ctx, experiment_id, run, statistic, step):
        """Exact per-layer values at the logged step nearest to `step`."""
        reader = self._reader(experiment_id)
        tags = reader.check_run(run, ctx)
        table = reader.layer_table(run, ctx, tags=tags)
        series = reader.statistic_series(run, statistic, ctx, tags=tags)
        if series.steps.size == 0:
            raise errors.NotFoundError(f"run {run!r} has no logged steps of {statistic!r}")
        return responses.profile(run, statistic, table, series, step, self._verdicts(reader, run, ctx, tags))

    def histogram_impl(self, ctx, experiment_id, run, layer, step):
        """The layer's gradient histograms at the histogram step nearest to `step`."""
        reader = self._reader(experiment_id)
        tags = reader.check_run(run, ctx)
        table = reader.layer_table(run, ctx, tags=tags)
        entry = next((entry for entry in table.layers if entry.name == layer), None)
        if entry is None:
            raise errors.NotFoundError(f"run {run!r} has no layer {layer[:200]!r}")
        tags = {kind: metadata.histogram_tag(entry.depth, entry.name, kind) for kind in reader_lib.GRADIENT_HISTOGRAM_KINDS}
        return responses.histogram(run, table, entry, step, tags, reader.histograms(run, entry, ctx))

    def alerts_impl(self, ctx, experiment_id, runs=None):
        """Every alert (one per run, layer and kind), ordered by run, then first step.

        Runs whose alerts cannot be evaluated are listed under "unreadable"
        with the reason; the other runs' rows are unaffected.
        """
        reader = self._reader(experiment_id)
        # Only the series the rules read: the Python loader's listing scans every row of each.
        listing = reader.listing(ctx, tags=reader_lib.RULE_TAGS)
        available = sorted(r for r, tags in listing.items() if metadata.LAYER_TABLE_TAG in tags)
        if runs is None:
            runs = available
        for run in runs:
            if run not in available:
                raise errors.NotFoundError(f"run {run[:200]!r} has no tb_gradflow data")
            if not reader_lib.has_rule_inputs(listing[run]):
                # Its other series say why it cannot be evaluated (no rows yet, or which inputs it lacks).
                listing[run] = reader.listing(ctx, run).get(run, listing[run])
        rows, unreadable = [], []
        # One batched read for every run's rule inputs instead of a few per run.
        reader.prefetch_rule_inputs(runs, ctx, listing)
        for run in runs:
            try:
                # Reader.alerts is the one definition of a run's alerts (the CLI
                # reports the same rows); its rule evaluation is cached.
                alerts = reader.alerts(run, ctx, listing)
            except reader_lib.UnreadableRunError as e:
                unreadable.append(reader_lib.UnreadableRun(run, e.reason))
                continue
            except Exception as e:  # a bug must not hide the other runs' alerts
                logger.exception("tb_gradflow: alerts of run %r failed", run)
                unreadable.append(reader_lib.UnreadableRun(run, f"reading failed ({type(e).__name__}; see the server log)"))
                continue
            rows.extend(responses.alert_row(run, alert) for alert in alerts)
        return responses.alerts(rows, unreadable)

    def saturation_impl(self, ctx, experiment_id, run, statistic=None, columns=params.DEFAULT_COLUMNS):
        """Activation-saturation heatmap when the run holds such data, else available=false."""
        reader = self._reader(experiment_id)
        tags = reader.check_run(run, ctx)
        names = reader.activation_statistics(run, ctx, tags=tags)
        if not names:
            return {"run": run, "available": False}
        if statistic is None:
            statistic = names[0]
        if statistic not in names:
            raise errors.NotFoundError(f"run {run!r} has no saturation statistic {statistic[:100]!r}")
        table = reader.layer_table(run, ctx, tags=tags)
        series = reader.activation_series(run, statistic, ctx, n_layers=len(table.layers), tags=tags)
        return responses.saturation(run, table, names, statistic, series, columns)
