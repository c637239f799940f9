// Entry point of the Gradient Flow dashboard. TensorBoard loads this module in
// an iframe (data/plugin_entry.html) and calls render(). The other modules are
// served from ./static/ next to it; see plugin_frontend/README.md.
export { render } from "./static/app.js";
