// One run's heatmap: rows are layers in depth order (input at the top),
// columns are logged steps, colour is log10 of the statistic.
//
// Drawn on a canvas, never one DOM node per cell: the server sends at most
// about one column per device pixel, the cells go into an ImageData of one
// pixel per cell, and that image is scaled onto the plot.

import { colorInto, colorLinearInto, ALERT_COLORS } from "./colormap.js";
import { cssVar, el, fitMiddle, nameLabel, setupCanvas } from "./dom.js";
import { integer, niceTicks, visibleName } from "./format.js";

const LABEL_FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const AXIS_HEIGHT = 20;
const TOP = 4;
const RIGHT = 10;
const MAX_GUTTER = 190;

/** Step span per logged sample (the column after the last one needs a width). */
function stepDelta(matrix) {
  const n = matrix.sampleCount;
  const first = matrix.firstStep[0];
  const last = matrix.lastStep[matrix.nColumns - 1];
  return n > 1 ? Math.max(1, (last - first) / (n - 1)) : 1;
}

/** [first, end) step span of all the data of a matrix. */
export function stepExtent(matrix) {
  if (!matrix.nColumns) return null;
  return [matrix.firstStep[0], matrix.lastStep[matrix.nColumns - 1] + stepDelta(matrix)];
}

export class HeatmapPanel {
  /** linear: colour on a linear scale (fractions) instead of log10. */
  constructor({ run, onHover, onLeave, onClick, kindLabel = "", linear = false }) {
    this.run = run;
    this.linear = linear;
    this.matrix = null;
    this.canvas = el("canvas", {
      class: "heatmap-canvas",
      attrs: { role: "img", "aria-label": `${linear ? "Activation heatmap" : "Heatmap"} of run ${run}` },
    });
    this.title = nameLabel(run, { cls: "panel-title name", max: 96 });
    this.meta = el("span", { class: "panel-meta" });
    this.message = el("div", { class: "panel-message", text: "Loading…" });
    this.element = el("section", { class: "panel heatmap-panel", attrs: { "data-run": run } }, [
      el("header", { class: "panel-header" }, [this.title, this.meta]),
      this.message,
      this.canvas,
    ]);
    this.kindLabel = kindLabel;
    this.canvas.addEventListener("mousemove", (e) => {
      const hit = this.hit(e.offsetX, e.offsetY);
      if (hit) onHover(hit, e);
      else onLeave();
    });
    this.canvas.addEventListener("mouseleave", () => onLeave());
    this.canvas.addEventListener("click", (e) => {
      const hit = this.hit(e.offsetX, e.offsetY);
      if (hit) onClick(hit, e);
    });
  }

  setError(text) {
    this.matrix = null;
    this.message.textContent = text;
    this.message.hidden = false;
    this.canvas.hidden = true;
  }

  setData(matrix) {
    this.matrix = matrix;
    this.offscreen = null;
    const samples = `${integer(matrix.sampleCount)} logged step${matrix.sampleCount === 1 ? "" : "s"}`;
    const layers = `${matrix.nLayers} layer${matrix.nLayers === 1 ? "" : "s"}`;
    const down = matrix.downsampled
      ? ` · ${integer(matrix.nColumns)} columns, each showing its most extreme sample`
      : "";
    this.meta.textContent = `${layers} · ${samples}${down}`;
    if (!matrix.nColumns || !matrix.nLayers) {
      this.setError("No logged steps yet.");
      return;
    }
    this.message.hidden = true;
    this.canvas.hidden = false;
  }

  /** Alert flags [columns * layers] (bit i: kinds[i]) arriving after the values. */
  setAlerts(flags, kinds) {
    if (!this.matrix) return;
    this.matrix.alerts = flags;
    this.matrix.alertKinds = kinds;
  }

  /** Rebuilds the one-pixel-per-cell image for a colour domain. */
  _image(lo, hi) {
    const m = this.matrix;
    const key = `${lo}:${hi}`;
    if (this.offscreen && this.offscreenKey === key) return this.offscreen;
    const canvas = document.createElement("canvas");
    canvas.width = m.nColumns;
    canvas.height = m.nLayers;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(m.nColumns, m.nLayers);
    const data = image.data;
    const hasGradient = m.layers.map((layer) => layer.has_gradient !== false);
    for (let l = 0; l < m.nLayers; l++) {
      const rowOffset = l * m.nColumns;
      for (let c = 0; c < m.nColumns; c++) {
        const v = m.values[c * m.nLayers + l];
        if (this.linear) colorLinearInto(data, (rowOffset + c) * 4, v, lo, hi);
        else colorInto(data, (rowOffset + c) * 4, v, lo, hi, hasGradient[l]);
      }
    }
    ctx.putImageData(image, 0, 0);
    this.offscreen = canvas;
    this.offscreenKey = key;
    return canvas;
  }

