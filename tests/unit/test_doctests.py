"""Every docstring example in attnrl_core runs, and says what it prints."""

import doctest
import importlib
import pkgutil

import pytest

import attnrl_core
from tests.support import REPO

MODULES = sorted(m.name for m in pkgutil.walk_packages(attnrl_core.__path__, "attnrl_core."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(REPO)  # examples name repository files (experiments/tiny.yaml) relative to it
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (run pytest -s for the diff)"
