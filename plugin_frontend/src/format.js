// Number formatting for axes, legends and tooltips.

const SUPERSCRIPT = {
  "-": "⁻", "0": "⁰", "1": "¹", "2": "²", "3": "³", "4": "⁴",
  "5": "⁵", "6": "⁶", "7": "⁷", "8": "⁸", "9": "⁹",
};

/** "10⁻³" for a decade exponent. */
export function decade(exponent) {
  const digits = String(exponent).split("").map((c) => SUPERSCRIPT[c] || c).join("");
  return `10${digits}`;
}

/** A value as sent by the server: numbers, or "NaN" / "Infinity" / "-Infinity". */
export function toNumber(value) {
  if (typeof value === "number") return value;
  if (value === "NaN") return NaN;
  if (value === "Infinity") return Infinity;
  if (value === "-Infinity") return -Infinity;
  return Number(value);
}

/**
 * The exact value, readable: float32 values have ~7 significant digits, so 7
 * are shown; small and large magnitudes in scientific notation.
 */
export function exact(value) {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "−Inf";
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e-3 && magnitude < 1e5) return String(Number(value.toPrecision(7)));
  return value.toExponential(6).replace(/\.?0+e/, "e");
}

/** A short value for axis labels: 3 significant digits. */
export function short(value) {
  if (!Number.isFinite(value)) return exact(value);
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e-2 && magnitude < 1e4) return String(Number(value.toPrecision(3)));
  return value.toExponential(1).replace(".0e", "e");
}

/** An integer with thin-space thousands separators: 10 000. */
export function integer(value) {
  return String(Math.round(value)).replace(/\B(?=(\d{3})+(?!\d))/g, "\u2009");
}

/** About `count` round tick values between lo and hi (1, 2, 5 × 10^k steps). */
export function niceTicks(lo, hi, count = 6) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push(Math.round(t / step) * step);
  }
  return ticks;
}

// Characters that reorder the text around them: the bidi embeddings,
// overrides and isolates, and the invisible direction marks. A name is data;
// one U+202E in it must not turn the rest of a label around.
const BIDI_CONTROLS = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

/** The name with each bidi control character shown as "⟨U+202E⟩" instead of obeyed. */
export function visibleName(name) {
  return String(name).replace(BIDI_CONTROLS, (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`);
}

/** `text` shortened in the middle to at most `max` characters (code points), "…" marking the cut. */
export function middle(text, max) {
  const chars = Array.from(text);
  if (chars.length <= max) return text;
  const head = Math.ceil((max - 1) / 2);
  const tail = max - 1 - head;
  return chars.slice(0, head).join("") + "…" + chars.slice(chars.length - tail).join("");
}

/** A run or layer name for a label: bidi controls made visible, then shortened in the middle. */
export function shortName(name, max = 64) {
  return middle(visibleName(name), max);
}
