"""The event contract: plugin name, tag scheme and summary metadata.

    >>> from tb_gradflow import metadata
    >>> metadata.layer_statistic_tag("grad_norm")
    'gradflow/layer/grad_norm'
    >>> md = metadata.create_statistic_metadata("grad_norm", per="layer")
    >>> metadata.parse_plugin_data(md.plugin_data.content).statistic
    'grad_norm'
    >>> metadata.activation_statistic_tag("saturated_fraction")
    'gradflow/activation/saturated_fraction'

Everything a reader needs to find tb_gradflow data is defined here and
documented in docs/event_contract.md. This module imports no TensorFlow: the
plugin and the CLI run on TensorBoard servers that have none.
"""

from tensorboard.compat.proto import summary_pb2

from tb_gradflow.proto import plugin_data_pb2

PLUGIN_NAME = "gradflow"

# The most recent value of GradflowPluginData.version. Bump it when the
# meaning of existing fields or tensors changes; readers refuse newer data.
PROTO_VERSION = 1

TAG_PREFIX = "gradflow"
LAYER_TABLE_TAG = f"{TAG_PREFIX}/layer_table"

# Statistics written per layer and per variable, float32 vectors. The order is
# the display order of the plugin's statistic picker.
GRAD_NORM = "grad_norm"  # L2 norm of the gradient at the logged step.
GRAD_RMS = "grad_rms"  # norm / sqrt(element count).
GRAD_MEAN_ABS = "grad_mean_abs"  # mean |g| (SageMaker Debugger's vanishing statistic).
GRAD_MAX_ABS = "grad_max_abs"  # largest finite |g|.
GRAD_NORM_INTERVAL_MAX = "grad_norm_interval_max"  # largest norm since the last write.
GRAD_NORM_INTERVAL_MIN = "grad_norm_interval_min"  # smallest norm since the last write.
NONFINITE_COUNT = "nonfinite_count"  # NaN/Inf elements, summed since the last write.
ZERO_FRACTION = "zero_fraction"  # share of elements exactly 0.
WEIGHT_NORM = "weight_norm"  # L2 norm of the weights after the update.
UPDATE_RATIO = "update_ratio"  # ||w_after - w_before|| / ||w_before||.
# ||gradient applied|| / ||gradient the loss produced||: 1 where the optimizer's
# clipnorm / global_clipnorm / clipvalue left the gradient alone, < 1 where it
# clipped. Written only when the optimizer clips; every other gradient
# statistic is of the gradient the loss produced.
CLIP_FACTOR = "clip_factor"

STATISTICS = (
    GRAD_NORM,
    GRAD_RMS,
    GRAD_MEAN_ABS,
    GRAD_MAX_ABS,
    GRAD_NORM_INTERVAL_MAX,
    GRAD_NORM_INTERVAL_MIN,
    NONFINITE_COUNT,
    ZERO_FRACTION,
    WEIGHT_NORM,
    UPDATE_RATIO,
    CLIP_FACTOR,
)

# Activation statistics (docs/event_contract.md, "Activation statistics"):
# float32 [n_layers] vectors in LayerTable.layers order, NaN for layers whose
# activation is not captured, written every `activation_freq` train steps.
SATURATED_FRACTION = "saturated_fraction"  # share of unit activations with |f'(z)| < threshold.
DEAD_FRACTION = "dead_fraction"  # share of units with f'(z) = 0 on every element of the batch.
INACTIVE_FRACTION = "inactive_fraction"  # share of units active on < dead_inactivity of a window.
ACTIVATION_MEAN = "activation_mean"  # mean of f(z) (zero-centring).
ACTIVATION_STD = "activation_std"  # standard deviation of f(z).

ACTIVATION_STATISTICS = (
    SATURATED_FRACTION,
    DEAD_FRACTION,
    INACTIVE_FRACTION,
    ACTIVATION_MEAN,
    ACTIVATION_STD,
)

# Histogram tags belong to TensorBoard's own "histograms" plugin, so its
# Histograms and Distributions dashboards show them unchanged.
HISTOGRAM_KIND_GRADIENT = "gradient"
HISTOGRAM_KIND_LOG10_MAGNITUDE = "gradient_log10_magnitude"
HISTOGRAM_KIND_PREACTIVATION = "preactivation"  # the activation's input z, every activation_freq steps

# Histogram layout (the bucket counts are computed on the device, see stats.py).
HISTOGRAM_BUCKETS = 30  # equal-width buckets over the layer's finite range (TensorBoard's default)
# log10-magnitude histogram: one bucket per decade over [1e-24, 1e6); smaller
# non-zero magnitudes land in the first bucket, larger ones in the last. Exact
# zeros and non-finite values are left out (zero_fraction, nonfinite_count).
LOG10_LOW = -24
LOG10_HIGH = 6
LOG10_BUCKETS = LOG10_HIGH - LOG10_LOW

