"""Hooks pytest-llmperf adds, for a ``conftest.py`` to implement. Added through ``pytest_addhooks``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_llmperf.servers.profiles import Profile
    from pytest_llmperf.spec import Launch


@pytest.hookspec(firstresult=True)
def pytest_llmperf_launch(config: pytest.Config, profile: Profile, port: int, argv: list[str]) -> Launch | None:
    """Supply the server process yourself, for deployments the plugin cannot start on its own.

    ``argv`` is the command the profile would run on ``port``. Return a
    :class:`pytest_llmperf.Launch` to run another command instead, for example wrapped in Slurm's
    ``srun`` or ``kubectl exec``, with the ``url`` where it will answer. The plugin still waits for
    readiness at ``url`` + the profile's health path, keeps the output in the server log, and stops the
    command's process group at the end (``srun`` forwards the signal to its remote tasks). Return ``None``
    to let the plugin run ``argv`` itself.

    Example::

        def pytest_llmperf_launch(config, profile, port, argv):
            if profile.name == "vllm-multinode":
                return Launch(argv=("srun", "-N2", "--gpus-per-node=8", *argv), url=f"http://node01:{port}")
    """


@pytest.hookspec
def pytest_llmperf_result(item: pytest.Item, result: dict[str, Any]) -> None:
    """Called after each ``llmperf.run()`` with the run's results (builtins only: workload, summary).

    Push them to a dashboard or database without parsing report files. Runs on the process that ran the
    test (a worker under pytest-xdist).
    """
