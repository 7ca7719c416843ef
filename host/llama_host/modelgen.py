"""Small llama-architecture GGUF models with random weights, for tests, the demo and benchmarks.

No test downloads weights: every model is written here with the ``gguf`` package, deterministic
for a seed. A preset names a shape and a vocabulary: a synthetic one (tiny, fast) or a real one
copied from the vocab-only GGUFs inside the pinned llama.cpp source, so that special tokens and
chat markers tokenize as in real models. Random weights emit arbitrary bytes, which is exactly
the input that detokenizing and UTF-8 handling must survive.

    python -m llama_host.modelgen spm --quant q4_0 -o spm-q4_0.gguf
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
from pathlib import Path

import gguf
import numpy as np

from llama_host import vendor

GENERATOR_VERSION = 1  # bump when the output of write_model changes, to refresh caches

# Chat templates embedded in presets with a real vocabulary (same family as the vocabulary),
# taken from the llama.cpp source at build time, so `auto` has something real to render.
_LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    vocab: str  # "synthetic", or the name of a vocab-only GGUF in llama.cpp's models/
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx: int = 4096
    chat_template: str | None = None  # text, or "file:<name>" in llama.cpp's models/templates
    tool_use_template: str | None = None  # the variant for requests with tools (as chat_template)
    rope_freq_base: float = 10000.0
    default_quant: str = "f16"
    fim: bool = False  # the synthetic vocabulary gains fill-in-the-middle tokens (a code model's)
    # A reranker: Qwen3's layout (as Qwen3-Reranker) with a classification head of these labels
    # and rank pooling, so llama.cpp scores a (query, document) pair
    rerank_labels: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        # Synthetic SPM vocabulary, under 1 MB: fast unit tests.
        Preset("tiny", "synthetic", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
               n_ctx=2048, chat_template=_CHATML_TEMPLATE, default_quant="f32"),
        # tiny, as a code model: fill-in-the-middle tokens with repository and file separators.
        Preset("fim", "synthetic", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
               n_ctx=2048, default_quant="f32", fim=True),
        # tiny, as a reranker (a classification head over the last token).
        Preset("rerank", "synthetic", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
               n_ctx=2048, default_quant="f32", rerank_labels=("yes", "no")),
        # The real Llama-2 (SentencePiece) vocabulary and chat template.
        Preset("spm", "llama-spm", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
               chat_template=_LLAMA2_TEMPLATE),
        # The real Llama-3 (BPE) vocabulary and chat template.
        Preset("bpe", "llama-bpe", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
               n_ctx=8192, chat_template="file:meta-llama-Llama-3.1-8B-Instruct.jinja",
               rope_freq_base=500000.0),
        # ~30M parameters with the Llama-2 vocabulary: per-token overhead shows (benchmarks).
        Preset("small", "llama-spm", n_embd=384, n_layer=6, n_head=6, n_head_kv=6, n_ff=1024,
               chat_template=_LLAMA2_TEMPLATE, default_quant="q8_0"),
        # Shaped like a 1.1B model (TinyLlama), quantized to Q4_0 (benchmarks; not in tests).
        Preset("bench", "llama-spm", n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632,
               n_ctx=2048, chat_template=_LLAMA2_TEMPLATE, default_quant="q4_0"),
    ]
}

QUANTS = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}


# --- vocabularies -----------------------------------------------------------------------------

_SYNTHETIC_WORDS = (
    "the a an and of to in is it you that he she we they was for on are with as I his her be at"
    " by this had not but from or have one all were there when your can said what use each which"
    " do how if will up about out many then them so some would make like him into time has look"
    " two more write go see number no way could people my than first water been call who its now"
    " find long down day did get come made may part hello world assistant user system answer"
    " question llama model token Hello World The"
).split()


# Qwen2.5-Coder's names, as the GGUF keys that point at them
FIM_TOKENS = {"pre": "<|fim_prefix|>", "suf": "<|fim_suffix|>", "mid": "<|fim_middle|>", "rep": "<|repo_name|>",
              "sep": "<|file_sep|>"}


def _synthetic_vocab(fim: bool = False) -> dict:
    """A SentencePiece-style vocabulary: specials, 256 byte-fallback tokens, chat markers (and
    with ``fim`` the fill-in-the-middle ones), and words with all their prefixes (SPM builds a
    word by merging pieces that are in the vocab)."""
    T = gguf.TokenType
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [T.UNKNOWN, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [T.CONTROL, T.CONTROL]
    fim_ids = {}
    if fim:
        fim_ids = {f"tokenizer.ggml.fim_{k}_token_id": (len(tokens) + i, None) for i, k in enumerate(FIM_TOKENS)}
        tokens += list(FIM_TOKENS.values())
        types += [T.CONTROL] * len(FIM_TOKENS)
    pieces: dict[str, None] = {}
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()\n▁éü日本語":
        pieces[ch] = None
    for word in _SYNTHETIC_WORDS:
        w = "▁" + word
        for end in range(2, len(w) + 1):
            pieces[w[:end]] = None
    tokens += list(pieces)
    types += [T.NORMAL] * len(pieces)
    # Longer pieces score higher so that merges prefer whole words.
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    return {
        "tokenizer.ggml.model": ("llama", None),
        "tokenizer.ggml.tokens": (tokens, gguf.GGUFValueType.STRING),
        "tokenizer.ggml.scores": (scores, gguf.GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": ([int(t) for t in types], gguf.GGUFValueType.INT32),
        "tokenizer.ggml.unknown_token_id": (0, None),
        "tokenizer.ggml.bos_token_id": (1, None),
        "tokenizer.ggml.eos_token_id": (2, None),
        "tokenizer.ggml.add_bos_token": (True, None),
        "tokenizer.ggml.add_eos_token": (False, None),
        **fim_ids,
    }


def _copied_vocab(name: str) -> dict:
    """Every tokenizer.* key of a vocab-only GGUF, with its GGUF type."""
    reader = gguf.GGUFReader(vendor.vocab_gguf(name))
    out = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        out[key] = (field.contents(), sub)
    return out


def _write_vocab(writer: gguf.GGUFWriter, vocab: dict) -> int:
    for key, (value, sub) in vocab.items():
        if sub is not None:
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=sub)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    return len(vocab["tokenizer.ggml.tokens"][0])


# --- weights ------------------------------------------------------------------------------------


def write_model(preset: Preset, path: Path, *, seed: int = 0, dtype: str = "f16") -> Path:
    """Write an unquantized model (``dtype`` f32 or f16; norms are always f32)."""
    vocab = _synthetic_vocab(preset.fim) if preset.vocab == "synthetic" else _copied_vocab(preset.vocab)
    rng = np.random.default_rng(seed)
    np_dtype = np.float32 if dtype == "f32" else np.float16
    head_dim = preset.n_embd // preset.n_head
    n_embd_kv = head_dim * preset.n_head_kv

    rerank = bool(preset.rerank_labels)
    writer = gguf.GGUFWriter(path, "qwen3" if rerank else "llama")
    writer.add_name(f"llama-host-{preset.name}")
    if rerank:
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_classifier_output_labels(list(preset.rerank_labels))
    writer.add_context_length(preset.n_ctx)
    writer.add_embedding_length(preset.n_embd)
    writer.add_block_count(preset.n_layer)
    writer.add_feed_forward_length(preset.n_ff)
    writer.add_head_count(preset.n_head)
    writer.add_head_count_kv(preset.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(preset.rope_freq_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(QUANTS[dtype])
    n_vocab = _write_vocab(writer, vocab)
    writer.add_vocab_size(n_vocab)
    if preset.chat_template and preset.tool_use_template:
        writer.add_chat_template([{"name": "default", "template": _template_text(preset.chat_template)},
                                  {"name": "tool_use", "template": _template_text(preset.tool_use_template)}])
    elif preset.chat_template:
        writer.add_chat_template(_template_text(preset.chat_template))

    def matrix(rows: int, cols: int, std: float) -> np.ndarray:
        # numpy (rows, cols) is ggml ne = [cols, rows]: cols inputs, rows outputs
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np_dtype)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    std_in = 1.0 / np.sqrt(preset.n_embd)
    writer.add_tensor("token_embd.weight", matrix(n_vocab, preset.n_embd, 1.0))
    for i in range(preset.n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm(preset.n_embd))
        writer.add_tensor(f"blk.{i}.attn_q.weight", matrix(preset.n_embd, preset.n_embd, std_in))
        writer.add_tensor(f"blk.{i}.attn_k.weight", matrix(n_embd_kv, preset.n_embd, std_in))
        writer.add_tensor(f"blk.{i}.attn_v.weight", matrix(n_embd_kv, preset.n_embd, std_in))
        writer.add_tensor(f"blk.{i}.attn_output.weight", matrix(preset.n_embd, preset.n_embd, std_in))
        if rerank:
            writer.add_tensor(f"blk.{i}.attn_q_norm.weight", norm(head_dim))
            writer.add_tensor(f"blk.{i}.attn_k_norm.weight", norm(head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm(preset.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(preset.n_ff, preset.n_embd, std_in))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(preset.n_ff, preset.n_embd, std_in))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(preset.n_embd, preset.n_ff, 1.0 / np.sqrt(preset.n_ff)))
    writer.add_tensor("output_norm.weight", norm(preset.n_embd))
    # Logits with a spread of a few units: peaked enough that greedy choices are never near-ties,
    # flat enough that sampling with a temperature still varies.
    writer.add_tensor("output.weight", matrix(n_vocab, preset.n_embd, 3.0 * std_in))
    if rerank:
        writer.add_tensor("cls.output.weight", matrix(len(preset.rerank_labels), preset.n_embd, 3.0 * std_in))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _template_text(spec: str) -> str:
    if spec.startswith("file:"):
        return (vendor.chat_templates_dir() / spec[5:]).read_text(encoding="utf-8")
    return spec


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None) -> Path:
    """Quantize with llama.cpp's own ``llama_model_quantize``."""
    import ctypes

    from llama_host.engine import lib

    lib.init_backend()
    params = lib.C.llama_model_quantize_default_params()
    params.ftype = int(QUANTS[quant])
    params.nthread = threads or os.cpu_count() or 1
    rc = lib.C.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {quant}) failed with {rc}")
    return dst


