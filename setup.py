"""tb_gradflow: per-layer gradient flow for Keras, as TensorBoard events and a TensorBoard plugin."""

import pathlib

import setuptools

ROOT = pathlib.Path(__file__).parent

setuptools.setup(
    name="tb_gradflow",
    version="0.1.0",
    description="Per-layer gradient flow for Keras in TensorBoard: a fit callback, a dashboard, a CI check",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The dashboard's files live in one place, plugin_frontend/src/, and are
    # installed as the package tb_gradflow.plugin.static: the wheel ships them
    # and an editable install serves the working tree (no copy, no build).
    packages=setuptools.find_packages(include=["tb_gradflow", "tb_gradflow.*"]) + ["tb_gradflow.plugin.static"],
    package_dir={"tb_gradflow.plugin.static": "plugin_frontend/src"},
    package_data={
        "tb_gradflow": ["proto/*.proto"],
        "tb_gradflow.plugin.static": ["*.js", "*.css"],
    },
    # The reading side (plugin, reader, CLI) needs no TensorFlow: a team
    # TensorBoard server installs only this and tensorboard.
    install_requires=[
        "tensorboard>=2.16",
        "numpy>=1.23",
        # plugin_data_pb2.py is protoc 31 gencode (as TensorBoard 2.21's own).
        "protobuf>=6.31.1",
        # Event-file checksums in C (TensorBoard's writer computes them in
        # pure Python, ~10 ms of GIL per row of histograms).
        "google-crc32c>=1.5",
    ],
    extras_require={
        # The training side: the Keras callback and the custom-loop writer.
        "tensorflow": ["tensorflow>=2.16", "keras>=3.0"],
        # keras-hub itself is installed with --no-deps by the test command:
        # its tensorflow-text requirement would pull in a second TensorFlow.
        # These are what it imports.
        # setuptools: tests/test_plugin_frontend.py builds the wheel without
        # build isolation. hypothesis: the plugin routes are fuzzed.
        # pytest-xdist: the suite runs its files on every core (pytest.ini);
        # filelock: workers train the shared seed 001 runs once (conftest.py).
        "test": ["pytest>=7", "pytest-xdist>=3", "filelock>=3", "playwright>=1.40", "werkzeug>=2",
                 "scikit-learn>=1.0", "hypothesis>=6", "setuptools>=64", "regex", "kagglehub", "tokenizers"],
        # examples/seed003_activations.py trains on scikit-learn's bundled digits.
        "examples": ["scikit-learn>=1.0"],
    },
    entry_points={
        "tensorboard_plugins": ["gradflow = tb_gradflow.plugin.loader:GradFlowLoader"],
        "console_scripts": ["tb-gradflow = tb_gradflow.cli:console_main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: TensorFlow",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
