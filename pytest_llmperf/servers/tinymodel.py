"""A tiny random-weight llama model in GGUF, generated locally for the embedded ``llamacpp-tiny`` server.

The model exists to give llama.cpp's ``llama-server`` real work (tokenizer, prefill, KV cache, decode,
continuous batching) on a laptop with no download. Its output is gibberish by design; only its timing is
of interest.

The file is a pure function of :data:`TINY_MODEL_PARAMS` and :data:`_FORMAT_VERSION`: its name carries a
hash of both, so a change to either produces a new file rather than a stale cache hit. Weights come from
the PCG64 bit generator's raw output, whose stream numpy guarantees across versions (the ``Generator``
distribution methods do not), so the bytes are the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf._files import replacing

if TYPE_CHECKING:  # numpy is imported where the model is written, not with the plugin
    import numpy as np
    import numpy.typing as npt

# Bump when the generator code changes in a way that changes the bytes written.
_FORMAT_VERSION = 1

#: Shape and tokenizer parameters of the tiny model (part of the cache key).
TINY_MODEL_PARAMS: dict[str, Any] = {
    "n_layer": 4,
    "n_embd": 256,
    "n_head": 4,
    "n_head_kv": 2,
    "n_ff": 768,
    "n_ctx_train": 8192,
    "rope_freq_base": 10000.0,
    "rms_eps": 1e-5,
    "seed": 20260425,
    "weight_scale": 0.08,
}

#: Name the model reports (``general.name``); profiles serve it under this alias too.
TINY_MODEL_NAME = "llmperf-tiny"

# A ChatML-style template: role headers in plain text, so no special tokens are needed in the vocabulary.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Common English words. Each one and every ``▁``-prefixed prefix of it goes into the vocabulary, so the
# SentencePiece merge loop (which only joins adjacent pieces that are themselves tokens) can build it.
_WORDS = """
the of and to in is was for on that with as by at from it be this are or an have has not but
which were they one their all been had can more will would there his her she he we you your our
them these those who what when where why how if then than so some any each other such into over
about after before under between through during without within again also only just very most
many much few first last new old good great small large long short high low same different own
time year day week month hour minute second people man woman child world life hand part place
case point group number way thing fact work water food house city country state school family
system program question problem answer result reason example model data server request token
prompt output input test speed fast slow latency throughput memory cache batch queue stream text
word line page book story name form kind level rate price value cost money power energy light
sound color music game team player market company business service product order report
make made take took give gave know knew think thought see saw come came go went get got find
found tell told ask asked use used work worked call called try tried need needed feel felt
become leave put mean keep let begin seem help show hear play run move live believe bring
happen write provide sit stand lose pay meet include continue set learn change lead understand
watch follow stop create speak read allow add spend grow open walk win offer remember love
consider appear buy wait serve die send expect build stay fall cut reach kill remain suggest
raise pass sell require decide return explain hope develop carry break receive agree support
hit produce eat cover catch draw choose cause measure compare check wrong right true false yes
no not never always often sometimes here now today tomorrow yesterday early late soon still
even well back down up out off near far away together alone once twice every another both
either neither because while although until since unless whether though however therefore
red blue green black white big little young important public able free full sure clear real
best better whole simple easy hard strong weak happy sad hot cold warm dark bright quick
""".split()

# Words that often start a sentence, added capitalised as well.
_CAPITALISED = """
the a an this that it he she we they you i there what when where why how if in on at for
but and so as all one some many most each every no yes hello please thank
""".split()

_PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_SPACE = "\u2581"  # SentencePiece's word-boundary marker


def tiny_model_filename() -> str:
    """File name of the tiny model: a content hash of everything that decides its bytes."""
    key = json.dumps({"format": _FORMAT_VERSION, "params": TINY_MODEL_PARAMS}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{TINY_MODEL_NAME}-{digest}.gguf"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Return the path of the tiny GGUF model in ``cache_dir``, writing it first if it is not there.

    Safe when several processes (pytest-xdist workers) call it at once: one writes under a file lock, to a
    temporary file that is renamed into place, and the others find the finished file.
    """
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / tiny_model_filename()
    if path.is_file():
        return path
    with FileLock(str(path) + ".lock"):
        if path.is_file():  # another process wrote it while we waited for the lock
            return path
        with replacing(path) as tmp:
            write_tiny_model(tmp)
    return path


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny SentencePiece-style ("llama") vocabulary.

    Layout follows llama's: ``<unk>``, ``<s>``, ``</s>``, the 256 byte-fallback tokens, then pieces.
    """
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256

    pieces: list[str] = [_SPACE]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [c.upper() for c in chars] + [str(d) for d in range(10)] + _PUNCTUATION
    pieces += chars
    pieces += [_SPACE + c for c in chars]
    for word in [*_WORDS, *(w.capitalize() for w in _CAPITALISED)]:
        # Every prefix of "▁word" must be a token for the bigram merges to reach the whole word.
        pieces += [_SPACE + word[:n] for n in range(2, len(word) + 1)]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(int(TokenType.NORMAL))

    # SentencePiece merges the highest-scoring pair first; longer pieces score higher so whole words win.
    scores = [0.0] * 259 + [float(len(t)) - i * 1e-4 for i, t in enumerate(tokens[259:])]
    return tokens, scores, types


def _uniform(bits: np.random.PCG64, shape: tuple[int, ...], scale: float) -> npt.NDArray[np.float32]:
    """Uniform weights in [-scale, scale) from raw PCG64 output (a version-stable stream)."""
    import numpy as np

    count = int(np.prod(shape))
    raw: npt.NDArray[np.uint64] = bits.random_raw(count)
    unit = (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    weights: npt.NDArray[np.float32] = ((unit * 2.0 - 1.0) * scale).astype(np.float32).reshape(shape)
    return weights


def write_tiny_model(path: Path) -> None:
    """Write the tiny model to ``path`` (overwriting it). Prefer :func:`ensure_tiny_model`."""
    import gguf
    import numpy as np

    p = TINY_MODEL_PARAMS
    n_embd, n_ff, n_head, n_head_kv = p["n_embd"], p["n_ff"], p["n_head"], p["n_head_kv"]
    head_dim = n_embd // n_head
    tokens, scores, types = build_vocab()
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(TINY_MODEL_NAME)
    writer.add_description("Random weights for pytest-llmperf's embedded llama.cpp server; output is noise")
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(p["n_ctx_train"])
    writer.add_embedding_length(n_embd)
    writer.add_block_count(p["n_layer"])
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(p["rope_freq_base"])
    writer.add_layer_norm_rms_eps(p["rms_eps"])

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)

    bits = np.random.PCG64(p["seed"])
    scale = p["weight_scale"]

    # Matrices in F16 keep the file small; norm vectors stay F32 as llama.cpp expects.
    def matrix(name: str, rows: int, cols: int) -> None:
        writer.add_tensor(name, _uniform(bits, (rows, cols), scale).astype(np.float16))

    def ones(name: str) -> None:
        writer.add_tensor(name, np.ones(n_embd, dtype=np.float32))

    matrix("token_embd.weight", n_vocab, n_embd)
    for i in range(p["n_layer"]):
        ones(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        matrix(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        matrix(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        matrix(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        ones(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        matrix(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        matrix(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    ones("output_norm.weight")
    matrix("output.weight", n_vocab, n_embd)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
