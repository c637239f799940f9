// Bar charts on canvas: the per-layer profile ("gradient flow" by depth at
// one step) and a layer's gradient distribution at one step.

import { ALERT_COLORS, NONFINITE_RGB, rgbCss } from "./colormap.js";
import { cssVar, fitMiddle, setupCanvas } from "./dom.js";
import { decade, niceTicks, short } from "./format.js";

const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

function axisColors() {
  return { fg: cssVar("--fg", "#222"), muted: cssVar("--muted", "#777"), grid: cssVar("--grid", "#ddd") };
}

// A horizontal grid line across the plot at y, labelled left of the axis.
function gridLine(ctx, left, plotW, y, label, grid, muted) {
  const py = Math.round(y) + 0.5;
  ctx.strokeStyle = grid;
  ctx.beginPath();
  ctx.moveTo(left, py);
  ctx.lineTo(left + plotW, py);
  ctx.stroke();
  ctx.fillStyle = muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(label, left - 6, py);
}

/**
 * Draws the profile: for each layer (x, depth order) one bar per run, height
 * log10 of the value. Returns hit boxes [{x0, x1, y0, y1, run, layer, value}].
 *
 * series: [{run, color, layers: [names], values: [numbers], alerts: [[kind]]}]
 */
export function drawProfile(canvas, width, series, statisticLabel, labels = null) {
  const height = 250;
  const ctx = setupCanvas(canvas, width, height);
  const { fg, muted, grid } = axisColors();
  ctx.clearRect(0, 0, width, height);
  ctx.font = FONT;
  const nLayers = Math.max(0, ...series.map((s) => s.values.length));
  const finite = [];
  for (const s of series) for (const v of s.values) if (Number.isFinite(v) && v > 0) finite.push(Math.log10(v));
  let lo = finite.length ? Math.floor(Math.min(...finite)) : -6;
  let hi = finite.length ? Math.ceil(Math.max(...finite)) : 0;
  if (hi <= lo) hi = lo + 1;
  const rotate = nLayers > 6;
  const names = labels || (series.length ? series.reduce((a, s) => (s.layers.length > a.length ? s.layers : a), []) : []);
  const left = 52;
  const right = 8;
  const top = 10;
  const bottom = nLayers <= 40 ? (rotate ? 78 : 30) : 24;
  const plotW = Math.max(10, width - left - right);
  const plotH = height - top - bottom;
  const yOf = (log) => top + plotH - ((log - lo) / (hi - lo)) * plotH;

  // Decade grid and labels.
  const every = Math.max(1, Math.ceil((hi - lo) / 8));
  for (let d = lo; d <= hi; d += every) gridLine(ctx, left, plotW, yOf(d), decade(d), grid, muted);
  ctx.save();
  ctx.translate(12, top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillText(statisticLabel, 0, 0);
  ctx.restore();

  const boxes = [];
  if (!nLayers) return boxes;
  const groupW = plotW / nLayers;
  const pad = Math.min(6, groupW * 0.15);
  const barW = Math.max(1, (groupW - 2 * pad) / Math.max(1, series.length));
  series.forEach((s, si) => {
    s.values.forEach((v, l) => {
      const x0 = left + l * groupW + pad + si * barW;
      const x1 = x0 + Math.max(barW - (barW > 3 ? 1 : 0), 1);
      let y0;
      if (Number.isFinite(v) && v > 0) {
        y0 = yOf(Math.max(lo, Math.log10(v)));
        ctx.fillStyle = s.color;
      } else if (!Number.isFinite(v)) {
        y0 = top;
        ctx.fillStyle = rgbCss(NONFINITE_RGB);
      } else {
        y0 = top + plotH - 1; // zero: a sliver at the bottom
        ctx.fillStyle = muted;
      }
      ctx.fillRect(x0, y0, x1 - x0, top + plotH - y0);
      const kinds = (s.alerts && s.alerts[l]) || [];
      kinds.forEach((kind, k) => {
        ctx.fillStyle = ALERT_COLORS[kind] === "#ffffff" ? fg : ALERT_COLORS[kind] || fg;
        const cx = (x0 + x1) / 2;
        const cy = y0 - 6 - k * 8;
        ctx.beginPath();
        ctx.moveTo(cx - 4, cy - 4);
        ctx.lineTo(cx + 4, cy - 4);
        ctx.lineTo(cx, cy + 2);
        ctx.closePath();
        ctx.fill();
      });
      boxes.push({ x0, x1, y0: top, y1: top + plotH, run: s.run, layer: s.layers[l], value: v, alerts: kinds });
    });
  });

  // Layer names (canvas text, never HTML).
  ctx.fillStyle = fg;
  ctx.strokeStyle = muted;
  ctx.beginPath();
  ctx.moveTo(left, top + plotH + 0.5);
  ctx.lineTo(left + plotW, top + plotH + 0.5);
  ctx.stroke();
  if (nLayers <= 40) {
    for (let l = 0; l < nLayers; l++) {
      const cx = left + (l + 0.5) * groupW;
      const name = names[l] || `depth ${l}`;
      if (rotate) {
        ctx.save();
        ctx.translate(cx, top + plotH + 6);
        ctx.rotate(-Math.PI / 5);
        ctx.textAlign = "right";
        ctx.textBaseline = "middle";
        ctx.fillText(fitMiddle(ctx, name, bottom * 1.45), 0, 0);
        ctx.restore();
      } else {
        ctx.textAlign = "center";
        ctx.textBaseline = "top";
        ctx.fillText(fitMiddle(ctx, name, groupW - 4), cx, top + plotH + 6);
      }
    }
  } else {
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    ctx.fillStyle = muted;
    for (const t of niceTicks(0, nLayers - 1, Math.floor(plotW / 60))) {
      ctx.fillText(`depth ${t}`, left + (t + 0.5) * groupW, top + plotH + 6);
    }
  }
  return boxes;
}

/**
 * Draws a histogram from [[left, right, count], ...] buckets. `log10Axis`
 * labels the x axis in decades (the log10-magnitude histogram).
 */
export function drawHistogram(canvas, width, buckets, { color, log10Axis = false, label = "" }) {
  const height = 170;
  const ctx = setupCanvas(canvas, width, height);
  const { fg, muted, grid } = axisColors();
  ctx.clearRect(0, 0, width, height);
  ctx.font = FONT;
  const left = 44;
  const right = 10;
  const top = 16;
  const bottom = 26;
  const plotW = Math.max(10, width - left - right);
  const plotH = height - top - bottom;
  ctx.fillStyle = muted;
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.fillText(label, left, 0);
  const rows = buckets.filter((b) => b.every(Number.isFinite));
  const total = rows.reduce((a, b) => a + b[2], 0);
  if (!rows.length || total === 0) {
    ctx.fillStyle = muted;
    ctx.textAlign = "center";
    ctx.fillText("all zero, or no finite elements", left + plotW / 2, top + plotH / 2);
    return;
  }
  // Trim empty buckets at both ends (the log10 histogram spans 30 decades).
  let a = 0;
  let b = rows.length - 1;
  while (a < b && rows[a][2] === 0) a++;
  while (b > a && rows[b][2] === 0) b--;
  const shown = rows.slice(Math.max(0, a - 1), Math.min(rows.length, b + 2));
  let x0 = shown[0][0];
  let x1 = shown[shown.length - 1][1];
  if (!(x1 > x0)) {
    x0 -= 0.5;
    x1 += 0.5;
  }
  const maxCount = Math.max(...shown.map((r) => r[2]));
  const xOf = (v) => left + ((v - x0) / (x1 - x0)) * plotW;
  const yOf = (c) => top + plotH - (c / maxCount) * plotH;
  for (const t of niceTicks(0, maxCount, 3)) gridLine(ctx, left, plotW, yOf(t), short(t), grid, muted);
  ctx.fillStyle = color;
  for (const [l, r, c] of shown) {
    if (c <= 0) continue;
    const xa = xOf(l);
    const xb = r > l ? xOf(r) : xa + 2;
    ctx.fillRect(xa, yOf(c), Math.max(1, xb - xa - (xb - xa > 3 ? 1 : 0)), top + plotH - yOf(c));
  }
  ctx.strokeStyle = muted;
  ctx.beginPath();
  ctx.moveTo(left, top + plotH + 0.5);
  ctx.lineTo(left + plotW, top + plotH + 0.5);
  ctx.stroke();
  ctx.fillStyle = muted;
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const ticks = log10Axis
    ? niceTicks(Math.ceil(x0), Math.floor(x1), Math.max(2, Math.floor(plotW / 50))).filter(Number.isInteger)
    : niceTicks(x0, x1, Math.max(2, Math.floor(plotW / 70)));
  for (const t of ticks) {
    const x = xOf(t);
    if (x < left - 1 || x > left + plotW + 1) continue;
    ctx.fillText(log10Axis ? decade(t) : short(t), x, top + plotH + 5);
  }
  ctx.fillStyle = fg;
}
