"""Shared fixtures: real runs trained once per test session.

TensorFlow is imported inside fixtures only, so TF-free test modules (rules,
plugin routes over synthetic runs) do not pay for it unless they use one.
"""

import json
import os
import pathlib
import sys

import filelock
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Epochs of seed 001's experiment used by the tests: enough logged steps for
# the vanishing rule's patience, a third of the tutorial's 100 to stay fast.
SEED001_TEST_EPOCHS = 30


# Each xdist worker holds TensorFlow and its trained fixtures (1-2 GB); past
# four workers the suite is as long as its longest file anyway.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


@pytest.fixture(scope="session")
def seed001_logdir(tmp_path_factory, worker_id):
    """logdir with runs sigmoid/train, tanh/train, relu/train of seed 001's MLP.

    Trained once per test session: under xdist the first worker that needs it
    trains it into the session's shared temporary directory while the others
    wait on a file lock, then read it (pytest-xdist's documented recipe).
    """
    import seed001_vanishing

    def train(logdir):
        accuracy = seed001_vanishing.train(str(logdir), epochs=SEED001_TEST_EPOCHS, update_freq=10, histogram_freq=100)
        return {"logdir": logdir, "accuracy": accuracy}

    if worker_id == "master":  # not under xdist (-n 0)
        return train(tmp_path_factory.mktemp("seed001"))
    shared = tmp_path_factory.getbasetemp().parent
    logdir, done = shared / "seed001", shared / "seed001.json"
    with filelock.FileLock(str(shared / "seed001.lock")):
        if not done.exists():
            logdir.mkdir()
            done.write_text(json.dumps(train(logdir)["accuracy"]))
    return {"logdir": logdir, "accuracy": json.loads(done.read_text())}
