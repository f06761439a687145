"""The `>>>` examples of the toolkit's docstrings run and print what they show (doctest)."""
import doctest
import importlib

import pytest

MODULES = ("toolkit.targets", "toolkit.layers", "toolkit.wanda", "toolkit.sensitivity", "toolkit.evaluation.scoring",
           "toolkit.evaluation.report", "toolkit.evaluation.smoke", "toolkit.evaluation.activations",
           "toolkit.students.construction", "toolkit.students.losses", "models")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert attempted > 0, f"{name} has no example"
    assert failed == 0
