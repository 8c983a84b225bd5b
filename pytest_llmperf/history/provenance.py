"""Where a session ran: the CI run the environment names (GitHub Actions, GitLab CI, Buildkite, Jenkins) and the
git branch under test. Read from environment variables and git, never from the network; a CI URL loses any
``user:password@`` part."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pytest_llmperf.history.model import CiRun


def ci_run(env: Mapping[str, str]) -> CiRun | None:
    """The CI run named by the environment: GitHub Actions, GitLab CI, Buildkite or Jenkins (in that order)."""
    if env.get("GITHUB_ACTIONS") == "true" and env.get("GITHUB_RUN_ID"):
        run_id = env["GITHUB_RUN_ID"] + (f".{env['GITHUB_RUN_ATTEMPT']}" if env.get("GITHUB_RUN_ATTEMPT") else "")
        server, repo = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY")
        url = f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}" if server and repo else None
        return CiRun("github", run_id, _public_url(url))
    if env.get("GITLAB_CI") == "true" and (env.get("CI_JOB_ID") or env.get("CI_PIPELINE_ID")):
        run_id = env.get("CI_JOB_ID") or env["CI_PIPELINE_ID"]
        return CiRun("gitlab", run_id, _public_url(env.get("CI_JOB_URL") or env.get("CI_PIPELINE_URL")))
    if env.get("BUILDKITE") == "true" and env.get("BUILDKITE_BUILD_ID"):
        return CiRun("buildkite", env["BUILDKITE_BUILD_ID"], _public_url(env.get("BUILDKITE_BUILD_URL")))
    if env.get("JENKINS_URL") and (env.get("BUILD_TAG") or env.get("BUILD_ID")):
        return CiRun("jenkins", env.get("BUILD_TAG") or env["BUILD_ID"], _public_url(env.get("BUILD_URL")))
    return None


def git_branch(env: Mapping[str, str], rootdir: Path | None) -> str | None:
    """The branch under test: CI variables first (a CI checkout is often a detached HEAD), then git itself."""
    for name in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "BUILDKITE_BRANCH", "BRANCH_NAME"):
        if env.get(name):
            return env[name]
    if env.get("GIT_BRANCH"):  # Jenkins' git plugin: "origin/main"
        return env["GIT_BRANCH"].removeprefix("origin/")
    if rootdir is None:
        return None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=rootdir, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    branch = done.stdout.strip()
    return branch if done.returncode == 0 and branch and branch != "HEAD" else None


def _public_url(url: str | None) -> str | None:
    """``url`` without a ``user:password@`` part (CI systems do not put one there; a proxy's rewrite might)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
