"""Multi-turn conversations (issue 16, item 7): what each turn's request carries, its input length, the keywords'
checks, and that asking for turns asks for prefix sharing without moving existing workload hashes."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from pytest_llmperf.client.conversations import messages
from pytest_llmperf.client.datasets import PromptContext, asks_for_sharing, build_prompts
from pytest_llmperf.client.loadgen import request_body
from pytest_llmperf.errors import SpecError
from pytest_llmperf.harness.markers import build_spec
from pytest_llmperf.harness.runner import with_prompt_cache
from pytest_llmperf.judge.baseline import workload_hash
from pytest_llmperf.spec import Endpoint, Prompt, Workload

POOL = PromptContext(token_pool=list(range(1000, 5000)))
WORDS = ("alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta")


def words(text: str) -> list[int]:
    """A tokenizer of one token per word."""
    return [len(w) for w in text.split()]


def count_messages(msgs: Sequence[Mapping[str, str]]) -> int:
    """The simulator's chat template: 4 tokens around each message's content, then a 3-token reply header."""
    return sum(len(m["content"].split()) + 4 for m in msgs) + 3


CHAT = PromptContext(
    tokenize=words,
    words=WORDS,
    count_chat=lambda text: count_messages([{"role": "user", "content": text}]),
    count_messages=count_messages,
)


def test_completions_turns_carry_the_whole_conversation_as_token_ids() -> None:
    w = Workload(input_len=4, output_len=2, num_prompts=2, turns=3)
    prompts = build_prompts(w, 2, POOL, contents="run0")
    assert [(p.conversation, p.turn) for p in prompts] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    # turn k: k user messages of 4 tokens and k - 1 replies of 2
    assert [p.input_len for p in prompts] == [4, 10, 16] * 2
    assert all(len(p.prompt) == p.input_len and p.output_len == 2 and p.history == () for p in prompts)
    for earlier, later in itertools.pairwise(prompts[:3]):
        assert later.prompt[: earlier.input_len] == earlier.prompt  # the prefix a cache can serve
    assert prompts[3].prompt[:4] != prompts[0].prompt[:4]  # conversations share nothing


def test_chat_turns_send_the_earlier_messages_and_count_them_with_the_template() -> None:
    w = Workload(api="chat", input_len=12, output_len=3, num_prompts=1, turns=3)
    first, second, third = build_prompts(w, 1, CHAT, contents="run0")
    # Turn 1 is exactly a single-turn request: 12 tokens, 5 words of content and 7 of template.
    assert (first.input_len, first.history, len(str(first.prompt).split())) == (12, (), 5)
    assert second.history == (first.prompt, second.history[1])
    assert len(second.history[1].split()) == 3
    assert third.history == (*second.history, second.prompt, third.history[3])
    # 3 messages of 5, 3 and 5 words + 4 each + 3; then 5 messages
    assert [p.input_len for p in (first, second, third)] == [12, 13 + 12 + 3, 21 + 20 + 3]
    for p in (first, second, third):
        assert p.input_len == count_messages(messages(p.history, str(p.prompt)))


def test_the_chat_body_holds_the_history_then_the_new_message() -> None:
    prompt = Prompt(prompt="and now?", input_len=9, output_len=2, conversation=0, turn=2, history=("hi", "hello"))
    body = json.loads(request_body(Workload(api="chat", turns=2), Endpoint(url="http://x", model="m"), prompt))
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]


def test_lengths_are_the_seeds_and_contents_are_new_every_run() -> None:
    w = Workload(input_len=6, output_len=2, range_ratio=0.5, num_prompts=3, turns=2)
    a, b = build_prompts(w, 3, POOL, contents="run0"), build_prompts(w, 3, POOL, contents="run1")
    assert [p.input_len for p in a] == [p.input_len for p in b]
    assert all(x.prompt != y.prompt for x, y in zip(a, b, strict=True))


def test_the_shared_prefix_leads_only_the_first_turn_of_each_conversation() -> None:
    w = Workload(input_len=8, output_len=2, prefix_len=4, num_prompts=2, turns=2)
    c0t1, c0t2, c1t1, _c1t2 = build_prompts(w, 2, POOL, contents="run0")
    assert c0t1.prompt[:4] == c1t1.prompt[:4]
    assert c0t1.prompt[4:8] != c1t1.prompt[4:8]
    new_turn = c0t2.prompt[10:]  # after turn 1's 8 tokens and its 2-token reply
    assert len(new_turn) == 8
    assert new_turn[:4] != c0t1.prompt[:4]


def sharegpt(path: Path) -> Path:
    def conv(*texts: str) -> dict[str, list[dict[str, str]]]:
        return {"conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]}

    data = [
        conv("first question here", "first answer", "second question", "second answer", "third", "third answer"),
        {"conversations": [{"from": "gpt", "value": "a reply with no question"}, {"from": "human", "value": "x"}]},
    ]
    path.write_text(json.dumps(data))
    return path


def test_a_sharegpt_conversation_is_kept_whole_up_to_turns_with_its_own_replies(tmp_path: Path) -> None:
    path = sharegpt(tmp_path / "chats.json")
    w = Workload(api="chat", dataset=str(path), num_prompts=1, turns=2, compat="sglang", dataset_output_len=5)
    first, second = build_prompts(w, 1, CHAT, contents="run0")
    salt = str(first.prompt)[: -len("first question here")]
    assert len(salt.split()) == 4  # the run's salt leads the first message only, and so the whole conversation
    assert second.history == (first.prompt, "first answer")
    assert second.prompt == "second question"
    assert (first.output_len, second.output_len) == (5, 5)
    assert second.input_len == count_messages(messages(second.history, "second question"))


def test_dataset_context_len_cuts_a_conversation_before_the_turn_that_would_exceed_it(tmp_path: Path) -> None:
    path = sharegpt(tmp_path / "chats.json")
    # 3 + 2 words (turn 1: 3 in, 2 out), then turn 2: 5 of history + 2 + 2 = 9
    w = Workload(api="chat", dataset=str(path), num_prompts=1, turns=3, compat="sglang", dataset_context_len=8)
    with pytest.warns(UserWarning, match="1 conversation"):
        prompts = build_prompts(w, 2, CHAT)  # (no contents key: no salt)
    assert [(p.conversation, p.turn) for p in prompts] == [(0, 1), (1, 1)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"turns": 0}, "turns=0"),
        ({"turn_gap_s": 1.0}, "turn_gap_s=1.0 set with turns=1"),
        ({"turns": 2, "turn_gap_s": -1.0}, "turn_gap_s=-1.0"),
        ({"turns": 2, "trace": "t.jsonl"}, "turns=2 set with trace"),
        ({"turns": 2.0}, "turns=2.0 has type float"),
    ],
)
def test_bad_turn_keywords_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec(kwargs, {})


def test_a_jsonl_file_has_no_conversations(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello"}\n')
    with pytest.raises(SpecError, match=r"turns=2 needs dataset='random' or a ShareGPT \.json file"):
        build_prompts(Workload(dataset=str(path), turns=2), 1, CHAT)


def test_turns_ask_for_sharing_and_leave_existing_workload_hashes_alone() -> None:
    assert asks_for_sharing(Workload(turns=2))
    assert not asks_for_sharing(Workload())
    llama = Endpoint(url="http://x", model="m", engine="llama.cpp")
    assert with_prompt_cache(llama, asks_for_sharing(Workload(turns=2))).extra_body == {"cache_prompt": True}
    plain = {k: v for k, v in Workload().as_dict().items() if k not in ("turns", "turn_gap_s")}
    assert workload_hash(Workload().as_dict()) == workload_hash(plain)
    assert workload_hash(Workload(turns=2).as_dict()) != workload_hash(plain)