# Alert scalars belong to TensorBoard's "scalars" plugin (Scalars dashboard).
ALERTS_PREFIX = f"{TAG_PREFIX}/alerts"

# The dynamic loss scale at each statistic row (mixed precision only), a
# "scalars" plugin series: the Scalars dashboard plots it, and the
# non-finite rule reads it to tell a step LossScaleOptimizer skipped while
# finding its scale from a gradient that is non-finite (rules.py).
LOSS_SCALE_TAG = f"{TAG_PREFIX}/loss_scale"
# The training loss watched on every step, the steps between rows included
# (GradientRecorder.record_loss), as plain scalars for the Scalars dashboard:
# the row step's, the largest and smallest finite one since the previous
# row, and how many steps since then had a non-finite loss (the rules read it).
LOSS_TAG = f"{TAG_PREFIX}/loss"
LOSS_INTERVAL_MAX_TAG = f"{TAG_PREFIX}/loss_interval_max"
LOSS_INTERVAL_MIN_TAG = f"{TAG_PREFIX}/loss_interval_min"
NONFINITE_LOSS_STEPS_TAG = f"{TAG_PREFIX}/nonfinite_loss_steps"


def layer_statistic_tag(statistic):
    return f"{TAG_PREFIX}/layer/{statistic}"


def variable_statistic_tag(statistic):
    return f"{TAG_PREFIX}/variable/{statistic}"


def activation_statistic_tag(statistic):
    return f"{TAG_PREFIX}/activation/{statistic}"


def histogram_tag(depth, layer_name, kind):
    """Tag of one layer's histogram; the depth prefix sorts the dashboard."""
    return f"{TAG_PREFIX}/histograms/{depth:03d}_{layer_name}/{kind}"


def alert_count_tag(kind):
    """Run-level scalar: how many layers have the alert at this step."""
    return f"{ALERTS_PREFIX}/{kind}_layers"


def layer_alert_tag(kind, layer_name):
    """Per-layer scalar, 1.0 while the alert holds, 0.0 otherwise."""
    return f"{ALERTS_PREFIX}/{kind}/{layer_name}"


def _create_metadata(content, description):
    return summary_pb2.SummaryMetadata(
        summary_description=description,
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content.SerializeToString()
        ),
        # Third-party plugins must set data_class themselves, or TensorBoard's
        # data providers (and the Rust data server) ignore the series.
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def create_layer_table_metadata():
    content = plugin_data_pb2.GradflowPluginData(
        version=PROTO_VERSION,
        kind=plugin_data_pb2.GradflowPluginData.LAYER_TABLE,
    )
    return _create_metadata(content, "tb_gradflow layer table (serialized LayerTable)")


def create_statistic_metadata(statistic, *, per):
    """Metadata for a per-`layer` or per-`variable` statistic vector."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(STATISTICS)}")
    kinds = {
        "layer": plugin_data_pb2.GradflowPluginData.LAYER_STATISTIC,
        "variable": plugin_data_pb2.GradflowPluginData.VARIABLE_STATISTIC,
    }
    if per not in kinds:
        raise ValueError(f"per must be 'layer' or 'variable', got {per!r}")
    content = plugin_data_pb2.GradflowPluginData(
        version=PROTO_VERSION, kind=kinds[per], statistic=statistic
    )
    return _create_metadata(content, f"tb_gradflow {statistic} per {per}")


def create_activation_statistic_metadata(statistic):
    """Metadata for a per-layer activation statistic vector."""
    if statistic not in ACTIVATION_STATISTICS:
        raise ValueError(
            f"unknown activation statistic {statistic!r}; known: {', '.join(ACTIVATION_STATISTICS)}"
        )
    content = plugin_data_pb2.GradflowPluginData(
        version=PROTO_VERSION, kind=plugin_data_pb2.GradflowPluginData.ACTIVATION_STATISTIC, statistic=statistic
    )
    return _create_metadata(content, f"tb_gradflow activation {statistic} per layer")


class UnsupportedVersionError(ValueError):
    """The data was written by a newer tb_gradflow than this reader."""


def parse_plugin_data(content):
    """Parses `SummaryMetadata.plugin_data.content` of a "gradflow" summary.

    Raises:
      UnsupportedVersionError: the content is newer than PROTO_VERSION.
      ValueError: the content is not a GradflowPluginData proto.
    """
    if not isinstance(content, bytes):
        raise TypeError(f"content must be bytes, got {type(content).__name__}")
    try:
        result = plugin_data_pb2.GradflowPluginData.FromString(content)
    except Exception as e:  # protobuf raises DecodeError, message varies.
        raise ValueError(f"not tb_gradflow plugin data: {e}") from e
    if result.version > PROTO_VERSION:
        raise UnsupportedVersionError(
            f"it was written in tb_gradflow data format version {result.version}, and this "
            f"tb_gradflow reads versions up to {PROTO_VERSION}: upgrade tb_gradflow to read it"
        )
    return result
