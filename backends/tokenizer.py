"""Tokenizers for LLM stages: the zoo's byte-level one, `tokenizer.json` files, and text <-> ids stages.

The zoo LLM's tokenizer maps each UTF-8 byte to its own id (0..255) plus two special tokens, so
it needs no vocabulary file; `byte_tokenizer_json` writes the same tokenizer in the Hugging Face
`tokenizers` format, which `load_tokenizer` reads (with that library) for any exported model.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Protocol

import numpy as np

from heddle.backends.base import BackendError

__all__ = [
    "BOS_ID", "EOS_ID", "ByteTokenizer", "HfTokenizer", "StreamDecoder", "Tokenizer", "byte_tokenizer_json",
    "decode_ids", "encode_text", "load_tokenizer",
]

BOS_ID, EOS_ID = 256, 257
_SPECIAL = {BOS_ID: "<bos>", EOS_ID: "<eos>"}


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; special ids (BOS, EOS, anything >= 256) decode to nothing."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HfTokenizer:
    """A `tokenizer.json` read with the Hugging Face `tokenizers` library."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _Hf
        except ImportError:
            raise BackendError(f"tokenizer {path}: reading tokenizer.json needs the `tokenizers` "
                               f"package, which is not installed") from None
        try:
            self._tok = _Hf.from_file(str(path))
        except Exception as exc:  # the library raises its own exception types
            raise BackendError(f"tokenizer {path}: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


class StreamDecoder:
    """Text of tokens as they come: bytes of a character split across tokens wait for the rest."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._sent = 0
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: list[int]) -> str:
        if isinstance(self._tokenizer, ByteTokenizer):
            return self._bytes.decode(bytes(i for i in ids if 0 <= i < 256))
        # Other tokenizers: decode the whole text and send what is new, once it ends cleanly.
        self._ids.extend(ids)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        new, self._sent = text[self._sent:], len(text)
        return new


def load_tokenizer(ref: str | Path) -> Tokenizer:
    """"byte" for the zoo's tokenizer; else a tokenizer.json file, or a directory holding one."""
    if str(ref) == "byte":
        return ByteTokenizer()
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise BackendError(f"tokenizer {ref}: no such file (expected 'byte' or a tokenizer.json)")
    return HfTokenizer(path)


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte, which the ByteLevel pre-tokenizer uses."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_tokenizer_json() -> str:
    """The byte tokenizer as a `tokenizers` tokenizer.json: byte-level BPE without merges."""
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in _SPECIAL.items()]
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": {c: i for i, c in enumerate(_byte_chars())}, "merges": []}
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
           "pre_tokenizer": level, "post_processor": None, "decoder": level, "model": model}
    return json.dumps(doc, ensure_ascii=False)


def encode_text(text: np.ndarray) -> dict[str, np.ndarray]:
    """Python stage: one UTF-8 text (BYTES [1]) -> "input_ids" INT64 [1, n], BOS first."""
    if text.size != 1:
        raise ValueError(f"text must hold one string, got {text.size}")
    raw = text.reshape(-1)[0]
    raw = raw.encode() if isinstance(raw, str) else bytes(raw)
    return {"input_ids": np.array([[BOS_ID, *raw]], dtype=np.int64)}


def decode_ids(output_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Python stage: generated ids INT64 [1, n] -> "text" BYTES [1] (special ids dropped)."""
    text = ByteTokenizer().decode([int(i) for i in output_ids.reshape(-1)])
    return {"text": np.array([text.encode()], dtype=object)}
