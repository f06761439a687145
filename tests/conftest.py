"""Shared pytest configuration: offline Hugging Face, deterministic threads, the grading marker and plugin."""
import os

import torch

# The hub is unreachable in CI: fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# The grader (`pytest --grade`, `pytest --exercise N`), tools/grading.py, importable as the
# root is on sys.path through pytest.ini (`pythonpath = . tests`). Allowed in this
# conftest, which is not at the rootdir, because it is always an initial conftest
# (testpaths = tests), loaded before pytest configures itself.
pytest_plugins = ["tools.grading"]

# One CPU thread for the whole session, however the tests are selected: results that depend on
# how a reduction is split across threads are then the same in a one-file run and in the suite.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "exercise(number, points=1, visibility='visible'): a graded test of lab exercise `number`",
    )