# --- cache + command line -----------------------------------------------------------------------


def default_cache_dir() -> Path:
    env = os.environ.get("LLAMA_HOST_MODEL_CACHE")
    return Path(env) if env else vendor.REPO_ROOT / ".cache" / "models"


def user_cache_dir() -> Path:
    """Where the server's demo model is written: the user's cache, not the checkout."""
    base = os.environ.get("LLAMA_HOST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama-host")
    return Path(base) / "models"


def build(name: str, *, quant: str | None = None, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """The path of preset ``name`` in ``quant`` (default: the preset's), written once and cached.

    The file name carries a hash of everything that determines the bytes, so a changed preset or
    generator never serves a stale file; files are written under a temporary name and renamed.
    """
    preset = PRESETS[name]
    quant = quant or preset.default_quant
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; accepted: {', '.join(QUANTS)}")
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(repr((GENERATOR_VERSION, preset, seed, quant)).encode()).hexdigest()[:12]
    path = cache_dir / f"{name}-{quant}-{key}.gguf"
    if path.exists():
        return path
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        if quant in ("f32", "f16"):
            write_model(preset, tmp, seed=seed, dtype=quant)
        else:
            base = build(name, quant="f16", seed=seed, cache_dir=cache_dir)
            quantize(base, tmp, quant)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_host.modelgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--quant", choices=sorted(QUANTS), help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, help="copy the model here (default: print the cached path)")
    args = parser.parse_args(argv)
    path = build(args.preset, quant=args.quant, seed=args.seed)
    if args.output:
        import shutil

        shutil.copyfile(path, args.output)
        path = args.output
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
