"""TensorBoard entry point: `gradflow = tb_gradflow.plugin.loader:GradFlowLoader`.

TensorBoard keeps 10 (Python loader) or 100 (Rust data server) samples of a
third-party plugin's time series unless told otherwise; a heatmap of a long
run would collapse to a handful of columns. `fix_flags` runs before the data
provider is built, so it sets `--samples_per_plugin=gradflow=0` (0 = keep
every sample; the Rust server receives it as `gradflow=all`) unless the user
chose a value. The plugin downsamples on the server per request instead.
"""

from tensorboard.plugins import base_plugin

from tb_gradflow import metadata


class GradFlowLoader(base_plugin.TBLoader):
    """Loads `GradFlowPlugin`; keeps every sample of its time series."""

    def fix_flags(self, flags):
        samples = getattr(flags, "samples_per_plugin", None)
        if isinstance(samples, str):
            # `TensorBoard().configure(samples_per_plugin="a=1")` skips argparse.
            from tensorboard.plugins.core import core_plugin

            try:
                samples = core_plugin._parse_samples_per_plugin(samples)
            except ValueError as e:
                raise base_plugin.FlagsError(f"--samples_per_plugin: {e}") from e
            flags.samples_per_plugin = samples
        if isinstance(samples, dict):
            samples.setdefault(metadata.PLUGIN_NAME, 0)

    def load(self, context):
        # Imported here so that discovering the entry point stays cheap.
        from tb_gradflow.plugin.gradflow_plugin import GradFlowPlugin

        return GradFlowPlugin(context)
