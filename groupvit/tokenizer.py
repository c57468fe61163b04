"""CLIP's byte-level BPE tokenizer with CLIP's text cleaning (spec section 2).

The BPE itself is `instant-clip-tokenizer` (MIT; OpenAI's vocabulary built in, written in Rust); the
cleaning (ftfy, double HTML unescape, whitespace collapse, lower case), start/end tokens, zero padding
and truncation with a forced end token follow the reference.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import lru_cache

import ftfy
import torch

SOT_TOKEN = 49406
EOT_TOKEN = 49407
CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _bpe():
    import instant_clip_tokenizer

    return instant_clip_tokenizer.Tokenizer()


def clean_text(text: str) -> str:
    """CLIP's cleaning: ftfy, HTML entities unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return re.sub(r"\s+", " ", text).strip().lower()


def encode(text: str) -> list[int]:
    """BPE ids of one text, without start/end tokens."""
    return list(_encode_cached(text))


# Noun prompts repeat (80 templates x a caption vocabulary), and cleaning plus BPE cost about as much as decoding
# and augmenting the image, so a data-loader worker caches them.
@lru_cache(maxsize=1 << 16)
def _encode_cached(text: str) -> tuple[int, ...]:
    return tuple(_bpe().encode(clean_text(text)))


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Texts -> LongTensor [N, context_length]: SOT, BPE ids, EOT, zero padding.

    Longer texts are cut to `context_length` and their last id is set to EOT, as the reference does.
    """
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects strings, got {type(text).__name__} at position {i}")
        ids = [SOT_TOKEN, *_encode_cached(text), EOT_TOKEN][:context_length]
        ids[-1] = EOT_TOKEN
        rows.append(ids + [0] * (context_length - len(ids)))
    # One tensor from the padded rows (a tensor per row cost as much as the BPE itself in the training loader);
    # reshaped so that no texts give [0, context_length].
    return torch.tensor(rows, dtype=torch.long).reshape(len(texts), context_length)
