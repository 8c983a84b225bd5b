"""Multi-turn conversations: the prompts of ``turns`` user turns per conversation, each carrying the earlier ones.

Pure, as :mod:`pytest_llmperf.client.datasets` (which calls :func:`conversation_prompts` when ``turns > 1``).

A conversation is a list of turns: a user message, then the assistant's reply. Request ``k`` of a conversation
holds turns ``1..k-1`` whole (user messages and replies) and turn ``k``'s user message, and asks for turn
``k``'s output length; so consecutive requests share a growing prefix, which is what a serving engine's prefix
cache is meant to serve in chat. The replies sent back are the dataset's (ShareGPT) or synthetic ones of
``output_len`` tokens, never the model's own answer: every request body, and so every turn's input length, is
known before the run starts, the same on every run and on both sides of an A/B comparison, whatever the model
answered (vLLM's ``benchmarks/multi_turn`` sends the model's answer instead, so its later turns depend on the
model). The price: an engine that also caches the KV of the tokens it generated cannot reuse them, since the
reply sent back differs; the cached share of turn ``k`` is at most turns ``1..k-1``'s prompt, not their replies.

* ``dataset="random"``: every conversation has ``turns`` turns. Each user message is drawn as a single-turn
  random prompt is (``input_len`` with ``range_ratio``, sized so that sent alone it would be an
  ``input_len``-token request: turn 1 is exactly a single-turn request), the ``prefix_len`` shared prefix
  leads turn 1's message only (a system-prompt-like prefix shared by all conversations); each reply has the
  turn's ``output_len`` tokens. Contents are new every run, as for single-turn prompts.
* a ShareGPT ``.json`` file: each conversation's ``human``/``gpt`` pairs in order, up to ``turns`` of them (the
  pairs stop at the first message out of that order); conversations are shuffled as for single-turn sampling,
  the first pair must pass the compat mode's filters, and a conversation is cut before the first turn whose
  prompt + output would exceed ``dataset_context_len``. The output length of each turn is
  ``dataset_output_len`` or its reply's token count. The run's salt leads the first user message, so a
  conversation's turns share it and no run shares with another.

``api="chat"`` sends the turns as a ``messages`` list (``Prompt.history`` holds the earlier texts, user and
assistant alternating); ``api="completions"`` sends the conversation concatenated without a template, as token
ids for random prompts with a token pool (exact lengths) or as text joined by newlines.

Prompts come out conversation by conversation, turns in order, each with its ``conversation`` and ``turn``.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_llmperf.client import datasets
from pytest_llmperf.errors import LLMPerfDatasetWarning, SpecError
from pytest_llmperf.spec import Prompt, Workload

Messages = Sequence[Mapping[str, str]]
_USER_ROLES = frozenset({"human", "user"})


@dataclass(frozen=True, slots=True)
class Turn:
    """One user message and the reply sent back with the next turns, with their token counts."""

    user: str | list[int]
    reply: str | list[int]
    user_len: int  # tokens of ``user`` as a request of its own would count them (chat template included)
    reply_len: int  # tokens of ``reply``'s text
    output_len: int  # tokens asked for


def messages(history: Sequence[str], prompt: str) -> list[dict[str, str]]:
    """The chat ``messages`` of a request: the earlier turns (user, assistant, ...) then the new user message."""
    roles = ("user", "assistant")
    out = [{"role": roles[i % 2], "content": text} for i, text in enumerate(history)]
    out.append({"role": "user", "content": prompt})
    return out


def conversation_prompts(
    workload: Workload,
    count: int,
    context: datasets.PromptContext,
    rng: random.Random,
    content_rng: random.Random,
    contents: str,
) -> list[Prompt]:
    """The prompts of ``count`` conversations of ``workload`` (see the module docstring)."""
    if workload.dataset == "random":
        conversations = _random_conversations(workload, count, context, rng, content_rng)
    else:
        conversations = _file_conversations(workload, count, context, rng, content_rng, contents)
    prompts: list[Prompt] = []
    for number, turns in enumerate(conversations):
        prompts.extend(_requests(workload, context, number, turns))
    return prompts


def _requests(workload: Workload, context: datasets.PromptContext, number: int, turns: Sequence[Turn]) -> list[Prompt]:
    """One conversation's requests: turn ``k`` carries turns ``1..k-1`` whole and turn ``k``'s user message."""
    out: list[Prompt] = []
    for k, turn in enumerate(turns):
        earlier = turns[:k]
        if workload.api == "chat":
            history = tuple(str(text) for t in earlier for text in (t.user, t.reply))
            prompt: str | list[int] = str(turn.user)
            input_len = _chat_len(context, earlier, turn, history)
        else:
            history = ()
            parts = [part for t in earlier for part in (t.user, t.reply)] + [turn.user]
            if all(isinstance(part, list) for part in parts):
                prompt = [token for part in parts if isinstance(part, list) for token in part]
                input_len = len(prompt)
            else:
                prompt = "\n".join(str(part) for part in parts)
                input_len = len(context.tokenize(prompt)) if context.tokenize else _bare_sum(earlier, turn)
        out.append(
            Prompt(
                prompt=prompt,
                input_len=input_len,
                output_len=turn.output_len,
                conversation=number,
                turn=k + 1,
                history=history,
            )
        )
    return out


def _bare_sum(earlier: Sequence[Turn], turn: Turn) -> int:
    return sum(t.user_len + t.reply_len for t in earlier) + turn.user_len


def _chat_len(context: datasets.PromptContext, earlier: Sequence[Turn], turn: Turn, history: tuple[str, ...]) -> int:
    """The server's count of the request's messages when it can tell; else turn 1's own count plus the rest's
    tokens and the template's overhead per message (``usage.prompt_tokens`` reports the truth)."""
    if context.count_messages is not None:
        return context.count_messages(messages(history, str(turn.user)))
    if not earlier:
        return turn.user_len
    first = earlier[0]
    tail = [*earlier[1:], turn]
    overhead = context.chat_overhead_tokens
    rest = sum(_bare(context, t.user) + overhead for t in tail)
    return first.user_len + sum(t.reply_len + overhead for t in earlier) + rest


