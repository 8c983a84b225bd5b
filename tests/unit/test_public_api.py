"""``pytest_llmperf`` is the package's public face: what users import, one error hierarchy, a cheap import."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest

import pytest_llmperf
from pytest_llmperf import errors

HEAVY = ("numpy", "scipy", "aiohttp", "httpx")


@pytest.mark.parametrize("name", pytest_llmperf.__all__)
def test_every_public_name_imports(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from pytest_llmperf import {name}", namespace)  # the statement users write, lazy names included
    assert namespace[name] is getattr(pytest_llmperf, name)
    assert name in dir(pytest_llmperf)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        pytest_llmperf.Nope  # noqa: B018


def test_every_error_and_warning_of_errors_py_is_public() -> None:
    defined = {
        name for name, value in vars(errors).items() if inspect.isclass(value) and value.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
    assert defined <= set(pytest_llmperf.__all__)


def _public_classes() -> list[type]:
    return [value for name in pytest_llmperf.__all__ if inspect.isclass(value := getattr(pytest_llmperf, name))]


@pytest.mark.parametrize(
    "cls", [c for c in _public_classes() if issubclass(c, BaseException)], ids=lambda c: c.__name__
)
def test_exceptions_share_one_base(cls: type[BaseException]) -> None:
    if issubclass(cls, Warning):
        assert issubclass(cls, pytest_llmperf.LLMPerfWarning)
        assert issubclass(cls, UserWarning)
    elif cls is pytest_llmperf.RunInterrupted:
        # Ctrl-C must still stop pytest, so it stays a KeyboardInterrupt, not an Exception.
        assert issubclass(cls, KeyboardInterrupt)
    else:
        assert issubclass(cls, pytest_llmperf.LLMPerfError)


def test_old_module_paths_still_import_the_same_classes() -> None:
    moved = {
        "pytest_llmperf.harness.fixtures": ("LLMPerfInconclusive", "LLMPerfLimitWarning"),
        "pytest_llmperf.options": ("LLMPerfConfigWarning",),
        "pytest_llmperf.servers.process": ("ServerProcessExited", "PortInUseError"),
        "pytest_llmperf.pairs": ("DocumentError",),
        "pytest_llmperf.client.sse": ("StreamError",),
    }
    for module, names in moved.items():
        for name in names:
            assert getattr(importlib.import_module(module), name) is getattr(errors, name), f"{module}.{name}"


def test_warning_filters_take_the_public_path(pytester: pytest.Pytester) -> None:
    # pytest resolves the dotted category when it reads the filter, as in this project's pyproject.toml.
    pytester.makepyfile(
        """
        import warnings
        import pytest_llmperf

        def test_open():
            warnings.warn(pytest_llmperf.LLMPerfInconclusive("inconclusive verdict"))
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:llmperf", "-W", "error::pytest_llmperf.LLMPerfInconclusive")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LLMPerfInconclusive: inconclusive verdict*"])


def test_importing_the_package_loads_nothing_heavy() -> None:
    # A fresh interpreter: this one has long imported everything. pytest imports the package at every start.
    code = (
        "import json, sys\n"
        "import pytest_llmperf\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
        "from pytest_llmperf import Endpoint, Launch, Workload, LLMPerfError\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    on_import, with_value_objects = (json.loads(line) for line in out.splitlines())
    assert on_import == []
    assert with_value_objects == []


def test_loading_the_plugin_loads_no_heavy_module_and_no_typed_documents() -> None:
    # What every pytest start pays once the plugin is installed: the typed documents (results.py) serve type
    # checkers, the status words come from the small status.py.
    watched = (*HEAVY, "matplotlib", "pytest_llmperf.results")
    code = (
        "import json, sys\n"
        "import pytest, pytest_llmperf.plugin\n"
        f"print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
