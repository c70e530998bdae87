"""The public API (``import stopgrad as sg``): every name resolves, every function and class carries
an example, and the examples run.

The examples are doctests in the docstrings of the modules named in ``stopgrad._EXPORTS`` (and of
the package itself); they assume the globals ``torch`` and ``sg``, and run with ELLIPSIS and
NORMALIZE_WHITESPACE. A public function or class added without an example fails here.
"""
import doctest
import importlib
import inspect
import subprocess
import sys

import pytest
import torch

import stopgrad

MODULES = ["stopgrad", *(f"stopgrad.{module}" for module in stopgrad._EXPORTS)]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# functions and classes need an example; constants (BACKBONES, RECIPES, ...) do not
CALLABLES = [name for name in stopgrad._ORIGIN
             if inspect.isroutine(getattr(stopgrad, name)) or inspect.isclass(getattr(stopgrad, name))]


def doctests(module_name: str) -> list[doctest.DocTest]:
    """The docstring examples of one module, each with fresh globals ``torch`` and ``sg``."""
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder()
    return [test for test in finder.find(module, module_name, globs={"torch": torch, "sg": stopgrad})
            if test.examples]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in doctests(module_name):
        runner.run(test, out=report.append)
    assert runner.tries > 0, f"{module_name} has no docstring examples"
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples failed:\n" + "".join(report)


def test_the_constants_are_the_only_names_without_examples():
    constants = sorted(set(stopgrad._ORIGIN) - set(CALLABLES))
    assert constants == sorted(["BACKBONES", "HEAD_PRESETS", "DATASETS", "RECIPES", "POLICIES", "METHODS",
                                "EVALUATIONS"])


@pytest.mark.parametrize("name", CALLABLES)
def test_every_public_function_and_class_has_an_example(name):
    obj = getattr(stopgrad, name)
    assert ">>>" in (obj.__doc__ or ""), f"sg.{name} needs a docstring with an example (>>> lines)"
    # ... that test_docstring_examples_run runs: its module is one of MODULES, and doctest finds it there
    module_name = f"stopgrad.{stopgrad._ORIGIN[name]}"
    assert obj.__module__ == module_name, f"sg.{name} is defined in {obj.__module__}, not {module_name}"
    found = {test.name for test in doctests(module_name)}
    assert f"{module_name}.{obj.__qualname__}" in found, f"doctest does not find the example of sg.{name}"


def test_every_name_in_all_resolves_and_is_listed():
    assert len(set(stopgrad.__all__)) == len(stopgrad.__all__), "duplicate names in stopgrad.__all__"
    listed = dir(stopgrad)
    for name in stopgrad.__all__:
        value = getattr(stopgrad, name)  # AttributeError if it does not resolve
        assert name in listed, f"dir(stopgrad) does not list {name}"
        if name in stopgrad._ORIGIN:  # the object of its module, not a copy
            assert value is getattr(importlib.import_module(f"stopgrad.{stopgrad._ORIGIN[name]}"), name)
        else:
            assert inspect.ismodule(value) and value.__name__ == f"stopgrad.{name}"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        stopgrad.no_such_name


def test_import_stopgrad_is_lazy():
    """``import stopgrad`` loads neither torch nor the evaluators' heavy dependencies."""
    heavy = ("torch", "torchvision", "sklearn", "matplotlib")
    code = (f"import sys, stopgrad; assert stopgrad.__version__; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import stopgrad imported {out.stdout.strip()}"
