"""Prompt tokenizers: fixed shapes, eos handling, truncation, cleaning; HF path on a local tiny tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from dreamzero_policy.models.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, clean_prompt

# --- ByteTokenizer ---------------------------------------------------------------------------------


def test_byte_tokenizer_layout():
    tok = ByteTokenizer(vocab_size=300, length=8)
    assert isinstance(tok, Tokenizer)
    ids, mask = tok(["hi", "", "héllo wörld"])
    assert ids.shape == mask.shape == (3, 8) and ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids[0], [ord("h") + 3, ord("i") + 3, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 0, 0, 0, 0, 0])
    # empty prompt (blank negative prompt): eos only
    np.testing.assert_array_equal(ids[1], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask[1], [1, 0, 0, 0, 0, 0, 0, 0])
    # truncated to length - 1 bytes + eos; all ids in range
    raw = "héllo wörld".encode()
    np.testing.assert_array_equal(ids[2, :7], np.frombuffer(raw[:7], np.uint8).astype(np.int32) + 3)
    assert ids[2, 7] == 1 and mask[2].all()
    assert ids.max() < tok.vocab_size


def test_byte_tokenizer_deterministic_and_single_string():
    tok = ByteTokenizer(vocab_size=259, length=32)
    a_ids, a_mask = tok(["pick up the cube"])
    b_ids, b_mask = tok("pick up the cube")  # a bare string is one prompt
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert int(a_mask.sum()) == len("pick up the cube") + 1
    text = "grüße \U0001f916 ロボット"  # 1- to 4-byte UTF-8 characters
    ids, mask = tok([text])
    n = int(mask.sum()) - 1
    assert bytes((ids[0, :n] - 3).astype(np.uint8).tolist()).decode("utf-8") == text
    assert 3 <= ids[0, :n].min() and ids.max() < 259


def test_byte_tokenizer_cleans_like_reference():
    tok = ByteTokenizer(vocab_size=300, length=32)
    np.testing.assert_array_equal(tok(["  pick\n up\t&amp;amp; place  "])[0], tok(["pick up & place"])[0])
    raw = ByteTokenizer(vocab_size=300, length=32, clean=False)
    assert not np.array_equal(raw(["  pick  up "])[0], tok(["pick up"])[0])


def test_byte_tokenizer_errors():
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        ByteTokenizer(vocab_size=64, length=8)
    with pytest.raises(ValueError, match="length"):
        ByteTokenizer(vocab_size=300, length=0)
    tok = ByteTokenizer(vocab_size=300, length=8)
    with pytest.raises(ValueError, match="at least one"):
        tok([])
    with pytest.raises(ValueError, match="must be str"):
        tok([b"bytes"])


def test_clean_prompt():
    assert clean_prompt("  a\u201cb\u201d  c\u2019s \n\n") == 'a"b" c\'s'
    assert clean_prompt("&lt;tag&gt;") == "<tag>"
    assert clean_prompt("e\u0301") == "\u00e9"  # NFC
    assert clean_prompt("") == ""


# --- HFTokenizer on a tiny local tokenizer directory -----------------------------------------------

WORDS = ["pick", "up", "the", "red", "cube", "place", "it", "&", "a", "box"]


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # umT5-style: append eos to every sequence
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    path = tmp_path_factory.mktemp("tiny_tok")
    fast.save_pretrained(path)
    return path


def test_hf_tokenizer_pads_and_appends_eos(tiny_hf_dir):
    tok = HFTokenizer.from_directory(tiny_hf_dir, length=6)
    assert isinstance(tok, Tokenizer) and tok.length == 6 and tok.vocab_size == 13
    ids, mask = tok(["pick up the red cube", "", "place  it\n in a box"])
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids[0], [3, 4, 5, 6, 7, 1])
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(ids[1], [1, 0, 0, 0, 0, 0])  # blank prompt: eos only
    np.testing.assert_array_equal(mask[1], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ids[2], [8, 9, 2, 11, 12, 1])  # "in" is unknown


def test_hf_tokenizer_truncates_keeping_eos(tiny_hf_dir):
    tok = HFTokenizer.from_directory(tiny_hf_dir, length=4)
    ids, mask = tok(["pick up the red cube"])
    np.testing.assert_array_equal(ids[0], [3, 4, 5, 1])
    assert mask.all()


def test_hf_tokenizer_cleans_text(tiny_hf_dir):
    tok = HFTokenizer.from_directory(tiny_hf_dir, length=8)
    ids, _ = tok(["pick &amp;amp; place"])
    np.testing.assert_array_equal(ids[0, :4], [3, 10, 8, 1])  # "&" is a word of the vocab
    raw = HFTokenizer.from_directory(tiny_hf_dir, length=8, clean=False)
    assert raw(["pick &amp; place"])[0][0, 1] == 2  # "&amp;" left as is -> unknown


def test_hf_tokenizer_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        HFTokenizer.from_directory(tmp_path / "nope")
