"""groupvit.tokenize against an independent BPE: transformers' CLIPTokenizer built from OpenAI's merges."""

from __future__ import annotations

import gzip
import html
import re
from pathlib import Path

import ftfy
import pytest
import torch

import groupvit
from groupvit.tokenizer import EOT_TOKEN, SOT_TOKEN

MERGES = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"

CAPTIONS = [
    "a photo of a dog",
    "A Photo Of A DOG",
    "Hello World!! &amp;amp; Café",  # double-escaped HTML entity
    "It's 3:45pm — naïve coöperation 🐶🐱 日本語",
    "don't   stop\t\nbelieving",
    "Mojibake: cafÃ© and â€œquotesâ€\x9d",  # ftfy repairs these
    "&lt;b&gt;bold&lt;/b&gt; tags, 1,000,000 people... (maybe)",
    "",
    "   ",
    "word " * 100,  # overflow: 100 words > 75 ids
]


@pytest.fixture(scope="module")
def reference():
    from transformers import CLIPTokenizer

    def byte_symbols() -> list[str]:
        """CLIP's byte -> unicode table, in vocabulary order: printable bytes as themselves, the rest from 256."""
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]

    lines = gzip.open(MERGES, "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = byte_symbols()
    vocab = [
        *symbols,
        *(s + "</w>" for s in symbols),
        *("".join(m) for m in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    assert len(vocab) == 49408
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)


def reference_ids(tok, text: str) -> list[int]:
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    text = re.sub(r"\s+", " ", text).strip().lower()
    ids = tok(text).input_ids  # [SOT, ..., EOT]
    if len(ids) > 77:
        ids = [*ids[:76], EOT_TOKEN]
    return ids + [0] * (77 - len(ids))


def test_known_ids():
    ids = groupvit.tokenize(["a photo of a dog"])
    assert ids.dtype == torch.long and ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert ids[0, 7:].eq(0).all()


def test_matches_reference_bpe(reference):
    ours = groupvit.tokenize(CAPTIONS)
    for text, row in zip(CAPTIONS, ours, strict=True):
        assert row.tolist() == reference_ids(reference, text), text


def test_cleaning_is_applied():
    a, b, c = groupvit.tokenize(["Tom &amp;amp; Jerry", "tom & jerry", "TOM   &\n JERRY"])
    assert torch.equal(a, b) and torch.equal(b, c)


def test_overflow_truncates_and_forces_eot():
    row = groupvit.tokenize("word " * 100)[0]
    assert row[0] == SOT_TOKEN and row[-1] == EOT_TOKEN
    assert (row[1:-1] != 0).all() and (row == EOT_TOKEN).sum() == 1
    short = groupvit.tokenize(["a dog"], context_length=3)[0]
    assert short.tolist() == [SOT_TOKEN, 320, EOT_TOKEN]


def test_bad_input():
    with pytest.raises(TypeError, match="position 1"):
        groupvit.tokenize(["ok", None])
    with pytest.raises(ValueError, match="context_length"):
        groupvit.tokenize("x", context_length=1)


def test_encode_cache_hands_out_fresh_lists():
    """encode caches by text; a caller mutating its result must not change what the next caller gets."""
    from groupvit.tokenizer import encode

    first = encode("a photo of a dog.")
    first.append(0)
    assert encode("a photo of a dog.") == first[:-1]
    assert groupvit.tokenize("a photo of a dog.")[0, 1 : len(first)].tolist() == first[:-1]
