"""Prompt construction: lengths, exactness, per-request uniqueness, seeded reproducibility, bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pytest_llmperf.client.datasets import PromptContext, build_prompts, sample_lengths
from pytest_llmperf.errors import SpecError
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
    prompts = build_prompts(Workload(dataset=str(path), output_len=9), 4, PromptContext(tokenize=word_tokenizer))
    assert sorted((p.input_len, p.output_len) for p in prompts) == [(2, 9), (2, 9), (3, 5), (3, 5)]


def test_sharegpt_dataset(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    data = [
        {"conversations": [{"from": "human", "value": "hi there you"}, {"from": "gpt", "value": "one two three"}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
    ]
    path.write_text(json.dumps(data))
    prompts = build_prompts(Workload(dataset=str(path)), 2, PromptContext(tokenize=word_tokenizer))
    assert [p.prompt for p in prompts] == ["hi there you", "hi there you"]
    assert prompts[0].input_len == 3
    assert prompts[0].output_len == 3


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
