"""The examples in the docstrings of the statistics and option modules run as written."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["headbench.evaluate", "headbench.analyses.findings", "headbench.config",
           "headbench.analyses.translation", "headbench.train.protocol"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
