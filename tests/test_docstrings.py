"""Every module docstring opens with an example; these run them."""

import doctest
import importlib

import pytest

MODULES = [
    "tb_gradflow.metadata",
    "tb_gradflow.rules",
    "tb_gradflow.aggregate",
    "tb_gradflow.schedule",
    "tb_gradflow.writer",
    "tb_gradflow.run_logger",
    "tb_gradflow.background_logger",
    "tb_gradflow.stats",
    "tb_gradflow.recorder",
    "tb_gradflow.keras.model_layers",
    "tb_gradflow.keras.activation_capture",
    "tb_gradflow.plugin.downsample",
    "tb_gradflow.plugin.params",
    "tb_gradflow.plugin.responses",
    "tb_gradflow.plugin.static_files",
    "tb_gradflow.plugin.gradflow_plugin",
    "tb_gradflow.event_file",
    "tb_gradflow.series_cache",
    "tb_gradflow.loop",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no runnable example"