  /**
   * Draws the panel.
   * opts: {width, domain: [lo, hi] (log10), steps: [s0, s1], selection:
   *        {run, layer, step}, scale: {kind: "log"|"linear"}}
   */
  draw(opts) {
    const m = this.matrix;
    if (!m || !m.nColumns) return;
    const { width, domain, steps, selection, gutter } = opts;
    const layout = this._layout(width, gutter);
    this.layout = layout;
    this.steps = steps;
    const ctx = setupCanvas(this.canvas, width, layout.height);
    const fg = cssVar("--fg", "#222");
    const muted = cssVar("--muted", "#777");
    ctx.clearRect(0, 0, width, layout.height);

    const xOf = (step) => layout.left + ((step - steps[0]) / (steps[1] - steps[0])) * layout.plotWidth;
    this.xOf = xOf;
    const delta = stepDelta(m);
    const colStart = (c) => m.firstStep[c];
    const colEnd = (c) => (c + 1 < m.nColumns ? m.firstStep[c + 1] : m.lastStep[c] + delta);
    this.colStart = colStart;
    this.colEnd = colEnd;

    // Cells.
    const image = this._image(domain[0], domain[1]);
    ctx.imageSmoothingEnabled = false;
    const top = layout.top;
    const plotHeight = layout.rowHeight * m.nLayers;
    if (m.nColumns <= 2048) {
      for (let c = 0; c < m.nColumns; c++) {
        const x0 = xOf(colStart(c));
        const x1 = xOf(colEnd(c));
        ctx.drawImage(image, c, 0, 1, m.nLayers, x0, top, Math.max(x1 - x0, 0.5), plotHeight);
      }
    } else {
      const x0 = xOf(colStart(0));
      ctx.drawImage(image, 0, 0, m.nColumns, m.nLayers, x0, top, xOf(colEnd(m.nColumns - 1)) - x0, plotHeight);
    }

    // Alert outlines: one rectangle per run of consecutive flagged columns.
    if (m.alerts) {
      ctx.lineWidth = layout.rowHeight >= 6 ? 1.5 : 1;
      m.alertKinds.forEach((kind, bit) => {
        const mask = 1 << bit;
        ctx.strokeStyle = ALERT_COLORS[kind] || fg;
        ctx.fillStyle = ctx.strokeStyle;
        for (let l = 0; l < m.nLayers; l++) {
          let start = -1;
          for (let c = 0; c <= m.nColumns; c++) {
            const on = c < m.nColumns && (m.alerts[c * m.nLayers + l] & mask);
            if (on && start < 0) start = c;
            if (!on && start >= 0) {
              const x0 = xOf(colStart(start));
              const x1 = xOf(colEnd(c - 1));
              const y = top + l * layout.rowHeight;
              const inset = ctx.lineWidth / 2 + bit * 1.5;
              const h = layout.rowHeight - 2 * inset;
              if (h <= 0.5) {
                ctx.fillRect(x0, y, x1 - x0, layout.rowHeight);
              } else if (x1 - x0 >= 4) {
                ctx.strokeRect(x0 + inset, y + inset, Math.max(x1 - x0 - 2 * inset, 1), h);
              } else {
                // Too narrow for a box: top and bottom edges only, so the
                // cell's own colour stays visible between them.
                ctx.fillRect(x0, y + inset - ctx.lineWidth / 2, Math.max(x1 - x0, 1), ctx.lineWidth);
                ctx.fillRect(x0, y + inset + h - ctx.lineWidth / 2, Math.max(x1 - x0, 1), ctx.lineWidth);
              }
              start = -1;
            }
          }
        }
      });
    }

    // Selection: the chosen step across every panel, the chosen layer in its run.
    if (selection && selection.step !== null && selection.step !== undefined) {
      const x = xOf(selection.step);
      if (x >= layout.left && x <= layout.left + layout.plotWidth) {
        ctx.save();
        ctx.strokeStyle = fg;
        ctx.lineWidth = 1;
        ctx.setLineDash([3, 2]);
        ctx.beginPath();
        ctx.moveTo(Math.round(x) + 0.5, top - 2);
        ctx.lineTo(Math.round(x) + 0.5, top + plotHeight + 2);
        ctx.stroke();
        ctx.restore();
      }
    }
    if (selection && selection.run === this.run && selection.layer !== null) {
      const l = m.layers.findIndex((layer) => layer.name === selection.layer);
      if (l >= 0) {
        ctx.save();
        ctx.strokeStyle = fg;
        ctx.lineWidth = 2;
        ctx.strokeRect(layout.left - 1, top + l * layout.rowHeight - 1, layout.plotWidth + 2, layout.rowHeight + 2);
        ctx.restore();
      }
    }

    // Layer labels (canvas text: never parsed as HTML).
    ctx.font = LABEL_FONT;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(12 / layout.rowHeight));
    for (let l = 0; l < m.nLayers; l += every) {
      const layer = m.layers[l];
      const selected = selection && selection.run === this.run && selection.layer === layer.name;
      ctx.fillStyle = selected ? fg : layer.has_gradient === false ? muted : fg;
      ctx.font = selected ? `bold ${LABEL_FONT}` : LABEL_FONT;
      const y = top + (l + 0.5) * layout.rowHeight;
      ctx.fillText(fitMiddle(ctx, layer.name, layout.left - 8), layout.left - 6, y);
    }

