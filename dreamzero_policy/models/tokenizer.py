"""Prompt tokenizers: list of strings -> fixed-length (ids, mask), static shapes for jit.

Every tokenizer pads on the right (pad id 0) or truncates to exactly ``length`` tokens, always
ends a prompt with eos (so the empty prompt, used as the blank negative prompt, is eos only) and
returns int32 numpy arrays ``ids`` (B, length) and ``mask`` (B, length) with 1 on real tokens.

- ``HFTokenizer``: a local transformers tokenizer directory (google/umt5-xxl's for real
  checkpoints), called as the reference data collator calls it.
- ``ByteTokenizer``: no files; ByT5-style UTF-8 bytes for tiny presets and tests.

Both apply :func:`clean_prompt` first, the reference's ``whitespace`` cleaning.
"""

from __future__ import annotations

import html
import os
import re
import unicodedata
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

_WHITESPACE = re.compile(r"\s+")
# ftfy.fix_text's default "uncurl_quotes" step, the part of ftfy that commonly changes typed prompts.
_QUOTES = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"'}
)


def clean_prompt(text: str) -> str:
    """The reference's ``whitespace_clean(basic_clean(text))`` without the ftfy dependency.

    Kept: HTML unescaping (twice), NFC normalisation and straight quotes (both done by
    ``ftfy.fix_text``), collapsing whitespace runs to one space, stripping. Not reproduced from ftfy:
    mojibake repair (a no-op on correctly encoded text), ligature and full-width folding, control
    character removal.
    """
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    return _WHITESPACE.sub(" ", text).strip()


def _as_list(texts: str | Sequence[str]) -> list[str]:
    # A bare string is one prompt (as in the reference), not a sequence of one-character prompts.
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise ValueError("tokenizer needs at least one prompt")
    for t in items:
        if not isinstance(t, str):
            raise ValueError(f"prompts must be str, got {type(t).__name__}")
    return items


@runtime_checkable
class Tokenizer(Protocol):
    """Prompts -> (ids int32 (B, length), mask int32 (B, length)); every id < ``vocab_size``."""

    @property
    def length(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


class ByteTokenizer:
    """UTF-8 bytes shifted by 3 (ByT5 layout: pad 0, eos 1, unk 2 unused, byte b -> b + 3).

    Needs ``vocab_size >= 259`` so every byte has an id. A prompt longer than ``length - 1`` bytes
    is cut there and still ends in eos; a cut may split a multi-byte character, which only affects
    the last token.
    """

    PAD_ID = 0
    EOS_ID = 1
    OFFSET = 3

    def __init__(self, vocab_size: int, length: int, *, clean: bool = True):
        if vocab_size < 256 + self.OFFSET:
            raise ValueError(
                f"ByteTokenizer needs vocab_size >= {256 + self.OFFSET} (256 bytes + pad/eos/unk), got {vocab_size}"
            )
        if length < 1:
            raise ValueError(f"tokenizer length must be >= 1 (room for eos), got {length}")
        self._vocab_size = vocab_size
        self._length = length
        self.clean = clean

    @property
    def length(self) -> int:
        return self._length

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        items = _as_list(texts)
        ids = np.full((len(items), self._length), self.PAD_ID, np.int32)
        mask = np.zeros((len(items), self._length), np.int32)
        for row, text in enumerate(items):
            data = (clean_prompt(text) if self.clean else text).encode("utf-8")[: self._length - 1]
            n = len(data)
            ids[row, :n] = np.frombuffer(data, np.uint8).astype(np.int32) + self.OFFSET
            ids[row, n] = self.EOS_ID
            mask[row, : n + 1] = 1
        return ids, mask


class HFTokenizer:
    """A transformers tokenizer loaded from a local directory (no hub access).

    Called like the reference ``HuggingfaceTokenizer(name, seq_len=512, clean='whitespace')``:
    cleaned prompts, special tokens added (umT5 appends ``</s>``), ``padding='max_length'``,
    ``truncation=True``.
    """

    def __init__(self, tokenizer, length: int, *, clean: bool = True):
        if length < 1:
            raise ValueError(f"tokenizer length must be >= 1, got {length}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; fixed-length padding needs one")
        self.tokenizer = tokenizer
        self._length = length
        self.clean = clean

    @classmethod
    def from_directory(cls, path: str | os.PathLike, length: int = 512, *, clean: bool = True) -> HFTokenizer:
        if not os.path.isdir(path):
            raise ValueError(f"tokenizer directory not found: {path}")
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True), length, clean=clean)

    @property
    def length(self) -> int:
        return self._length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        items = _as_list(texts)
        if self.clean:
            items = [clean_prompt(t) for t in items]
        enc = self.tokenizer(
            items,
            padding="max_length",
            truncation=True,
            max_length=self._length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)
