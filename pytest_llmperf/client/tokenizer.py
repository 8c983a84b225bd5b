"""Learning what exact input lengths need from the server, over the synchronous control plane.

The server's own ``/tokenize`` is the reference (vLLM, SGLang and llama.cpp serve it); a local
``tokenizer.json`` (the optional ``tokenizers`` package) can stand in for it. Neither is required: without
them prompts are text of estimated length and the server's ``usage.prompt_tokens`` reports the truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_llmperf.client.datasets import COMMON_WORDS, PromptContext, Tokenize
from pytest_llmperf.errors import EndpointError, SpecError
from pytest_llmperf.spec import Endpoint, Workload, redact_url

if TYPE_CHECKING:
    import httpx

# Ordinary prose: its pieces are normal vocabulary ids on any tokenizer, never special or control tokens.
_POOL_TEXT = (
    "The river ran past the old mill and under the stone bridge, where children stood in the evening to "
    "watch the water turn gold. Farmers brought grain in carts pulled by patient horses, and the miller "
    "weighed every sack before he wrote the number in a heavy book. In winter the wheel froze and the town "
    "waited for spring, telling stories about floods, harvests, weddings and the long road to the city."
)
_TIMEOUT_S = 30.0  # control-plane calls (/tokenize, /apply-template): quick whatever the model
_PROBE = "calibrating chat prompt lengths (a 1-token chat request measures what the chat template adds)"


def control_client(endpoint: Endpoint) -> httpx.Client:
    """One keep-alive client for the session's control-plane calls; the caller closes it."""
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    return httpx.Client(base_url=endpoint.base_url, headers=headers, timeout=_TIMEOUT_S, trust_env=False)


def server_tokenizer(endpoint: Endpoint, client: httpx.Client) -> Tokenize | None:
    """A callable that tokenizes text with the server's ``/tokenize``, or None when it has none."""
    import httpx

    def tokenize(text: str) -> list[int]:
        # "prompt" is vLLM's and SGLang's field, "content" llama.cpp's; each server ignores the other.
        body = {"model": endpoint.model, "prompt": text, "content": text, "add_special_tokens": False}
        response = client.post("/tokenize", json=body)
        response.raise_for_status()
        tokens = response.json().get("tokens")
        if not isinstance(tokens, list):
            raise ValueError("no 'tokens' list in the /tokenize answer")
        return [t if isinstance(t, int) else int(t["id"]) for t in tokens]

    try:
        tokenize("hello world")
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return tokenize


def local_tokenizer(path: str) -> Tokenize:
    """Tokenize with a local ``tokenizer.json`` (needs the optional ``tokenizers`` package)."""
    try:
        from tokenizers import Tokenizer  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise SpecError(
            f"tokenizer={path!r} needs the 'tokenizers' package: pip install tokenizers "
            "(or drop the option to use the server's /tokenize)"
        ) from None
    try:
        tok: Any = Tokenizer.from_file(path)
    except Exception as exc:
        raise SpecError(f"cannot load tokenizer file {path!r}: {exc}") from exc

    def tokenize(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False).ids)

    return tokenize


def token_pool(tokenize: Tokenize) -> list[int]:
    """Distinct ordinary token ids to draw random token-id prompts from."""
    return sorted(set(tokenize(_POOL_TEXT)))


def single_token_words(tokenize: Tokenize) -> tuple[str, ...]:
    """The common words this tokenizer keeps whole, so text prompts can be sized one token at a time."""
    whole = tuple(word for word in COMMON_WORDS if len(tokenize(word)) == 1)
    return whole if len(whole) >= 8 else ()


def chat_overhead_tokens(endpoint: Endpoint, tokenize: Tokenize, client: httpx.Client, *, timeout_s: float) -> int:
    """Tokens the chat template adds around one user message, measured with one tiny request.

    That request is a generation like the workload's own, so the workload's ``request_timeout_s`` bounds it
    (``timeout_s``, for each wait of the request), not the control plane's 30 s: a slow server still gets
    measured, and a test that allows each request 5 s never waits 30 s here. A server that cannot answer it
    fails the test, naming this probe; one that answers without usage counts gets no correction (0).
    """
    import httpx

    content = "hello there"
    where = f"POST {redact_url(endpoint.base_url)}/v1/chat/completions"
    body = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
        **endpoint.extra_body,
    }
    prompt_tokens = None
    try:
        with client.stream("POST", "/v1/chat/completions", json=body, timeout=timeout_s) as response:
            if response.status_code != 200:
                return 0
            for line in response.iter_lines():
                if line.startswith("data:") and "usage" in line and line[5:].strip() != "[DONE]":
                    chunk = json.loads(line[5:])
                    usage = chunk.get("usage") if isinstance(chunk, dict) else None
                    if isinstance(usage, dict):
                        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
    except httpx.TimeoutException:
        raise EndpointError(
            f"{_PROBE}: {where} did not answer within the workload's request_timeout_s={timeout_s:g} s; raise "
            "request_timeout_s if the server is only slow, else check that it is serving"
        ) from None
    except httpx.HTTPError as exc:
        raise EndpointError(f"{_PROBE}: {where} failed: {type(exc).__name__}: {exc}") from None
    except ValueError:  # an answer that is not the JSON it should be: no correction
        return 0
    if not isinstance(prompt_tokens, int):
        return 0
    return max(0, prompt_tokens - len(tokenize(content)))


