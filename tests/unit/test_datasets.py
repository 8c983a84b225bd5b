"""Prompt construction: lengths, exactness, per-request uniqueness, seeded reproducibility, bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pytest_llmperf.client.datasets import PromptContext, build_prompts, sample_lengths
from pytest_llmperf.errors import LLMPerfDatasetWarning, SpecError
from pytest_llmperf.spec import Workload


def word_tokenizer(text: str) -> list[int]:
    return [hash(w) % 1000 for w in text.split()]


def test_vllm_range_ratio_window_is_symmetric() -> None:
    w = Workload(input_len=100, output_len=10, range_ratio=0.5)
    lengths = sample_lengths(w, 2000, random.Random(0))
    ins = [i for i, _ in lengths]
    outs = [o for _, o in lengths]
    assert min(ins) == 50
    assert max(ins) == 150
    assert min(outs) == 5
    assert max(outs) == 15


def test_sglang_range_ratio_window_is_below_the_length() -> None:
    w = Workload(input_len=100, output_len=10, range_ratio=0.5, compat="sglang")
    ins = [i for i, _ in sample_lengths(w, 2000, random.Random(0))]
    assert min(ins) == 50
    assert max(ins) == 100


def test_zero_ratio_gives_exact_lengths() -> None:
    assert set(sample_lengths(Workload(input_len=7, output_len=3), 50, random.Random(1))) == {(7, 3)}


def test_token_id_prompts_are_exact_and_differ_per_request() -> None:
    w = Workload(input_len=32, output_len=4, num_prompts=20)
    prompts = build_prompts(w, 20, PromptContext(token_pool=list(range(100, 400))))
    assert all(isinstance(p.prompt, list) and len(p.prompt) == 32 == p.input_len for p in prompts)
    firsts = {tuple(p.prompt[:4]) for p in prompts if isinstance(p.prompt, list)}
    assert len(firsts) == 20  # no shared prefix a cache could reuse


def test_shared_prefix_is_shared_and_the_rest_differs() -> None:
    w = Workload(input_len=16, output_len=4, prefix_len=6)
    prompts = build_prompts(w, 5, PromptContext(token_pool=list(range(100, 400))))
    prefixes = {tuple(p.prompt[:6]) for p in prompts if isinstance(p.prompt, list)}
    tails = {tuple(p.prompt[6:]) for p in prompts if isinstance(p.prompt, list)}
    assert len(prefixes) == 1
    assert len(tails) == 5


def test_prompts_are_reproducible_from_the_seed() -> None:
    context = PromptContext(token_pool=list(range(50, 90)))
    a = build_prompts(Workload(seed=3), 5, context)
    b = build_prompts(Workload(seed=3), 5, context)
    c = build_prompts(Workload(seed=4), 5, context)
    assert a == b
    assert a != c


def test_chat_text_prompts_hit_the_length_with_the_template_overhead() -> None:
    w = Workload(api="chat", input_len=40, output_len=4)
    prompts = build_prompts(w, 4, PromptContext(tokenize=word_tokenizer, chat_overhead_tokens=7))
    for p in prompts:
        assert isinstance(p.prompt, str)
        assert len(p.prompt.split()) == 33
        assert p.input_len == 40


def test_without_any_tokenizer_text_prompts_are_estimates() -> None:
    prompts = build_prompts(Workload(input_len=10, output_len=2), 2, PromptContext())
    assert all(isinstance(p.prompt, str) and p.input_len == 10 for p in prompts)


def test_jsonl_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a b c", "output_len": 5}) + "\n\n" + json.dumps({"prompt": "d e"}) + "\n")
    with pytest.warns(LLMPerfDatasetWarning, match="2 distinct prompt"):
        prompts = build_prompts(Workload(dataset=str(path), output_len=9), 4, PromptContext(tokenize=word_tokenizer))
    assert sorted((p.input_len, p.output_len) for p in prompts) == [(2, 9), (2, 9), (3, 5), (3, 5)]


def test_sharegpt_dataset(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    data = [
        {"conversations": [{"from": "human", "value": "hi there you all"}, {"from": "gpt", "value": "one two 3 4 5"}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
    ]
    path.write_text(json.dumps(data))
    with pytest.warns(LLMPerfDatasetWarning, match="1 distinct prompt"):
        prompts = build_prompts(Workload(dataset=str(path)), 2, PromptContext(tokenize=word_tokenizer))
    assert [p.prompt for p in prompts] == ["hi there you all", "hi there you all"]
    assert prompts[0].input_len == 4
    assert prompts[0].output_len == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "x"}\nnot json\n', "d.jsonl:2: not valid JSON"),
        ('{"text": "x"}\n', "needs a string 'prompt'"),
        ("", "holds no usable prompts"),
    ],
)
def test_bad_jsonl_names_the_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(SpecError, match=message):
        build_prompts(Workload(dataset=str(path)), 1, PromptContext())


def test_missing_dataset_file_says_what_is_accepted() -> None:
    with pytest.raises(SpecError, match="neither 'random' nor an existing file"):
        build_prompts(Workload(dataset="nope.json"), 1, PromptContext())


# --- fresh contents per run ---------------------------------------------------------------------------------

POOL = PromptContext(token_pool=tuple(range(1000, 3000)))


def test_each_run_key_gives_new_contents_with_the_same_lengths() -> None:
    w = Workload(input_len=64, output_len=8, range_ratio=0.5, num_prompts=20, seed=7)
    run0 = build_prompts(w, 20, POOL, contents="nonce/test/run0")
    run1 = build_prompts(w, 20, POOL, contents="nonce/test/run1")
    assert [(p.input_len, p.output_len) for p in run0] == [(p.input_len, p.output_len) for p in run1]
    assert all(a.prompt[:16] != b.prompt[:16] for a, b in zip(run0, run1, strict=True))
    again = build_prompts(w, 20, POOL, contents="nonce/test/run0")
    assert [p.prompt for p in again] == [p.prompt for p in run0]


def test_lengths_do_not_depend_on_the_contents_key() -> None:
    w = Workload(input_len=64, output_len=8, range_ratio=0.5, num_prompts=20, seed=7)
    plain = build_prompts(w, 20, POOL)
    keyed = build_prompts(w, 20, POOL, contents="k")
    assert [p.input_len for p in plain] == [p.input_len for p in keyed]


def test_a_shared_prefix_is_shared_within_a_run_and_new_per_run() -> None:
    w = Workload(input_len=64, output_len=8, prefix_len=32, num_prompts=5)
    run0 = build_prompts(w, 5, POOL, contents="s/run0")
    run1 = build_prompts(w, 5, POOL, contents="s/run1")
    assert len({tuple(p.prompt[:32]) for p in run0}) == 1
    assert len({tuple(p.prompt[32:]) for p in run0}) == 5
    assert run0[0].prompt[:32] != run1[0].prompt[:32]


def test_prefix_reuse_keeps_one_prefix_across_runs_and_sessions() -> None:
    w = Workload(input_len=64, output_len=8, prefix_len=32, prefix_reuse=True, num_prompts=5)
    run0 = build_prompts(w, 5, POOL, contents="session-a/run0")
    run1 = build_prompts(w, 5, POOL, contents="session-b/run3")
    assert run0[0].prompt[:32] == run1[0].prompt[:32]
    assert run0[0].prompt[32:] != run1[0].prompt[32:]


def test_text_prompts_are_fresh_per_run_too() -> None:
    w = Workload(api="chat", input_len=30, output_len=8, num_prompts=4)
    context = PromptContext(tokenize=word_tokenizer)
    run0 = build_prompts(w, 4, context, contents="t/run0")
    run1 = build_prompts(w, 4, context, contents="t/run1")
    assert all(a.prompt != b.prompt for a, b in zip(run0, run1, strict=True))
    assert [p.input_len for p in run0] == [p.input_len for p in run1] == [30] * 4


def test_dataset_prompts_get_a_salt_per_run(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"question {i} about things", "output_len": 5}) for i in range(6)))
    w = Workload(dataset=str(path), num_prompts=6)
    run0 = build_prompts(w, 6, PromptContext(tokenize=word_tokenizer), contents="d/run0")
    run1 = build_prompts(w, 6, PromptContext(tokenize=word_tokenizer), contents="d/run1")
    salts0 = {str(p.prompt).split(" question")[0] for p in run0}
    salts1 = {str(p.prompt).split(" question")[0] for p in run1}
    assert len(salts0) == len(salts1) == 1  # one salt per run: sharing inside the file stays sharing
    assert salts0 != salts1
    assert all(p.input_len == 4 + 4 for p in run0)  # the salt's 4 words are counted
    plain = build_prompts(w, 6, PromptContext(tokenize=word_tokenizer))
    assert all(str(p.prompt).startswith("question") for p in plain)


def test_sharing_is_asked_for_by_prefixes_reuse_and_files() -> None:
    from pytest_llmperf.client.datasets import asks_for_sharing

    assert not asks_for_sharing(Workload())
    assert asks_for_sharing(Workload(prefix_len=8))
    assert asks_for_sharing(Workload(prefix_reuse=True))
    assert asks_for_sharing(Workload(dataset="prompts.jsonl"))


def test_warmup_prompts_share_no_prefix_with_measured_ones() -> None:
    context = PromptContext(token_pool=tuple(range(100, 5000)))
    w = Workload(input_len=64, output_len=4, prefix_len=32, num_prompts=4, warmup=2)
    measured = build_prompts(w, 4, context, contents="n/t/run0")
    warm = build_prompts(w.replace(seed=w.seed + 1_000_003), 2, context, contents="n/t/run0/warmup")
    assert {tuple(p.prompt[:16]) for p in measured}.isdisjoint({tuple(p.prompt[:16]) for p in warm})


# --- ShareGPT as sglang.bench_serving and vllm bench serve sample it (issue 16, item 1) ------------------------


def _words(tag: str, n: int) -> str:
    """``n`` words (tokens of ``word_tokenizer``), the first naming the conversation."""
    return " ".join([tag] + [f"w{i}" for i in range(n - 1)])


# name: (prompt tokens, reply tokens). SGLang prunes under 2 tokens; vLLM under 4, a prompt over 1024 and a total
# over 2048. "I" uses the "conversation" key, which only SGLang reads.
CONVERSATIONS = {
    "A": (5, 6),
    "A2": (10, 20),
    "B": (3, 6),
    "C": (5, 3),
    "D": (1, 5),
    "E": (5, 1),
    "F": (1100, 5),
    "G": (600, 1500),
}


@pytest.fixture
def sharegpt(tmp_path: Path) -> str:
    data: list[dict[str, object]] = [
        {"conversations": [{"from": "human", "value": _words(n, p)}, {"from": "gpt", "value": _words("r", r)}]}
        for n, (p, r) in CONVERSATIONS.items()
    ]
    data.append({"conversations": [{"from": "human", "value": _words("H", 5)}]})  # one turn: never used
    data.append({"conversation": [{"from": "human", "value": _words("I", 5)}, {"from": "gpt", "value": "a b c d"}]})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    return str(path)


def _sample(dataset: str, count: int, **workload: object) -> list[tuple[str, int, int]]:
    w = Workload(dataset=dataset, num_prompts=count, **workload)  # type: ignore[arg-type]
    prompts = build_prompts(w, count, PromptContext(tokenize=word_tokenizer))
    return [(str(p.prompt).split()[0], p.input_len, p.output_len) for p in prompts]


@pytest.mark.parametrize(
    ("workload", "survivors"),
    [
        # vLLM: B's prompt and C's and E's replies are under 4, F's prompt over 1024, G's total over 2048.
        ({}, {"A": 6, "A2": 20}),
        # SGLang: only D (prompt 1) and E (reply 1) are too short; no context limit by default.
        ({"compat": "sglang"}, {"A": 6, "A2": 20, "B": 6, "C": 3, "F": 5, "G": 1500, "I": 4}),
        # Context limit 12: A2 (30), F and G are too long.
        ({"compat": "sglang", "dataset_context_len": 12}, {"A": 6, "B": 6, "C": 3, "I": 4}),
        # Output override 40 with context 50: prompts of at most 10 tokens, E's one-token reply no longer matters.
        (
            {"compat": "sglang", "dataset_output_len": 40, "dataset_context_len": 50},
            {"A": 40, "A2": 40, "B": 40, "C": 40, "E": 40, "I": 40},
        ),
        # vLLM with an override: its output is not checked for the minimum, but the total of 2048 still holds.
        ({"dataset_output_len": 40}, {"A": 40, "A2": 40, "C": 40, "E": 40, "G": 40}),
        ({"dataset_output_len": 1600}, {"A": 1600, "A2": 1600, "C": 1600, "E": 1600}),  # prompts <= 448 only
        ({"dataset_context_len": 12}, {"A": 6}),  # vLLM's rules, and the context limit as well
    ],
)
def test_sharegpt_filters_of_each_compat_mode(
    sharegpt: str, workload: dict[str, object], survivors: dict[str, int]
) -> None:
    sampled = _sample(sharegpt, len(survivors), **workload)  # exactly as many as survive: no warning
    assert {name: out for name, _, out in sampled} == survivors
    lengths = {**{n: p for n, (p, _) in CONVERSATIONS.items()}, "I": 5}
    assert all(n_in == lengths[name] for name, n_in, _ in sampled)


def test_sharegpt_order_is_the_tools_shuffle_with_the_seed(sharegpt: str) -> None:
    # What both tools do: keep conversations of two turns or more, random.seed(seed); random.shuffle(...), then
    # take them in that order while they survive the filters.
    entries = [*CONVERSATIONS, "I"]  # file order, the one-turn entry left out
    random.seed(5)
    random.shuffle(entries)
    too_short = {"D", "E"}
    expected = [name for name in entries if name not in too_short][:3]
    assert [name for name, _, _ in _sample(sharegpt, 3, compat="sglang", seed=5)] == expected


def test_fewer_survivors_than_asked_for_repeat_with_a_warning(sharegpt: str) -> None:
    w = Workload(dataset=sharegpt, num_prompts=6, compat="sglang", dataset_context_len=12)
    with pytest.warns(LLMPerfDatasetWarning, match=r"4 distinct prompt\(s\) survive .* but 6 were asked for"):
        prompts = build_prompts(w, 6, PromptContext(tokenize=word_tokenizer), contents="run0")
    texts = [str(p.prompt) for p in prompts]
    firsts = [t.split()[4] for t in texts]  # after the run's 4-word salt
    assert firsts[4:] == firsts[:2]  # the second pass starts over
    assert texts[4] != texts[0]  # with a salt of its own: a repeat is not a prefix-cache hit
    assert texts[0].split()[:4] == texts[3].split()[:4]  # one salt for the first pass


def test_no_survivor_is_an_error_that_names_the_filters(sharegpt: str) -> None:
    with pytest.raises(SpecError, match="no prompt survives vllm bench serve's ShareGPT filters"):
        build_prompts(Workload(dataset=sharegpt, dataset_context_len=5), 1, PromptContext(tokenize=word_tokenizer))


def test_jsonl_takes_the_output_override_and_the_context_limit(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": _words(f"p{n}", n), "output_len": 3}) for n in (2, 8, 30)))
    sampled = _sample(str(path), 2, dataset_output_len=7, dataset_context_len=20)
    assert sorted(sampled) == [("p2", 2, 7), ("p8", 8, 7)]


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"dataset_output_len": 40}, "dataset_output_len set with dataset='random'"),
        (
            {"dataset": "d.json", "dataset_output_len": 3, "compat": "sglang"},
            "dataset_output_len=3 .expected an int >= 4",
        ),
        ({"dataset": "d.json", "dataset_output_len": 0}, "dataset_output_len=0 .expected an int >= 1"),
        ({"dataset": "d.json", "dataset_context_len": 1}, "dataset_context_len=1"),
        ({"dataset": "d.json", "dataset_context_len": True}, "dataset_context_len=True has type bool"),
    ],
)
def test_dataset_lengths_are_validated(workload: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Workload(**workload)  # type: ignore[arg-type]


def test_scaling_shrinks_the_dataset_lengths_but_not_below_four() -> None:
    from pytest_llmperf.harness.markers import build_spec, scale_spec

    marker = {"dataset": "s.json", "dataset_output_len": 1600, "dataset_context_len": 2400, "num_prompts": 500}
    w = scale_spec(build_spec(marker, {}), 0.05).workload
    assert (w.dataset_output_len, w.dataset_context_len, w.num_prompts) == (80, 120, 25)
    small = scale_spec(build_spec({**marker, "dataset_output_len": 40, "compat": "sglang"}, {}), 0.05).workload
    assert small.dataset_output_len == 4  # SGLang's smallest output override


def test_new_workload_fields_at_their_defaults_keep_baselines_comparable() -> None:
    from pytest_llmperf.judge.baseline import workload_hash

    before = {k: v for k, v in Workload().as_dict().items() if not k.startswith("dataset_")}
    assert workload_hash(Workload().as_dict()) == workload_hash(before)
    assert workload_hash(Workload(dataset="s.json", dataset_output_len=40).as_dict()) != workload_hash(
        Workload(dataset="s.json").as_dict()
    )


def test_the_terminal_table_shows_the_lengths_a_dataset_file_asked_for() -> None:
    from pytest_llmperf.report.terminal import _workload

    w = Workload(dataset="s.json", dataset_output_len=40, concurrency=8).as_dict()
    assert _workload(w, {"dataset_lens": {"input_len_mean": 312.4, "output_len_mean": 40.0}}) == "~312/40 c8"  # type: ignore[arg-type]
    assert _workload(w, {}) == "file c8"  # type: ignore[arg-type]  # an older document: no lengths it did not use
    assert _workload(Workload(concurrency=8).as_dict(), {}) == "128/64 c8"  # type: ignore[arg-type]
