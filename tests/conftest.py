"""Shared pytest configuration: offline Hugging Face, deterministic threads, the grading marker and plugin."""
import os
import sys
from pathlib import Path

# The hub is unreachable in CI: fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# The lab modules live at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The grader (`pytest --grade`, `pytest --exercise N`), tools/grading.py. Allowed in this
# conftest, which is not at the rootdir, because it is always an initial conftest
# (testpaths = tests), loaded before pytest configures itself.
pytest_plugins = ["tools.grading"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "exercise(number, points=1, visibility='visible'): a graded test of lab exercise `number`",
    )
