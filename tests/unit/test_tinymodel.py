from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmperf.servers import tinymodel
from pytest_llmperf.servers.tinymodel import (
    TINY_MODEL_NAME,
    build_vocab,
    ensure_tiny_model,
    tiny_model_filename,
    write_tiny_model,
)

gguf = pytest.importorskip("gguf")


def test_bytes_are_deterministic(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "a.gguf")
    write_tiny_model(tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_cache_hit_does_not_rewrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ensure_tiny_model(tmp_path)
    assert path.name == tiny_model_filename()
    before = path.stat()

    def must_not_write(path: Path) -> None:
        raise AssertionError("rewrote a cached model")

    monkeypatch.setattr(tinymodel, "write_tiny_model", must_not_write)
    assert ensure_tiny_model(tmp_path) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [path.name]


def test_name_follows_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    name = tiny_model_filename()
    assert name.startswith(TINY_MODEL_NAME + "-")
    assert name.endswith(".gguf")
    monkeypatch.setitem(tinymodel.TINY_MODEL_PARAMS, "n_layer", 3)
    assert tiny_model_filename() != name


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tinymodel, "write_tiny_model", broken)
    with pytest.raises(OSError, match="disk full"):
        ensure_tiny_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_gguf_contents(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path)
    assert path.stat().st_size < 10 * 1024 * 1024
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    expected_tokens, _, _ = build_vocab()
    assert tokens == expected_tokens
    assert fields["llama.vocab_size"].contents() == len(tokens)
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert {"\u2581the", "\u2581model", "\u2581The"} <= set(tokens)
    assert 300 < len(tokens) < 4000
    assert "tokenizer.chat_template" in fields
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert [int(n) for n in embedding.shape] == [tinymodel.TINY_MODEL_PARAMS["n_embd"], len(tokens)]


def test_every_word_piece_is_reachable_by_merges() -> None:
    # SentencePiece only merges adjacent tokens into a token, so each prefix of a word must be a token.
    tokens, scores, types = build_vocab()
    vocab = set(tokens)
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types)
    for token in tokens[259:]:
        for n in range(2, len(token)):
            assert token[:n] in vocab, token


def test_processes_racing_write_one_file(tmp_path: Path) -> None:
    code = "import sys; from pathlib import Path; from pytest_llmperf.servers.tinymodel import ensure_tiny_model; "
    code += "print(ensure_tiny_model(Path(sys.argv[1])))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert outputs == {str(tmp_path / tiny_model_filename())}
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [tiny_model_filename()]