    // Step axis.
    ctx.font = LABEL_FONT;
    ctx.fillStyle = muted;
    ctx.strokeStyle = muted;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const axisY = top + plotHeight + 2;
    const ticks = niceTicks(steps[0], steps[1], Math.max(2, Math.floor(layout.plotWidth / 90)));
    for (const t of ticks) {
      const x = xOf(t);
      if (x < layout.left - 0.5 || x > layout.left + layout.plotWidth + 0.5) continue;
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, axisY);
      ctx.lineTo(Math.round(x) + 0.5, axisY + 4);
      ctx.stroke();
      const label = integer(t);
      const half = ctx.measureText(label).width / 2;
      ctx.fillText(label, Math.min(Math.max(x, layout.left + half), width - half - 1), axisY + 5);
    }
  }

  /** Width (CSS px) the layer labels want; panels share the largest so their plots align. */
  gutterWidth() {
    const m = this.matrix;
    if (!m) return 0;
    const ctx = this.canvas.getContext("2d");
    ctx.font = `bold ${LABEL_FONT}`;
    let gutter = 40;
    for (const layer of m.layers) gutter = Math.max(gutter, ctx.measureText(visibleName(layer.name).slice(0, 200)).width + 14);
    return Math.min(MAX_GUTTER, Math.ceil(gutter));
  }

  _layout(width, gutter) {
    const m = this.matrix;
    const left = gutter || this.gutterWidth();
    const rowHeight = Math.max(1, Math.min(22, Math.floor(360 / m.nLayers)));
    const height = TOP + rowHeight * m.nLayers + AXIS_HEIGHT;
    return { left, top: TOP, rowHeight, height, plotWidth: Math.max(10, width - left - RIGHT) };
  }

  /** Device-pixel width of the plot area: how many columns to ask the server for. */
  static plotPixels(width) {
    return Math.max(32, Math.round((width - MAX_GUTTER / 2 - RIGHT) * (window.devicePixelRatio || 1)));
  }

  /** The cell under a point (CSS px), or null. */
  hit(x, y) {
    const m = this.matrix;
    const layout = this.layout;
    if (!m || !layout || !this.steps) return null;
    const l = Math.floor((y - layout.top) / layout.rowHeight);
    if (l < 0 || l >= m.nLayers || x < layout.left || x > layout.left + layout.plotWidth) return null;
    const step = this.steps[0] + ((x - layout.left) / layout.plotWidth) * (this.steps[1] - this.steps[0]);
    // Last column starting at or before `step`.
    let lo = 0;
    let hi = m.nColumns - 1;
    if (step < this.colStart(0) || step >= this.colEnd(m.nColumns - 1)) return null;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.colStart(mid) <= step) lo = mid;
      else hi = mid - 1;
    }
    const c = lo;
    const flags = m.alerts ? m.alerts[c * m.nLayers + l] : 0;
    return {
      run: this.run,
      column: c,
      layerIndex: l,
      layer: m.layers[l],
      step: m.cellStep(c, l),
      firstStep: m.firstStep[c],
      lastStep: m.lastStep[c],
      value: m.values[c * m.nLayers + l],
      alerts: m.alertKinds.filter((_, bit) => flags & (1 << bit)),
      downsampled: m.downsampled,
    };
  }

  /** Vertical position (CSS px, relative to the canvas) of a layer's row centre. */
  rowCenter(layerName) {
    if (!this.matrix || !this.layout) return 0;
    const l = this.matrix.layers.findIndex((layer) => layer.name === layerName);
    return this.layout.top + (Math.max(l, 0) + 0.5) * this.layout.rowHeight;
  }
}
