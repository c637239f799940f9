"""Shared fixtures: real runs trained once per test session.

TensorFlow is imported inside fixtures only, so TF-free test modules (rules,
plugin routes over synthetic runs) do not pay for it unless they use one.
"""

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Epochs of seed 001's experiment used by the tests: enough logged steps for
# the vanishing rule's patience, a third of the tutorial's 100 to stay fast.
SEED001_TEST_EPOCHS = 30


@pytest.fixture(scope="session")
def seed001_logdir(tmp_path_factory):
    """logdir with runs sigmoid/train, tanh/train, relu/train of seed 001's MLP."""
    import seed001_vanishing

    logdir = tmp_path_factory.mktemp("seed001")
    accuracy = seed001_vanishing.train(str(logdir), epochs=SEED001_TEST_EPOCHS, update_freq=10, histogram_freq=100)
    return {"logdir": logdir, "accuracy": accuracy}