def _bare(context: datasets.PromptContext, text: str | list[int]) -> int:
    if isinstance(text, list):
        return len(text)
    return len(context.tokenize(text)) if context.tokenize else datasets.estimate_tokens(text)


def _random_conversations(
    workload: Workload,
    count: int,
    context: datasets.PromptContext,
    rng: random.Random,
    content_rng: random.Random,
) -> list[list[Turn]]:
    lengths = datasets.sample_lengths(workload, count * workload.turns, rng)
    use_ids = workload.api == "completions" and len(context.token_pool) > 0
    prefix_rng = random.Random(f"{workload.seed}|prefix") if workload.prefix_reuse else content_rng
    if use_ids:
        pool = list(context.token_pool)
        prefix_ids = [prefix_rng.choice(pool) for _ in range(workload.prefix_len)]

        def user_ids(n_in: int, first: bool) -> tuple[list[int], int]:
            shared = prefix_ids[:n_in] if first else []
            return shared + [content_rng.choice(pool) for _ in range(n_in - len(shared))], n_in

        def reply_ids(n_out: int) -> tuple[list[int], int]:
            return [content_rng.choice(pool) for _ in range(n_out)], n_out

        return _assemble(workload, count, lengths, user_ids, reply_ids)
    vocabulary = context.words or datasets.COMMON_WORDS
    prefix_words = [prefix_rng.choice(vocabulary) for _ in range(workload.prefix_len)]
    counter = datasets.text_counter(workload, context)
    tokenize = context.tokenize
    bare = None if tokenize is None else (lambda text: len(tokenize(text)))

    def user_text(n_in: int, first: bool) -> tuple[str, int]:
        shared = prefix_words[:n_in] if first else []
        words = shared + [content_rng.choice(vocabulary) for _ in range(max(0, n_in - len(shared)))]
        text = datasets.fit_text(words, n_in, counter, vocabulary, content_rng)
        return text, counter(text) if counter else n_in

    def reply_text(n_out: int) -> tuple[str, int]:
        words = [content_rng.choice(vocabulary) for _ in range(n_out)]
        text = datasets.fit_text(words, n_out, bare, vocabulary, content_rng)
        return text, bare(text) if bare else n_out

    return _assemble(workload, count, lengths, user_text, reply_text)


def _assemble(
    workload: Workload,
    count: int,
    lengths: Sequence[tuple[int, int]],
    user: Callable[[int, bool], tuple[str | list[int], int]],
    reply: Callable[[int], tuple[str | list[int], int]],
) -> list[list[Turn]]:
    """``count`` conversations of ``workload.turns`` turns, the ``k``-th turn of conversation ``c`` with the
    lengths ``lengths[c * turns + k]``; ``user(n, first)`` and ``reply(n)`` draw the contents."""
    conversations = []
    for c in range(count):
        turns = []
        for k in range(workload.turns):
            n_in, n_out = lengths[c * workload.turns + k]
            user_part, user_len = user(n_in, k == 0)
            reply_part, reply_len = reply(n_out)
            turns.append(Turn(user_part, reply_part, user_len, reply_len, n_out))
        conversations.append(turns)
    return conversations


