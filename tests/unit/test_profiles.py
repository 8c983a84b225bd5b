from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from pytest_llmperf.errors import ServerError, SpecError
from pytest_llmperf.servers import profiles
from pytest_llmperf.servers.profiles import (
    BUILTIN_PROFILES,
    LLAMA_SERVER_ENV,
    Profile,
    get_profile,
    llama_server_binary,
    load_profiles,
    parse_cpu_list,
)


@pytest.fixture
def fake_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(binary))
    return binary


@pytest.fixture
def no_taskset(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "taskset" else real_which(name))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    return path


def test_builtin_names() -> None:
    assert {"llamacpp-tiny", "sim", "vllm", "sglang", "trtllm", "dynamo"} <= set(BUILTIN_PROFILES)
    for profile in BUILTIN_PROFILES.values():
        assert "port" in profile.placeholders(), profile.name
        assert profile.health_path.startswith("/")


def test_llamacpp_tiny_render(fake_llama_server: Path, tmp_path: Path, no_taskset: None) -> None:
    profile = get_profile("llamacpp-tiny")
    argv = profile.render(8123, cache_dir=tmp_path / "cache")
    assert argv[0] == str(fake_llama_server)
    model_path = Path(argv[argv.index("--model") + 1])
    assert model_path.is_file()
    assert model_path.parent == tmp_path / "cache"
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--parallel") + 1] == "8"
    assert argv[argv.index("--alias") + 1] == profile.model == "llmperf-tiny"
    assert "--metrics" in argv
    assert profile.extra_body == {"cache_prompt": False, "timings_per_token": True}


def test_llamacpp_tiny_pins_to_last_core(
    fake_llama_server: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/taskset")
    monkeypatch.setattr(profiles, "_allowed_cpus", lambda: [0, 1, 2, 3])
    argv = get_profile("llamacpp-tiny").render(8000, cache_dir=tmp_path)
    assert argv[:3] == ["taskset", "-c", "3"]
    assert argv[argv.index("--threads") + 1] == "1"


def test_auto_affinity_needs_two_cores(
    fake_llama_server: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/taskset")
    monkeypatch.setattr(profiles, "_allowed_cpus", lambda: [0])
    profile = get_profile("llamacpp-tiny")
    assert profile.pinned_cpus() is None
    argv = profile.render(8000, cache_dir=tmp_path)
    assert argv[0] == str(fake_llama_server)
    assert argv[argv.index("--threads") + 1] == "1"


def test_explicit_affinity_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/taskset")
    profile = Profile(name="p", command=("srv", "--port", "{port}", "-t", "{threads}"), cpu_affinity="2-3")
    assert profile.render(1) == ["taskset", "-c", "2,3", "srv", "--port", "1", "-t", "2"]
    assert profile.render(1, threads=7)[-1] == "7"


def test_llamacpp_tiny_without_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(profiles, "llama_server_binary", lambda: None)
    with pytest.raises(ServerError, match=r"pytest-llmperf\[llamacpp\]"):
        get_profile("llamacpp-tiny").render(8000, cache_dir=tmp_path)


def test_sim_uses_current_interpreter() -> None:
    argv = get_profile("sim").render(4321)
    assert argv[:3] == [sys.executable, "-m", "pytest_llmperf.sim"]
    assert argv[argv.index("--port") + 1] == "4321"
    assert argv[argv.index("--model") + 1] == "llmperf-sim"


def test_engine_templates() -> None:
    assert get_profile("vllm").render(8000, model="org/m") == [
        "vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "8000",
    ]  # fmt: skip
    assert get_profile("sglang").render(8000, model="m")[1:4] == ["-m", "sglang.launch_server", "--model-path"]
    assert get_profile("trtllm").render(8000, model="m")[:2] == ["trtllm-serve", "m"]
    assert get_profile("dynamo").render(8000)[1:] == ["-m", "dynamo.frontend", "--http-port", "8000"]


def test_model_required() -> None:
    with pytest.raises(SpecError, match=r"'vllm' needs a model name: pass --llmperf-model"):
        get_profile("vllm").render(8000)


def test_other_braces_left_alone_and_env_rendered() -> None:
    profile = Profile(
        name="p",
        command=("srv", "--config", '{"max": 4, "x": {"y": 1}}'),
        env={"SRV_PORT": "{port}", "PLAIN": "1"},
    )
    assert profile.render(99)[-1] == '{"max": 4, "x": {"y": 1}}'
    assert profile.render_env(99) == {"SRV_PORT": "99", "PLAIN": "1"}


def test_unknown_placeholder() -> None:
    profile = Profile(name="p", command=("srv", "--port", "{port}", "--gpu", "{gpu}"))
    with pytest.raises(SpecError, match=r"unknown placeholder \{gpu\}.*\{port\}"):
        profile.render(1)


@pytest.mark.parametrize(("text", "expected"), [("3", [3]), ("0,2-3", [0, 2, 3]), (" 1 , 1 ", [1])])
def test_parse_cpu_list(text: str, expected: list[int]) -> None:
    assert parse_cpu_list(text) == expected


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "1,,2"])
def test_parse_cpu_list_errors(text: str) -> None:
    with pytest.raises(SpecError, match="bad CPU list"):
        parse_cpu_list(text)


