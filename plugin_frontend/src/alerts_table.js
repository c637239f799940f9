// The alerts table: one row per (run, layer, kind) that fired. Choosing a
// row (click, Enter or Space) calls onChoose(alert), which focuses the heatmap.

import { ALERT_COLORS, NONFINITE_RGB, rgbCss } from "./colormap.js";
import { clear, el, nameLabel } from "./dom.js";
import { exact, integer, middle, toNumber, visibleName } from "./format.js";

const KIND_LABELS = {
  vanishing: "vanishing",
  exploding: "exploding",
  nonfinite: "non-finite",
  saturation: "saturation",
  dead_units: "dead units",
};

export class AlertsTable {
  constructor({ onChoose }) {
    this.onChoose = onChoose;
    this.summary = el("span", { class: "panel-meta" });
    this.body = el("tbody");
    this.empty = el("p", { class: "empty", text: "No alerts for the selected runs." });
    const head = el("thead", {}, [
      el("tr", {}, [
        el("th", { text: "Run", attrs: { scope: "col" } }),
        el("th", { text: "Layer", attrs: { scope: "col" } }),
        el("th", { text: "Kind", attrs: { scope: "col" } }),
        el("th", { text: "First step", class: "num", attrs: { scope: "col" } }),
        el("th", { text: "Worst value", class: "num", attrs: { scope: "col" } }),
        el("th", { text: "at step", class: "num", attrs: { scope: "col" } }),
        el("th", { text: "Logged steps fired", class: "num", attrs: { scope: "col" } }),
        el("th", { text: "Why", attrs: { scope: "col" } }),
      ]),
    ]);
    this.table = el("table", { class: "alerts-table" }, [head, this.body]);
    this.element = el("section", { class: "panel", attrs: { id: "alerts" } }, [
      el("header", { class: "panel-header" }, [el("h2", { text: "Alerts" }), this.summary]),
      this.empty,
      el("div", { class: "table-wrap" }, [this.table]),
    ]);
    this.rows = [];
  }

  /** alerts: rows of /alerts; meanings: {kind: text}; runs: Set of shown runs. */
  set(alerts, meanings, runs) {
    clear(this.body);
    this.rows = [];
    const shown = alerts.filter((a) => runs.has(a.run));
    this.summary.textContent = shown.length
      ? `${shown.length} alert${shown.length === 1 ? "" : "s"} · click a row to focus the heatmap`
      : "";
    this.empty.hidden = shown.length > 0;
    this.table.hidden = shown.length === 0;
    for (const alert of shown) {
      const chip = el("span", { class: `kind-chip kind-${alert.kind}`, text: KIND_LABELS[alert.kind] || alert.kind });
      chip.style.setProperty("--chip", alert.kind === "nonfinite" ? rgbCss(NONFINITE_RGB) : ALERT_COLORS[alert.kind] || "#888");
      const row = el(
        "tr",
        {
          class: "alert-row",
          attrs: { tabindex: "0", "data-run": alert.run, "data-layer": alert.layer, "data-kind": alert.kind },
          title: meanings[alert.kind] || "",
          on: {
            click: () => this.onChoose(alert),
            keydown: (e) => {
              if (e.key === "Enter" || e.key === " ") {
                e.preventDefault();
                this.onChoose(alert);
              }
            },
          },
        },
        [
          el("td", {}, [nameLabel(alert.run)]),
          el("td", { class: "layer-cell" }, [nameLabel(alert.layer)]),
          el("td", {}, [chip]),
          el("td", { class: "num", text: integer(alert.first_step) }),
          el("td", { class: "num", text: exact(toNumber(alert.worst_value)) }),
          el("td", { class: "num", text: integer(alert.worst_step) }),
          el("td", { class: "num", text: integer(alert.steps_fired) }),
          el("td", { class: "why", text: middle(visibleName(alert.explanation || ""), 300), title: visibleName(alert.explanation || "") }),
        ],
      );
      row._alert = alert;
      this.rows.push(row);
      this.body.append(row);
    }
  }

  /** Highlights the row of `alert` (or none). */
  highlight(alert) {
    for (const row of this.rows) row.classList.toggle("chosen", row._alert === alert);
  }
}
