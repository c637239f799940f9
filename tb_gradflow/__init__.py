"""tb_gradflow: per-layer gradient flow for Keras, in TensorBoard.

    import tb_gradflow
    model.fit(x, y, callbacks=[tb_gradflow.GradFlow("logs/run1")])

Training side (needs TensorFlow): `GradFlow` (Keras callback) and
`GradientWriter` (custom training loops). Reading side (TensorFlow-free):
`tb_gradflow.reader`, the TensorBoard plugin and the `tb-gradflow` CLI.
Importing this package imports no TensorFlow; the training-side names load
it on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "GradFlow": ("tb_gradflow.keras.callback", "GradFlow"),
    "GradientWriter": ("tb_gradflow.loop", "GradientWriter"),
    "Thresholds": ("tb_gradflow.rules", "Thresholds"),  # TF-free, here for convenience
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError as e:
            raise ImportError(
                f"tb_gradflow.{name} is the training side and needs TensorFlow and Keras "
                f"(pip install 'tb_gradflow[tensorflow]'): {e}"
            ) from e
    raise AttributeError(f"module 'tb_gradflow' has no attribute {name!r}")


def __dir__():
    # The lazy names too, so that dir() and a notebook's tab completion offer
    # GradFlow before it has been imported (PEP 562).
    return sorted(set(globals()) | set(_LAZY))
