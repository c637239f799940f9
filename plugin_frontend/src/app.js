// The Gradient Flow dashboard: run and statistic pickers, one heatmap per run
// on a shared colour scale, the per-layer profile and the layer's gradient
// distribution at the chosen step, the alerts table and (when its data
// exists) the saturation view.

import { AlertsTable } from "./alerts_table.js";
import { ApiError, decodeMatrix, getJson, uint8s } from "./api.js";
import { drawHistogram, drawProfile } from "./charts.js";
import {
  ALERT_COLORS, NONFINITE_RGB, NO_GRADIENT_RGB, RUN_COLORS, ZERO_RGB, rgbCss, viridisAt,
} from "./colormap.js";
import { clear, cssVar, el, nameLabel, setupCanvas } from "./dom.js";
import { decade, exact, integer, middle, toNumber, visibleName } from "./format.js";
import { HeatmapPanel, stepExtent } from "./heatmap.js";

const MAX_DEFAULT_RUNS = 8;

class App {
  constructor(root) {
    this.root = root;
    this.runs = [];
    this.statistics = [];
    this.alertMeanings = {};
    this.alerts = [];
    this.selectedRuns = new Set();
    this.statistic = "grad_norm";
    this.panels = new Map(); // run -> HeatmapPanel
    this.saturationPanels = new Map();
    this.selection = { run: null, layer: null, step: null };
    this.chosenAlert = null;
    this.generation = 0; // drops responses of superseded requests
    this.profileBoxes = [];
    this.painted = false;
    this._build();
  }