def test_load_profiles(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
profiles:
  vllm-local:
    extends: vllm
    model: Qwen/Qwen3-0.6B
    command: vllm serve {model} --port {port} --max-num-seqs 64
    env: {CUDA_VISIBLE_DEVICES: 0, VLLM_LOGGING_LEVEL: WARNING}
    startup_timeout_s: 900
  my-engine:
    command: [my-server, --listen, "{host}:{port}", --json, '{"a": 1}']
    health_path: /ready
    engine: mine
    extra_body: {cache_prompt: false}
    cpu_affinity: 1
  derived:
    extends: my-engine
    gpus_per_server: 2
""",
    )
    loaded = load_profiles(path)
    local = loaded["vllm-local"]
    assert local.command == ("vllm", "serve", "{model}", "--port", "{port}", "--max-num-seqs", "64")
    assert local.engine == "vllm"
    assert local.model == "Qwen/Qwen3-0.6B"
    assert local.env == {"CUDA_VISIBLE_DEVICES": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
    assert local.startup_timeout_s == 900.0
    mine = loaded["my-engine"]
    assert mine.command == ("my-server", "--listen", "{host}:{port}", "--json", '{"a": 1}')
    assert (mine.health_path, mine.engine, mine.cpu_affinity) == ("/ready", "mine", "1")
    assert mine.extra_body == {"cache_prompt": False}
    assert loaded["derived"].command == mine.command
    assert loaded["derived"].gpus_per_server == 2
    assert get_profile("derived", loaded) is loaded["derived"]


def test_user_profile_overrides_builtin(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  sim:\n    command: [sim-server, --port, '{port}']\n")
    assert get_profile("sim", load_profiles(path)).command == ("sim-server", "--port", "{port}")


def test_empty_file_has_no_profiles(tmp_path: Path) -> None:
    assert load_profiles(write(tmp_path, "")) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("profiles: [a, b]", r"top-level 'profiles:' mapping"),
        ("servers: {}", r"top-level 'profiles:' mapping"),
        ("profiles: {}\nextra: 1", r"unknown top-level key\(s\) extra"),
        ("profiles:\n  p: 3", r"profile 'p': expected a mapping"),
        ("profiles:\n  p:\n    comand: x --port {port}", r"unknown field 'comand' \(did you mean 'command'\?\)"),
        ("profiles:\n  p:\n    engine: x", r"field 'command' is required"),
        ("profiles:\n  p:\n    command: []", r"field 'command': expected a non-empty list"),
        ("profiles:\n  p:\n    command: srv --port 80", r"no \{port\} placeholder"),
        ("profiles:\n  p:\n    command: srv {port} {gpu}", r"unknown placeholder\(s\) \{gpu\}"),
        ("profiles:\n  p:\n    extends: vlm", r"field 'extends': unknown profile 'vlm' \(did you mean 'vllm'\?\)"),
        ("profiles:\n  p:\n    extends: sim\n    startup_timeout_s: -1", r"'startup_timeout_s': expected a number"),
        ("profiles:\n  p:\n    extends: sim\n    startup_timeout_s: yes", r"'startup_timeout_s': expected a number"),
        ("profiles:\n  p:\n    extends: sim\n    gpus_per_server: 1.5", r"'gpus_per_server': expected an integer"),
        ("profiles:\n  p:\n    extends: sim\n    health_path: health", r"'health_path': expected a URL path"),
        ("profiles:\n  p:\n    extends: sim\n    env: [A]", r"'env': expected a mapping"),
        ("profiles:\n  p:\n    extends: sim\n    cpu_affinity: all", r"'cpu_affinity': expected 'auto'"),
        ('profiles:\n  p:\n    extends: sim\n    command: "srv \'unclosed"', r"'command': cannot split"),
    ],
)
def test_load_profiles_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as info:
        load_profiles(path)
    assert str(path) in str(info.value)


def test_load_profiles_bad_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "profiles:\n  p: [unclosed\n")
    with pytest.raises(SpecError, match=r"profiles\.yaml: not valid YAML"):
        load_profiles(path)


def test_load_profiles_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot read server profiles from .*nope\.yaml"):
        load_profiles(tmp_path / "nope.yaml")


def test_unknown_profile_suggests_closest() -> None:
    with pytest.raises(SpecError, match=r"unknown server profile 'vlm' \(did you mean 'vllm'\?\)") as info:
        get_profile("vlm")
    assert "llamacpp-tiny, sglang, sim, trtllm, vllm" in str(info.value).replace("dynamo, ", "")


def test_unknown_profile_without_close_match() -> None:
    with pytest.raises(SpecError, match=r"unknown server profile 'zzzz'\. Known profiles: dynamo"):
        get_profile("zzzz")


def test_llama_server_binary_override(fake_llama_server: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert llama_server_binary() == fake_llama_server
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(fake_llama_server.parent / "missing"))
    assert llama_server_binary() is None
