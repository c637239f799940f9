// DOM helpers. Every string from the data (run, layer and tag names) goes
// into the page through textContent or an attribute setter, never as markup:
// a layer named `<img src=x onerror=alert(1)>` shows up as those characters.

import { middle, shortName, visibleName } from "./format.js";

/**
 * Creates an element. `props`: {class, text, title, attrs: {name: value},
 * on: {event: handler}, style: {prop: value}}; `children`: nodes or strings.
 */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  if (props.class) node.className = props.class;
  if (props.text !== undefined) node.textContent = String(props.text);
  if (props.title !== undefined) node.title = String(props.title);
  for (const [name, value] of Object.entries(props.attrs || {})) {
    node.setAttribute(name, String(value));
  }
  for (const [name, value] of Object.entries(props.style || {})) {
    node.style.setProperty(name, String(value));
  }
  for (const [event, handler] of Object.entries(props.on || {})) {
    node.addEventListener(event, handler);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** A CSS custom property of the page (follows prefers-color-scheme). */
export function cssVar(name, fallback = "#888") {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/** Sizes a canvas for the device pixel ratio; returns its 2D context, scaled to CSS px. */
export function setupCanvas(canvas, cssWidth, cssHeight) {
  const dpr = window.devicePixelRatio || 1;
  canvas.style.width = `${cssWidth}px`;
  canvas.style.height = `${cssHeight}px`;
  canvas.width = Math.max(1, Math.round(cssWidth * dpr));
  canvas.height = Math.max(1, Math.round(cssHeight * dpr));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

/**
 * A run or layer name as a span: shortened in the middle to `max` characters,
 * the whole name (bidi controls made visible) on hover.
 */
export function nameLabel(name, { max = 64, cls = "name", tag = "span" } = {}) {
  return el(tag, { class: cls, text: shortName(name, max), title: visibleName(name) });
}

/** A name shortened in the middle with "…" to fit `maxWidth` px on a canvas (bidi controls made visible). */
export function fitMiddle(ctx, name, maxWidth) {
  const text = visibleName(name);
  if (ctx.measureText(text).width <= maxWidth) return text;
  // Binary search on the kept character count; middle() splits it evenly.
  let lo = 1;
  let hi = Array.from(text).length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(middle(text, mid)).width <= maxWidth) lo = mid;
    else hi = mid - 1;
  }
  return middle(text, lo);
}