# A ShareGPT conversation as (user, reply) text pairs; None for a malformed entry (it keeps its place in the
# shuffle, as in single-turn sampling).
_Pairs = list[tuple[str, str]] | None


def read_sharegpt_pairs(path: Path, compat: str) -> list[_Pairs]:
    """Every conversation's (user, reply) pairs in order, up to the first message out of that order."""
    out: list[_Pairs] = []
    for turns in datasets.sharegpt_conversations(path, compat):
        pairs: list[tuple[str, str]] = []
        for user, reply in zip(turns[0::2], turns[1::2], strict=False):  # an unanswered last message is left out
            if not (isinstance(user, dict) and isinstance(reply, dict)):
                break
            text, answer = user.get("value"), reply.get("value")
            if not (isinstance(text, str) and isinstance(answer, str)):
                break
            if user.get("from", "human") not in _USER_ROLES or reply.get("from", "gpt") in _USER_ROLES:
                break
            pairs.append((text, answer))
        out.append(pairs or None)
    return out


def _file_conversations(
    workload: Workload,
    count: int,
    context: datasets.PromptContext,
    rng: random.Random,
    content_rng: random.Random,
    contents: str,
) -> list[list[Turn]]:
    path = Path(workload.dataset)
    if not path.is_file() or path.suffix == ".jsonl":
        raise SpecError(
            f"turns={workload.turns} needs dataset='random' or a ShareGPT .json file of conversations; "
            f"{workload.dataset!r} is not one (a .jsonl file holds single prompts)"
        )
    rows = read_sharegpt_pairs(path, workload.compat)
    rng.shuffle(rows)
    tokenize = context.tokenize

    def count_tokens(text: str) -> int:
        return len(tokenize(text)) if tokenize else datasets.estimate_tokens(text)

    usable: list[list[tuple[str, str, int, int, int]]] = []
    for pairs in rows:
        if len(usable) >= count:
            break
        if pairs is None:
            continue
        kept = _kept_turns(workload, pairs[: workload.turns], count_tokens)
        if kept:
            usable.append(kept)
    if not usable:
        limit = workload.dataset_context_len
        raise SpecError(
            f"dataset {path}: no conversation's first turn survives the compat mode's ShareGPT filters"
            + ("" if limit is None else f" with dataset_context_len={limit}")
        )
    if len(usable) < count:
        warnings.warn(
            LLMPerfDatasetWarning(
                f"dataset {path.name}: {len(usable)} conversation(s) usable but {count} were asked for: they "
                f"repeat (up to {math.ceil(count / len(usable))} times each, each pass with its own salt)"
            ),
            stacklevel=4,
        )
    vocabulary = context.words or datasets.COMMON_WORDS
    salts: list[str] = []
    overhead = context.chat_overhead_tokens if workload.api == "chat" else 0
    conversations = []
    for i in range(count):
        repeat, j = divmod(i, len(usable))
        salt = ""
        if contents and not workload.prefix_reuse:
            while len(salts) <= repeat:
                salts.append(" ".join(content_rng.choice(vocabulary) for _ in range(datasets.SALT_WORDS)) + " ")
            salt = salts[repeat]
        turns = []
        for k, (user, reply, user_len, reply_len, n_out) in enumerate(usable[j]):
            if k == 0 and salt:
                user = salt + user
                user_len = count_tokens(user)
            turns.append(Turn(user, reply, user_len + overhead, reply_len, n_out))
        conversations.append(turns)
    return conversations


def _kept_turns(
    workload: Workload, pairs: Sequence[tuple[str, str]], count_tokens: Callable[[str], int]
) -> list[tuple[str, str, int, int, int]]:
    """The turns of a conversation that are sent: none when its first pair fails the compat mode's filters,
    else up to the first turn whose prompt (the history included) + output exceeds ``dataset_context_len``."""
    kept: list[tuple[str, str, int, int, int]] = []
    history = 0
    for user, reply in pairs:
        if not user.strip():
            break
        user_len, reply_len = count_tokens(user), count_tokens(reply)
        n_out = max(1, workload.dataset_output_len or reply_len)
        if not kept and not datasets.passes(user_len, n_out, workload):
            return []
        limit = workload.dataset_context_len
        if limit is not None and history + user_len + n_out > limit:
            break
        kept.append((user, reply, user_len, reply_len, n_out))
        history += user_len + reply_len
    return kept
