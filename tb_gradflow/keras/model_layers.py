"""Which layer owns which variable, and in what order the forward pass calls them.

    >>> import keras
    >>> from tb_gradflow.keras import model_layers
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="a"),
    ...                           keras.layers.Dense(1, name="b")])
    >>> owners, layer_of_variable = model_layers.variable_owners(model)
    >>> [layer.name for layer in owners], layer_of_variable
    (['a', 'b'], [0, 0, 1, 1])

Depth comes from the real call order, recorded while the train step is being
traced (`CallOrderRecorder`): subclassed models list layers in attribute
assignment order, which says nothing about depth.
"""

import numpy as np

from tb_gradflow.keras import patching
from tb_gradflow.proto import plugin_data_pb2


def _own_variables(layer):
    return list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables", []))


def variable_owners(model):
    """(owners, layer_of_variable) for `model.trainable_variables`.

    owners: the layers that own variables, in `model.trainable_variables`
    order of first appearance, followed by layers that own only non-trainable
    variables (frozen). layer_of_variable[i] indexes owners for the i-th
    trainable variable.
    """
    owner_of = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for v in _own_variables(layer):
            owner_of.setdefault(id(v), layer)
    owners, index_of, layer_of_variable = [], {}, []
    for v in model.trainable_variables:
        layer = owner_of.get(id(v), model)
        if id(layer) not in index_of:
            index_of[id(layer)] = len(owners)
            owners.append(layer)
        layer_of_variable.append(index_of[id(layer)])
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if _own_variables(layer) and id(layer) not in index_of:
            index_of[id(layer)] = len(owners)
            owners.append(layer)
    return owners, layer_of_variable


class CallOrderRecorder:
    """Records the order in which layers are first called while a step traces.

    Patches `call` on the given layer instances (Keras' `__call__` looks it up
    on the instance) and restores them exactly with `restore()`. A layer
    whose `call` cannot be replaced (a read-only property, say) is left
    alone: it keeps its place after the layers seen, like a layer never
    called, and monitoring goes on.
    """

    def __init__(self, layers):
        self._patches = []
        self._seen = set()
        self.order = []
        for layer in layers:
            try:
                patch = patching.wrap(layer, "call", lambda inner, layer=layer: self._recording(layer, inner))
            except (AttributeError, TypeError):
                continue
            self._patches.append(patch)

    def _recording(self, layer, inner):
        def recording_call(*args, **kwargs):
            if id(layer) not in self._seen:
                self._seen.add(id(layer))
                self.order.append(layer)
            return inner(*args, **kwargs)

        return recording_call

    def restore(self):
        for patch in self._patches:
            patch.remove()
        self._patches = []


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None and type(layer).__name__ in ("ReLU", "LeakyReLU", "ELU"):
        return type(layer).__name__.lower()
    if activation is None:
        return ""
    name = getattr(activation, "__name__", None) or type(activation).__name__
    return "" if name == "linear" else name


def output_layers(model, call_order):
    """ids of the layers that produce the model's outputs.

    Functional and Sequential models name them (`model.outputs`, through
    nested models); a subclassed model does not, so its last-called layer
    stands in.
    """
    found = set()

    def visit(m):
        try:
            outputs = list(m.outputs)
        except (AttributeError, ValueError):
            return False
        for tensor in outputs:
            operation = getattr(getattr(tensor, "_keras_history", None), "operation", None)
            if operation is None:
                continue
            if not (hasattr(operation, "outputs") and visit(operation)):
                found.add(id(operation))
        return True

    if not visit(model) and call_order:
        found.add(id(call_order[-1]))
    return found


def build_layer_table(
    owners, layer_of_variable, trainable_variables, has_gradient, call_order, activations=None, model=None
):
    """LayerTable in depth order, and device_layer_order (table row -> owners index).

    Args:
      owners, layer_of_variable: from `variable_owners`.
      trainable_variables: the variables, aligned with layer_of_variable.
      has_gradient: bool per trainable variable (False for a None gradient).
      call_order: layers in first-call order (from CallOrderRecorder); owners
        never called keep their relative order after the called ones.
      activations: {id(layer): activation_capture.Captured} for the layers
        whose activation was considered (owners may include variable-less
        Activation layers, so activation and gradient rows share one order).
      model: the model, to mark the layers that produce its outputs.
    """
    activations = activations or {}
    outputs = output_layers(model, call_order) if model is not None else set()
    position = {id(layer): i for i, layer in enumerate(call_order)}
    ranked = sorted(
        range(len(owners)),
        key=lambda i: (position.get(id(owners[i]), len(call_order)), i),
    )
    depth_of_owner = {owner_index: depth for depth, owner_index in enumerate(ranked)}
    layers = []
    for depth, owner_index in enumerate(ranked):
        layer = owners[owner_index]
        own = _own_variables(layer)
        path = getattr(layer, "path", None) or layer.name
        captured = activations.get(id(layer))
        extra = {}
        if captured is not None:
            extra = dict(
                activation=captured.name,
                activation_capture=captured.status,
                activation_peak_derivative=captured.probe.peak if captured.probe.peak == captured.probe.peak else 0.0,
                activation_two_sided=captured.probe.two_sided,
                activation_units=captured.units,
                activation_read=captured.read if captured.status == "in-step" else "",
            )
        layers.append(
            plugin_data_pb2.Layer(
                **extra,
                name=path,
                class_name=type(layer).__name__,
                **({} if captured is not None else {"activation": _activation_name(layer)}),
                depth=depth,
                parameter_count=int(sum(int(np.prod(v.shape)) for v in own)),
                is_output=id(layer) in outputs,
                has_gradient=any(
                    has_gradient[i] for i, o in enumerate(layer_of_variable) if o == owner_index
                ),
            )
        )
    variables = [
        plugin_data_pb2.Variable(
            name=v.path,
            layer_index=depth_of_owner[layer_of_variable[i]],
            shape=[int(d) for d in v.shape],
            has_gradient=bool(has_gradient[i]),
        )
        for i, v in enumerate(trainable_variables)
    ]
    table = plugin_data_pb2.LayerTable(layers=layers, variables=variables)
    return table, ranked