  // ------------------------------------------------------------------ layout
  _build() {
    this.status = el("div", { class: "status", attrs: { role: "status", "aria-live": "polite" } });
    this.statisticSelect = el("select", {
      attrs: { id: "statistic", "aria-label": "Statistic" },
      on: { change: () => this.setStatistic(this.statisticSelect.value) },
    });
    this.alignChosen = false;
    this.alignBox = el("input", {
      attrs: { type: "checkbox", id: "align-steps" },
      on: {
        change: () => {
          this.alignChosen = true;
          this.redraw();
        },
      },
    });
    this.runList = el("div", { class: "run-list", attrs: { role: "group", "aria-label": "Runs" } });
    // Runs the server could not read (cut-short or corrupt files, a newer
    // format): named with the reason, apart from the runs that are shown.
    this.unreadableNote = el("div", { class: "unreadable", attrs: { id: "unreadable", role: "note" } });
    this.unreadableNote.hidden = true;
    this.unreadable = new Map();
    this.legendCanvas = el("canvas", { class: "legend-canvas", attrs: { role: "img", "aria-label": "Colour scale" } });
    this.legendKeys = el("div", { class: "legend-keys" });
    this.legendTitle = el("div", { class: "legend-title" });
    const controls = el("aside", { class: "controls" }, [
      el("h1", { text: "Gradient Flow" }),
      el("label", { class: "control" }, [el("span", { text: "Statistic" }), this.statisticSelect]),
      el("div", { class: "control" }, [
        el("span", { text: "Runs" }),
        el("div", { class: "run-buttons" }, [
          el("button", { text: "all", attrs: { type: "button" }, on: { click: () => this.selectRuns(this.runs.map((r) => r.run)) } }),
          el("button", { text: "none", attrs: { type: "button" }, on: { click: () => this.selectRuns([]) } }),
          el("button", { text: "reload", attrs: { type: "button", title: "Read the logdir again" }, on: { click: () => this.reload() } }),
        ]),
        this.runList,
        this.unreadableNote,
      ]),
      el("label", { class: "control checkbox" }, [
        this.alignBox,
        el("span", { text: "same step axis for all runs" }),
      ]),
      el("div", { class: "legend" }, [this.legendTitle, this.legendCanvas, this.legendKeys]),
      this.status,
    ]);

    this.heatmaps = el("div", { class: "heatmaps" });
    this.heatmapSection = el("section", { class: "section", attrs: { id: "heatmaps" } }, [
      el("h2", { text: "Gradient flow by depth and step" }),
      el("p", {
        class: "hint",
        text: "Rows are layers from input (top) to output; columns are logged steps. Hover for exact values, click a cell to pick its step and layer.",
      }),
      this.heatmaps,
    ]);

    this.profileTitle = el("span", { class: "panel-meta" });
    this.profileCanvas = el("canvas", { class: "chart", attrs: { role: "img", "aria-label": "Per-layer profile" } });
    this.profileLegend = el("div", { class: "run-legend" });
    this.profilePanel = el("section", { class: "panel", attrs: { id: "profile" } }, [
      el("header", { class: "panel-header" }, [el("h2", { text: "Profile by depth" }), this.profileTitle]),
      this.profileCanvas,
      this.profileLegend,
    ]);
    this.profileCanvas.addEventListener("mousemove", (e) => this._profileHover(e));
    this.profileCanvas.addEventListener("mouseleave", () => this.hideTooltip());

    this.distTitle = el("span", { class: "panel-meta" });
    this.distBody = el("div", { class: "dist-body" });
    this.distLink = el("a", { class: "dist-link", attrs: { target: "_parent" } });
    this.distPanel = el("section", { class: "panel", attrs: { id: "distribution" } }, [
      el("header", { class: "panel-header" }, [el("h2", { text: "Gradient distribution" }), this.distTitle]),
      this.distBody,
      this.distLink,
    ]);

    this.alertsTable = new AlertsTable({ onChoose: (alert) => this.focusAlert(alert) });

    this.saturation = el("div", { class: "heatmaps" });
    this.saturationStatistic = null;
    this.saturationSelect = el("select", {
      class: "inline-select",
      attrs: { "aria-label": "Activation statistic" },
      on: {
        change: () => {
          this.saturationStatistic = this.saturationSelect.value;
          this.loadSaturation();
        },
      },
    });
    this.saturationHint = el("p", { class: "hint" });
    this.saturationSection = el("section", { class: "section", attrs: { id: "saturation" } }, [
      el("header", { class: "panel-header" }, [el("h2", { text: "Activation saturation" }), this.saturationSelect]),
      this.saturationHint,
      this.saturation,
    ]);
    this.saturationSection.hidden = true;

    this.tooltip = el("div", { class: "tooltip", attrs: { role: "tooltip" } });
    this.tooltip.hidden = true;

    this.main = el("main", { class: "main" }, [
      this.heatmapSection,
      el("div", { class: "details" }, [this.profilePanel, this.distPanel]),
      this.alertsTable.element,
      this.saturationSection,
    ]);
    this.empty = el("div", { class: "empty-state" });
    this.empty.hidden = true;
    this.root.append(el("div", { class: "layout" }, [controls, this.main]), this.empty, this.tooltip);

    let lastWidth = 0;
    this.resizeObserver = new ResizeObserver(() => {
      const width = this.heatmaps.clientWidth;
      if (Math.abs(width - lastWidth) < 2) return;
      lastWidth = width;
      clearTimeout(this.resizeTimer);
      this.resizeTimer = setTimeout(() => this.onResize(), 120);
    });
    this.resizeObserver.observe(this.heatmaps);
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.redraw());
  }

  setStatus(text, isError = false) {
    this.status.textContent = text;
    this.status.classList.toggle("error", isError);
  }

  // ------------------------------------------------------------------ loading
  async start() {
    this.setStatus("Loading runs…");
    let listing;
    try {
      listing = await getJson("runs");
    } catch (e) {
      this.setStatus(`Could not list runs: ${e.message}`, true);
      return;
    }
    this.runs = listing.runs;
    this.statistics = listing.statistics;
    for (const k of listing.alert_kinds) this.alertMeanings[k.kind] = k.meaning;
    this.showUnreadable(listing.unreadable || []);
    if (!this.runs.length) {
      this.main.hidden = true;
      this.empty.hidden = false;
      this.empty.append(
        el("h2", { text: "No gradient flow data in this logdir yet" }),
        el("p", { text: "Train with the tb_gradflow.GradFlow callback, e.g. model.fit(x, y, callbacks=[tb_gradflow.GradFlow(\"logs/run1\")]), then reload." }),
      );
      if (this.unreadable.size) this.empty.append(this.unreadableNote);
      this.setStatus("");
      return;
    }
    const defaults = this.runs.slice(0, MAX_DEFAULT_RUNS).map((r) => r.run);
    for (const run of defaults) this.selectedRuns.add(run);
    this._fillPickers();
    // Heatmaps first: the alerts need the rules run over every logged step,
    // which on a cold server takes longer than reading the values.
    await this.loadHeatmaps();
    this._defaultSelection();
    await this.loadAlerts();
    this.loadSaturation();
    const first = this.alerts.find((a) => this.selectedRuns.has(a.run));
    if (first && !this.userChose) this.focusAlert(first, false);
  }

  async reload() {
    this.panels.forEach((p) => p.element.remove());
    this.panels.clear();
    this.saturationPanels.forEach((p) => p.element.remove());
    this.saturationPanels.clear();
    try {
      const listing = await getJson("runs");
      this.runs = listing.runs;
      this.unreadable.clear();
      this.showUnreadable(listing.unreadable || []);
    } catch (e) {
      this.setStatus(`Could not list runs: ${e.message}`, true);
      return;
    }
    const known = new Set(this.runs.map((r) => r.run));
    for (const run of [...this.selectedRuns]) if (!known.has(run)) this.selectedRuns.delete(run);
    this._fillPickers();
    await Promise.all([this.loadHeatmaps(), this.loadAlerts()]);
    this.loadSaturation();
    this.loadDetails();
  }

  runColor(run) {
    const i = this.runs.findIndex((r) => r.run === run);
    return RUN_COLORS[(i < 0 ? 0 : i) % RUN_COLORS.length];
  }

  _fillPickers() {
    clear(this.statisticSelect);
    const available = new Set(this.runs.flatMap((r) => r.statistics));
    for (const s of this.statistics) {
      if (!available.has(s.name)) continue;
      this.statisticSelect.append(el("option", { text: s.label, attrs: { value: s.name } }));
    }
    if (!available.has(this.statistic) && available.size) this.statistic = [...available][0];
    this.statisticSelect.value = this.statistic;

    clear(this.runList);
    for (const info of this.runs) {
      const box = el("input", {
        attrs: { type: "checkbox", "data-run": info.run },
        on: { change: () => this.toggleRun(info.run, box.checked) },
      });
      box.checked = this.selectedRuns.has(info.run);
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = this.runColor(info.run);
      this.runList.append(
        el("label", { class: "run-item", title: `${info.layer_count} layers, last step ${info.max_step}` }, [
          box,
          swatch,
          nameLabel(info.run, { cls: "run-name name" }),
        ]),
      );
    }
  }

  statisticLabel() {
    const s = this.statistics.find((x) => x.name === this.statistic);
    return s ? s.label : this.statistic;
  }

  orderedSelection() {
    return this.runs.map((r) => r.run).filter((run) => this.selectedRuns.has(run));
  }

  columnsWanted() {
    return Math.min(8192, Math.ceil(HeatmapPanel.plotPixels(this.heatmaps.clientWidth || 800) / 128) * 128);
  }

  async loadHeatmaps() {
    const generation = ++this.generation;
    const runs = this.orderedSelection();
    this.columns = this.columnsWanted();
    // Panels in run order; unselected ones leave the page.
    for (const [run, panel] of this.panels) {
      if (!this.selectedRuns.has(run)) {
        panel.element.remove();
        this.panels.delete(run);
      }
    }
    for (const run of runs) {
      if (!this.panels.has(run)) {
        this.panels.set(
          run,
          new HeatmapPanel({
            run,
            onHover: (hit, e) => this.showCellTooltip(hit, e),
            onLeave: () => this.hideTooltip(),
            onClick: (hit) => {
              this.userChose = true;
              this.choose({ run: hit.run, layer: hit.layer.name, step: hit.step });
            },
          }),
        );
      }
      this.heatmaps.append(this.panels.get(run).element);
    }
    if (!runs.length) {
      this.setStatus("Select a run.");
      this.drawLegend(null);
      return;
    }
    this.setStatus(`Loading ${this.statisticLabel()}…`);
    const started = performance.now();
    await Promise.all(
      runs.map(async (run) => {
        try {
          // Paint first; the alert marks (the rules evaluated over every
          // logged step, slow on a cold cache) follow from /alert_cells.
          const response = await getJson("heatmap", {
            run, statistic: this.statistic, columns: this.columns, alerts: false,
          });
          if (generation !== this.generation) return;
          this.panels.get(run)?.setData(decodeMatrix(response));
        } catch (e) {
          if (generation !== this.generation) return;
          this.panels.get(run)?.setError(e instanceof ApiError && e.status === 404 ? `No ${this.statisticLabel()} in this run.` : e.message);
        }
      }),
    );
    if (generation !== this.generation) return;
    this.redraw();
    this.setStatus(`${runs.length} run${runs.length === 1 ? "" : "s"} · ${this.statisticLabel()} · ${Math.round(performance.now() - started)} ms`);
    this.loadAlertCells(generation, runs);
  }

  async loadAlertCells(generation, runs) {
    await Promise.all(
      runs.map(async (run) => {
        let response;
        try {
          response = await getJson("alert_cells", { run, statistic: this.statistic, columns: this.columns });
        } catch (e) {
          return; // the heatmap stays usable without its marks
        }
        const panel = this.panels.get(run);
        if (generation !== this.generation || !panel || !panel.matrix) return;
        if (response.column_count !== panel.matrix.nColumns) return;
        panel.setAlerts(uint8s(response.alerts), response.alert_kinds);
        this.redraw();
      }),
    );
    if (generation === this.generation && !document.body.dataset.alertsPainted) {
      document.body.dataset.alertsPainted = "true";
      performance.mark("gradflow:alerts-painted");
    }
  }

  async loadAlerts() {
    try {
      const response = await getJson("alerts");
      this.alerts = response.alerts;
      Object.assign(this.alertMeanings, response.kinds);
      this.showUnreadable(response.unreadable || []);
    } catch (e) {
      this.alerts = [];
      this.setStatus(`Could not load alerts: ${e.message}`, true);
    }
    this.alertsTable.set(this.alerts, this.alertMeanings, this.selectedRuns);
  }

  async loadSaturation() {
    const runs = this.orderedSelection().filter((run) => this.runs.find((r) => r.run === run)?.has_saturation);
    for (const [run, panel] of this.saturationPanels) {
      if (!runs.includes(run)) {
        panel.element.remove();
        this.saturationPanels.delete(run);
      }
    }
    this.saturationSection.hidden = runs.length === 0;
    if (!runs.length) return;
    await Promise.all(
      runs.map(async (run) => {
        let panel = this.saturationPanels.get(run);
        if (!panel) {
          panel = new HeatmapPanel({
            run,
            linear: true,
            onHover: (hit, e) => this.showCellTooltip(hit, e, this.saturationStatistic || "saturation"),
            onLeave: () => this.hideTooltip(),
            onClick: (hit) => this.choose({ run: hit.run, layer: hit.layer.name, step: hit.step }),
          });
          this.saturationPanels.set(run, panel);
        }
        this.saturation.append(panel.element);
        try {
          const response = await getJson("saturation", {
            run, columns: this.columns, statistic: this.saturationStatistic || undefined,
          });
          if (response.available) {
            panel.setData(decodeMatrix(response));
            this._fillSaturationPicker(response.statistics, response.statistic);
          } else {
            panel.setError("No activation statistics in this run.");
          }
        } catch (e) {
          panel.setError(e.message);
        }
      }),
    );
    this.redraw();
  }

  _fillSaturationPicker(statistics, current) {
    const have = [...this.saturationSelect.options].map((o) => o.value).join("\n");
    if (have !== statistics.join("\n")) {
      clear(this.saturationSelect);
      for (const name of statistics) this.saturationSelect.append(el("option", { text: name.replace(/_/g, " "), attrs: { value: name } }));
    }
    this.saturationStatistic = current;
    this.saturationSelect.value = current;
  }

  /** Linear colour domain of the saturation panels: [0, 1] for fractions, else their range. */
  linearDomain(panels) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const panel of panels) {
      for (const v of panel.matrix ? panel.matrix.values : []) {
        if (Number.isFinite(v)) {
          lo = Math.min(lo, v);
          hi = Math.max(hi, v);
        }
      }
    }
    if (!Number.isFinite(lo)) return [0, 1];
    if (lo >= 0 && hi <= 1) return [0, 1];
    return hi > lo ? [lo, hi] : [lo, lo + 1];
  }

  // ------------------------------------------------------------------ drawing
  sharedDomain(panels) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const panel of panels) {
      const range = panel.matrix && panel.matrix.log10Range;
      if (range) {
        lo = Math.min(lo, range[0]);
        hi = Math.max(hi, range[1]);
      } else if (panel.matrix) {
        for (const v of panel.matrix.values) {
          if (Number.isFinite(v) && v > 0) {
            lo = Math.min(lo, Math.log10(v));
            hi = Math.max(hi, Math.log10(v));
          }
        }
      }
    }
    if (!Number.isFinite(lo)) return null;
    lo = Math.floor(lo);
    hi = Math.ceil(hi);
    if (hi <= lo) hi = lo + 1;
    return [lo, hi];
  }

  sharedSteps(panels) {
    let s0 = Infinity;
    let s1 = -Infinity;
    for (const panel of panels) {
      const extent = panel.matrix && stepExtent(panel.matrix);
      if (extent) {
        s0 = Math.min(s0, extent[0]);
        s1 = Math.max(s1, extent[1]);
      }
    }
    return Number.isFinite(s0) ? [s0, s1 > s0 ? s1 : s0 + 1] : null;
  }

  /** One step axis for all runs: the user's choice, else when their lengths are comparable. */
  alignSteps(panels) {
    if (this.alignChosen) return this.alignBox.checked;
    const spans = panels.map((p) => p.matrix && stepExtent(p.matrix)).filter(Boolean).map((e) => e[1]);
    const auto = spans.length < 2 || Math.max(...spans) <= 3 * Math.min(...spans);
    this.alignBox.checked = auto;
    return auto;
  }

  redraw() {
    const width = this.heatmaps.clientWidth || 800;
    const panels = [...this.panels.values()];
    const domain = this.sharedDomain(panels);
    const steps = this.sharedSteps(panels);
    this.domain = domain;
    const saturation = [...this.saturationPanels.values()];
    const gutter = Math.max(0, ...[...panels, ...saturation].map((p) => p.gutterWidth()));
    const align = this.alignSteps(panels);
    if (domain && steps) {
      for (const panel of panels) {
        const own = align ? steps : stepExtent(panel.matrix || { nColumns: 0 });
        if (own) panel.draw({ width, domain, steps: own, selection: this.selection, gutter });
      }
    }
    this.drawLegend(domain);
    const satDomain = this.linearDomain(saturation);
    const satSteps = this.sharedSteps(saturation);
    if (saturation.length) {
      const [a, b] = satDomain;
      this.saturationHint.textContent =
        `${(this.saturationStatistic || "").replace(/_/g, " ")} per layer and step, linear colour scale from ${exact(a)} (dark) to ${exact(b)} (yellow); grey: layer not captured.`;
    }
    if (satSteps) {
      for (const panel of saturation) panel.draw({ width, domain: satDomain, steps: satSteps, selection: this.selection, gutter });
    }
    this.drawProfile();
    if (domain && steps && !this.painted) {
      this.painted = true;
      document.body.dataset.heatmapPainted = "true";
      performance.mark("gradflow:first-paint");
    }
  }

  drawLegend(domain) {
    const width = Math.max(160, this.legendCanvas.parentElement.clientWidth || 200);
    const height = 46;
    const ctx = setupCanvas(this.legendCanvas, width, height);
    ctx.clearRect(0, 0, width, height);
    clear(this.legendKeys);
    if (!domain) {
      this.legendTitle.textContent = "";
      return;
    }
    this.legendTitle.textContent = `colour: log₁₀ ${this.statisticLabel()}, shared by all runs`;
    const [lo, hi] = domain;
    const x0 = 8;
    const barW = width - 16;
    for (let i = 0; i < barW; i++) {
      ctx.fillStyle = rgbCss(viridisAt(i / (barW - 1)));
      ctx.fillRect(x0 + i, 4, 1.5, 16);
    }
    ctx.fillStyle = cssVar("--muted", "#777");
    ctx.strokeStyle = ctx.fillStyle;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = Math.max(1, Math.ceil((hi - lo) / Math.max(1, Math.floor(barW / 38))));
    for (let d = lo; d <= hi; d += every) {
      const x = x0 + ((d - lo) / (hi - lo)) * (barW - 1);
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, 20);
      ctx.lineTo(Math.round(x) + 0.5, 25);
      ctx.stroke();
      ctx.fillText(decade(d), Math.min(Math.max(x, 12), width - 12), 27);
    }
    const key = (label, style) =>
      el("span", { class: "legend-key" }, [el("span", { class: "key-swatch", style }), label]);
    this.legendKeys.append(
      key("NaN / Inf", { background: rgbCss(NONFINITE_RGB) }),
      key("exactly 0", { background: rgbCss(ZERO_RGB) }),
      key("no gradient", { background: rgbCss(NO_GRADIENT_RGB) }),
    );
    // The gradient kinds always; other kinds (activation rules) when a cell carries them.
    const shown = new Set(["vanishing", "exploding", "nonfinite"]);
    for (const panel of this.panels.values()) {
      const m = panel.matrix;
      if (!m || !m.alerts) continue;
      let bits = 0;
      for (let i = 0; i < m.alerts.length; i++) bits |= m.alerts[i];
      m.alertKinds.forEach((kind, bit) => {
        if (bits & (1 << bit)) shown.add(kind);
      });
    }
    for (const kind of [...shown].filter((k) => k in ALERT_COLORS)) {
      this.legendKeys.append(
        key(`${kind === "nonfinite" ? "non-finite" : kind.replace("_", " ")} alert`, {
          background: kind === "nonfinite" ? rgbCss(NONFINITE_RGB) : rgbCss(viridisAt(kind === "vanishing" ? 0.1 : 0.55)),
          outline: `2px solid ${ALERT_COLORS[kind]}`,
          "outline-offset": "-2px",
        }),
      );
    }
  }

  onResize() {
    if (!this.panels.size) return;
    const downsampled = [...this.panels.values()].some((p) => p.matrix && p.matrix.downsampled);
    if (downsampled && this.columnsWanted() !== this.columns) this.loadHeatmaps();
    else this.redraw();
  }

  // ------------------------------------------------------------------ interaction
  toggleRun(run, on) {
    if (on) this.selectedRuns.add(run);
    else this.selectedRuns.delete(run);
    this.afterRunChange();
  }

  selectRuns(runs) {
    this.selectedRuns = new Set(runs);
    for (const box of this.runList.querySelectorAll("input[type=checkbox]")) {
      box.checked = this.selectedRuns.has(box.dataset.run);
    }
    this.afterRunChange();
  }

  async afterRunChange() {
    this.alertsTable.set(this.alerts, this.alertMeanings, this.selectedRuns);
    if (this.selection.run && !this.selectedRuns.has(this.selection.run)) {
      this.selection = { run: null, layer: null, step: this.selection.step };
    }
    await this.loadHeatmaps();
    this.loadSaturation();
    // The inspected run was deselected: inspect one that is shown instead of
    // leaving its distribution on screen.
    if (this.selection.run) this.loadDetails();
    else this._defaultSelection();
  }

  async setStatistic(name) {
    this.statistic = name;
    await this.loadHeatmaps();
    this.loadDetails();
  }

  _defaultSelection() {
    const panel = [...this.panels.values()].find((p) => p.matrix && p.matrix.nColumns);
    if (panel) {
      const m = panel.matrix;
      this.choose({ run: panel.run, layer: m.layers[0].name, step: m.lastStep[m.nColumns - 1] });
    }
  }

  choose(selection) {
    this.selection = selection;
    this.redraw();
    this.loadDetails();
  }

  focusAlert(alert, scroll = true) {
    if (scroll) this.userChose = true;
    this.chosenAlert = alert;
    this.alertsTable.highlight(alert);
    const focus = () => {
      this.choose({ run: alert.run, layer: alert.layer, step: alert.first_step });
      const panel = this.panels.get(alert.run);
      if (panel && scroll) panel.element.scrollIntoView({ behavior: "smooth", block: "center" });
      if (panel) {
        panel.element.classList.remove("flash");
        void panel.element.offsetWidth; // restart the animation
        panel.element.classList.add("flash");
      }
    };
    if (!this.selectedRuns.has(alert.run)) {
      this.selectedRuns.add(alert.run);
      const box = this.runList.querySelector(`input[data-run="${CSS.escape(alert.run)}"]`);
      if (box) box.checked = true;
      this.alertsTable.set(this.alerts, this.alertMeanings, this.selectedRuns);
      this.alertsTable.highlight(alert);
      this.loadHeatmaps().then(focus);
    } else {
      focus();
    }
  }

  async loadDetails() {
    const { run, layer, step } = this.selection;
    if (step === null || step === undefined) return;
    const generation = (this.detailGeneration = (this.detailGeneration || 0) + 1);
    const runs = this.orderedSelection();
    const profiles = await Promise.all(
      runs.map((r) => getJson("profile", { run: r, statistic: this.statistic, step }).catch(() => null)),
    );
    if (generation !== this.detailGeneration) return;
    this.profiles = profiles.filter(Boolean).map((p) => ({
      run: p.run,
      color: this.runColor(p.run),
      layers: p.layers,
      values: p.values.map(toNumber),
      alerts: p.alerts,
      step: p.step,
    }));
    const steps = [...new Set(this.profiles.map((p) => p.step))];
    this.profileTitle.textContent = this.profiles.length
      ? `${this.statisticLabel()} at step ${steps.map(integer).join(" / ")}`
      : "";
    clear(this.profileLegend);
    for (const p of this.profiles) {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = p.color;
      this.profileLegend.append(el("span", { class: "legend-key" }, [swatch, nameLabel(p.run, { max: 40 })]));
    }
    this.drawProfile();
    if (run && layer) this.loadDistribution(run, layer, step, generation);
  }

  drawProfile() {
    if (!this.profiles) return;
    const width = this.profilePanel.clientWidth - 24 || 500;
    // Bars are grouped by depth; the labels are the layer names of the chosen
    // run (runs of different models name their layers differently).
    const focus = this.profiles.find((p) => p.run === this.selection.run) || this.profiles[0];
    this.profileBoxes = drawProfile(this.profileCanvas, width, this.profiles, `log₁₀ ${this.statistic}`, focus && focus.layers);
  }

  _profileHover(e) {
    const box = this.profileBoxes.find((b) => e.offsetX >= b.x0 && e.offsetX <= b.x1 && e.offsetY >= b.y0 && e.offsetY <= b.y1);
    if (!box) {
      this.hideTooltip();
      return;
    }
    const lines = [
      ["run", tipName(box.run)],
      ["layer", tipName(box.layer)],
      [this.statisticLabel(), exact(box.value)],
    ];
    if (box.alerts.length) lines.push(["alerts", box.alerts.join(", ")]);
    this.showTooltip(lines, e);
  }

  async loadDistribution(run, layer, step, generation) {
    let response;
    try {
      response = await getJson("histogram", { run, layer, step });
    } catch (e) {
      response = { available: false, reason: e.message };
    }
    if (generation !== this.detailGeneration) return;
    clear(this.distBody);
    this.setDistTitle(run, layer, "");
    if (!response.available) {
      this.distBody.append(el("p", { class: "empty", text: `No histogram: ${response.reason || "not available"}.` }));
      this.distLink.hidden = true;
      return;
    }
    const where = response.step === step ? `step ${integer(response.step)}` : `step ${integer(response.step)} (nearest histogram to ${integer(step)})`;
    this.setDistTitle(run, layer, where);
    const width = Math.max(200, this.distPanel.clientWidth - 24);
    const color = this.runColor(run);
    const kinds = [
      ["gradient", "gradient values", false],
      ["gradient_log10_magnitude", "log₁₀ |gradient| (zeros and NaN/Inf left out)", true],
    ];
    for (const [kind, label, log10Axis] of kinds) {
      const buckets = response.buckets[kind];
      if (!buckets) continue;
      const canvas = el("canvas", { class: "chart", attrs: { role: "img", "aria-label": label } });
      this.distBody.append(canvas);
      drawHistogram(canvas, width, buckets.map((b) => b.map(toNumber)), { color, log10Axis, label });
    }
    const tag = response.tag;
    const regex = tag.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    this.distLink.hidden = false;
    this.distLink.textContent = "Open this layer in the Histograms dashboard ↗";
    this.distLink.href = new URL(`../../../#histograms&tagFilter=${encodeURIComponent(regex)}`, document.baseURI).href;
    this.distLink.title = tag;
  }

  /** The distribution panel's title: run · layer · where, names shortened, whole on hover. */
  setDistTitle(run, layer, where) {
    clear(this.distTitle);
    this.distTitle.append(nameLabel(run, { max: 48 }), " · ", nameLabel(layer, { max: 48 }));
    if (where) this.distTitle.append(` · ${where}`);
  }

  /** Adds runs the server could not read ([{run, reason}]) to the note under the run list. */
  showUnreadable(list) {
    for (const { run, reason } of list) this.unreadable.set(run, reason);
    clear(this.unreadableNote);
    this.unreadableNote.hidden = this.unreadable.size === 0;
    if (!this.unreadable.size) return;
    const n = this.unreadable.size;
    this.unreadableNote.append(el("p", { class: "unreadable-title", text: `${n} run${n === 1 ? "" : "s"} could not be read:` }));
    const items = el("ul");
    for (const [run, reason] of this.unreadable) {
      items.append(el("li", { attrs: { "data-run": run } }, [nameLabel(run, { max: 48 }), el("span", { class: "reason", text: ` — ${middle(visibleName(reason), 400)}` })]));
    }
    this.unreadableNote.append(items);
  }

  // ------------------------------------------------------------------ tooltip
  showCellTooltip(hit, e, what = null) {
    const label = what || this.statisticLabel();
    const lines = [
      ["run", tipName(hit.run)],
      ["layer", `${tipName(hit.layer.name)}  (depth ${hit.layer.depth}${hit.layer.class_name ? ", " + hit.layer.class_name : ""}${hit.layer.activation ? ", " + hit.layer.activation : ""})`],
      ["step", integer(hit.step)],
      [label, hit.layer.has_gradient === false ? "no gradient" : exact(hit.value)],
    ];
    if (Number.isFinite(hit.value) && hit.value > 0) lines.push(["log₁₀", hit.value ? Math.log10(Math.abs(hit.value)).toFixed(3) : "−∞"]);
    if (hit.downsampled && hit.lastStep !== hit.firstStep) {
      lines.push(["column", `steps ${integer(hit.firstStep)}–${integer(hit.lastStep)}; shows its most extreme sample`]);
    }
    if (hit.alerts.length) lines.push(["alerts", hit.alerts.join(", ")]);
    this.showTooltip(lines, e);
  }

  showTooltip(lines, e) {
    clear(this.tooltip);
    for (const [key, value] of lines) {
      this.tooltip.append(el("div", { class: "tip-row" }, [el("span", { class: "tip-key", text: key }), el("span", { class: "tip-value", text: value })]));
    }
    this.tooltip.hidden = false;
    const pad = 14;
    const w = this.tooltip.offsetWidth;
    const h = this.tooltip.offsetHeight;
    let x = e.clientX + pad;
    let y = e.clientY + pad;
    if (x + w > window.innerWidth - 4) x = e.clientX - w - pad;
    if (y + h > window.innerHeight - 4) y = e.clientY - h - pad;
    this.tooltip.style.left = `${Math.max(4, x)}px`;
    this.tooltip.style.top = `${Math.max(4, y)}px`;
  }

  hideTooltip() {
    this.tooltip.hidden = true;
  }
}

/** Loads style.css (relative to the plugin page's <base>); resolves when applied. */
function addStylesheet() {
  if (document.querySelector("link[data-gradflow]")) return Promise.resolve();
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "./static/style.css";
  link.dataset.gradflow = "true";
  const loaded = new Promise((resolve) => {
    link.onload = resolve;
    link.onerror = resolve; // unstyled beats blank
  });
  document.head.append(link);
  return loaded;
}

export async function render() {
  await addStylesheet();
  const root = el("div", { class: "gradflow", attrs: { id: "gradflow-root" } });
  document.body.append(root);
  const app = new App(root);
  window.gradflowApp = app; // for debugging and the end-to-end test
  await app.start();
}

/** A name in a tooltip: whole up to 300 characters (bidi controls made visible), else cut in the middle. */
function tipName(name) {
  return middle(visibleName(name), 300);
}
