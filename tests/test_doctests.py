"""The ``Examples:`` sections of the public estimators' docstrings run as doctests."""

import doctest
import importlib

import pytest

MODULES = [
    "fdiv.discrete",
    "fdiv.montecarlo",
    "fdiv.kernel",
    "fdiv.variational",
    "fdiv.transport",
    "fdiv.kd",
    "fdiv.policy",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
