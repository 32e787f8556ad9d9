"""Every docstring example in attnrl_core and tasks runs, and says what it prints."""

import doctest
import importlib
import pkgutil

import pytest

import attnrl_core
import tasks
from tests.support import REPO

MODULES = sorted(m.name for package in (attnrl_core, tasks) for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(REPO)  # examples name repository files (experiments/tiny.yaml) relative to it
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (run pytest -s for the diff)"
