// Requests to the plugin's routes. URLs are relative ("./heatmap"): the
// plugin page's <base> points at data/plugin/gradflow/, so this works under
// any --path_prefix and never leaves TensorBoard's origin.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function getJson(route, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null) continue;
    for (const v of Array.isArray(value) ? value : [value]) query.append(key, String(v));
  }
  const qs = query.toString();
  const response = await fetch(`./${route}${qs ? "?" + qs : ""}`, {
    headers: { Accept: "application/json" },
  });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    throw new ApiError(response.status, `${route}: HTTP ${response.status}, not JSON`);
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || `${route}: HTTP ${response.status}`);
  }
  return body;
}

function bytesOf(b64) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Little-endian float32 array from base64 (the server's "values"). */
export function float32s(b64) {
  return new Float32Array(bytesOf(b64).buffer);
}

export function uint32s(b64) {
  return new Uint32Array(bytesOf(b64).buffer);
}

export function uint8s(b64) {
  return bytesOf(b64);
}

/**
 * Decodes a /heatmap or /saturation response into typed arrays:
 * values[c * nLayers + l], cellStep(c, l), alerts[c * nLayers + l].
 */
export function decodeMatrix(response) {
  const nLayers = response.layers.length;
  const nColumns = response.column_count;
  const values = float32s(response.values);
  const index = response.cell_index ? uint32s(response.cell_index) : null;
  const steps = response.steps || null;
  const alerts = response.alerts ? uint8s(response.alerts) : null;
  return {
    run: response.run,
    statistic: response.statistic,
    layers: response.layers,
    nLayers,
    nColumns,
    values,
    alerts,
    alertKinds: response.alert_kinds || [],
    firstStep: response.column_first_step,
    lastStep: response.column_last_step,
    sampleCount: response.sample_count,
    downsampled: response.downsampled,
    log10Range: response.log10_range || null,
    /** The logged step whose value cell (c, l) shows. */
    cellStep(c, l) {
      return index ? steps[index[c * nLayers + l]] : response.column_first_step[c];
    },
  };
}