def server_chat_counter(endpoint: Endpoint, tokenize: Tokenize, client: httpx.Client) -> Callable[[str], int] | None:
    """Exact token count of one user message with the server's chat template, or None if it cannot tell.

    vLLM and SGLang tokenize ``messages`` directly; llama.cpp renders the template with ``/apply-template``
    and then tokenizes the result with special tokens. A count must exceed the bare text's to be believed
    (a server that ignores ``messages`` would return the count of nothing).
    """
    count = server_messages_counter(endpoint, tokenize, client)
    return None if count is None else _one_message(count)


def server_messages_counter(
    endpoint: Endpoint, tokenize: Tokenize, client: httpx.Client
) -> Callable[[Sequence[Mapping[str, str]]], int] | None:
    """Exact token count of a ``messages`` list with the server's chat template (as
    :func:`server_chat_counter`, whose one-message count it gives for a list of any length), or None."""
    import httpx

    def via_messages(messages: Sequence[Mapping[str, str]]) -> int:
        body = {"model": endpoint.model, "messages": list(messages), "add_generation_prompt": True}
        response = client.post("/tokenize", json=body)
        response.raise_for_status()
        data = response.json()
        return int(data["count"]) if "count" in data else len(data["tokens"])

    def via_template(messages: Sequence[Mapping[str, str]]) -> int:
        response = client.post("/apply-template", json={"messages": list(messages)})
        response.raise_for_status()
        rendered = response.json()["prompt"]
        response = client.post("/tokenize", json={"content": rendered, "add_special": True, "parse_special": True})
        response.raise_for_status()
        return len(response.json()["tokens"])

    probe = "hello there"
    bare = len(tokenize(probe))
    for counter in (via_messages, via_template):
        try:
            if counter([{"role": "user", "content": probe}]) > bare:
                return counter
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            continue
    return None


def prompt_context(
    workload: Workload, endpoint: Endpoint, client: httpx.Client, *, tokenizer_path: str | None = None
) -> PromptContext:
    """Everything :func:`pytest_llmperf.client.datasets.build_prompts` needs to hit exact lengths."""
    tokenize: Callable[[str], list[int]] | None
    tokenize = local_tokenizer(tokenizer_path) if tokenizer_path else server_tokenizer(endpoint, client)
    if tokenize is None:
        return PromptContext()
    pool = token_pool(tokenize) if workload.api == "completions" and workload.dataset == "random" else ()
    words = single_token_words(tokenize) if not pool else ()
    if workload.api != "chat":
        added = 0 if pool or tokenizer_path else special_tokens_added(endpoint, client, tokenize)
        return PromptContext(token_pool=pool, tokenize=tokenize, words=words, text_overhead_tokens=added)
    count_messages = None if tokenizer_path else server_messages_counter(endpoint, tokenize, client)
    count_chat = None if count_messages is None else _one_message(count_messages)
    timeout_s = workload.request_timeout_s
    overhead = 0 if count_chat else chat_overhead_tokens(endpoint, tokenize, client, timeout_s=timeout_s)
    return PromptContext(
        token_pool=pool,
        tokenize=tokenize,
        chat_overhead_tokens=overhead,
        count_chat=count_chat,
        count_messages=count_messages if workload.turns > 1 else None,
        words=words,
    )


def special_tokens_added(endpoint: Endpoint, client: httpx.Client, tokenize: Tokenize) -> int:
    """How many special tokens (a BOS) the server adds to a text prompt: what it counts in a completion's
    ``usage.prompt_tokens`` beyond the text's own tokens (llama.cpp and vLLM both add a BOS where the model has
    one; token-id prompts are taken as they are). 0 when the server cannot say."""
    import httpx

    probe = "hello there"
    body = {"model": endpoint.model, "prompt": probe, "content": probe, "add_special_tokens": True, "add_special": True}
    try:
        response = client.post("/tokenize", json=body)
        response.raise_for_status()
        tokens = response.json().get("tokens")
        if not isinstance(tokens, list):
            return 0
        return max(0, len(tokens) - len(tokenize(probe)))
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return 0


def _one_message(count: Callable[[Sequence[Mapping[str, str]]], int]) -> Callable[[str], int]:
    return lambda text: count([{"role": "user", "content": text}])
