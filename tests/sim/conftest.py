"""A simulator in a thread of the test process, shared by the HTTP tests and reset after each of them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from pytest_llmperf.sim import SimConfig, run_in_thread

FAST = SimConfig(decode_ms=2, decode_ms_per_seq=0, prefill_tok_s=1e9)


@dataclass
class Sse:
    """What one streamed request returned: parsed ``data:`` payloads, their arrival times, and how it ended."""

    status: int
    payloads: list[Any] = field(default_factory=list)  # dict, "[DONE]", or the raw text of a bad line
    times: list[float] = field(default_factory=list)
    sent_at: float = 0.0
    error: str = ""

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [p for p in self.payloads if isinstance(p, dict)]

    @property
    def output(self) -> list[dict[str, Any]]:
        """Chunks that carry output (non-empty choices, and for chat a content delta)."""
        out = []
        for c in self.chunks:
            choices = c.get("choices") or []
            delta = choices[0].get("delta", {}) if choices else {}
            if choices and ("text" in choices[0] or "content" in delta) and "role" not in delta:
                out.append(c)
        return out

    @property
    def text(self) -> str:
        parts = []
        for c in self.output:
            choice = c["choices"][0]
            parts.append(choice["text"] if "text" in choice else choice["delta"]["content"])
        return "".join(parts)


class Client:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def stream(self, path: str, body: dict[str, Any], *, read_timeout: float = 10.0) -> Sse:
        timeout = httpx.Timeout(10.0, read=read_timeout)
        sent_at = time.perf_counter()
        with self.http.stream("POST", path, json=body, timeout=timeout) as r:
            sse = Sse(status=r.status_code, sent_at=sent_at)
            if r.status_code != 200:
                r.read()
                sse.payloads.append(r.json())
                return sse
            try:
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    sse.times.append(time.perf_counter())
                    try:
                        sse.payloads.append("[DONE]" if data == "[DONE]" else json.loads(data))
                    except ValueError:
                        sse.payloads.append(data)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout) as exc:
                sse.error = type(exc).__name__
        return sse

    def completion(self, prompt: Any = "one two three", **body: Any) -> Sse:
        return self.stream("/v1/completions", {"prompt": prompt, "stream": True, **body})

    def chat(self, content: str = "one two three", **body: Any) -> Sse:
        messages = [{"role": "user", "content": content}]
        return self.stream("/v1/chat/completions", {"messages": messages, "stream": True, **body})

    def configure(self, **changes: Any) -> dict[str, Any]:
        r = self.http.post("/sim/config", json=changes)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def records(self, clear: bool = False) -> list[dict[str, Any]]:
        r = self.http.get("/sim/requests", params={"clear": "1"} if clear else None)
        return list(r.json()["requests"])

    def record(self, rid: str) -> dict[str, Any]:
        return next(r for r in self.records() if r["id"] == rid)


@pytest.fixture(scope="session")
def sim_server() -> Iterator[str]:
    with run_in_thread(FAST) as url:
        yield url


@pytest.fixture
def make_client() -> Iterator[Callable[[str], Client]]:
    """Clients for servers a test starts itself; closed after the test."""
    clients: list[Client] = []

    def make(url: str) -> Client:
        clients.append(Client(url))
        return clients[-1]

    yield make
    for client in clients:
        client.http.close()


@pytest.fixture
def sim(sim_server: str) -> Iterator[Client]:
    client = Client(sim_server)
    yield client
    client.configure(reset=True)
    client.http.close()
