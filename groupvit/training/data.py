"""Training data: image-caption pairs from webdataset shards or a CSV/TSV file, with noun prompts.

Broken samples (undecodable images, empty or non-UTF-8 captions) are skipped and counted, never fatal.

* CSV/TSV (`CaptionTable`): indexed; the sample at global position q (step, rank, micro-batch and slot)
  is a pure function of (seed, q), its augmentation too, so a resumed run sees exactly the same batches.
* webdataset shards (`shard_loader`): streamed, shards resampled with replacement per worker (or split
  across ranks and workers once per epoch with `resampled=False`); a resumed run reseeds the stream from
  the step, so it continues with fresh samples rather than the identical ones.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import braceexpand
import torch
from PIL import Image, UnidentifiedImageError

from ..checks import input_file
from ..data.nouns import CAPTION_KEYS, IMAGE_KEYS
from ..errors import DataError, describe
from ..templates import get_templates
from ..tokenizer import tokenize

# An image file of a CSV/TSV row, checked with stat before it is read (a row naming /dev/zero would never end).
MAX_IMAGE_FILE_BYTES = 256 << 20
MAX_CAPTION_NOUNS = 16  # caption nouns kept per sample for same-noun positives (SynthVOC captions have < 12)


def noun_key(word: str) -> int:
    """A stable non-negative id of a word (lower-cased): equal words get equal ids on every worker and rank."""
    return zlib.crc32(word.lower().encode()) & 0x7FFFFFFF


class CaptionTexts:
    """caption -> (token ids [1 + K, 77], noun keys [K + MAX_CAPTION_NOUNS]): the caption, then K prompts built from
    its nouns (spec 3.3); the keys say which noun each prompt names (`noun_key`, -1 for a caption used as padding)
    and which nouns the caption has (padded with -2), so a loss can treat images that share a noun as positives.

    stopwords: words never made into prompts, compared lower-case (e.g. `nouns.BOILERPLATE_WORDS`; the
    reference has none). A caption left with fewer than K words is padded with itself, as the reference does.
    templates: a `groupvit.templates` set name or the templates themselves (the reference: CLIP's 80, "full").
    """

    def __init__(
        self,
        multi_label: int,
        tagger: str = "spacy",
        stopwords: Iterable[str] = (),
        templates: str | Sequence[str] = "full",
    ) -> None:
        self.k, self.tagger, self._extractor = multi_label, tagger, None
        self.stopwords = frozenset(w.lower() for w in stopwords)
        self.templates = get_templates(templates)

    def __call__(
        self, caption: str, rng: random.Random, nouns: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k == 0:
            return tokenize([caption]), torch.full((MAX_CAPTION_NOUNS,), -2, dtype=torch.long)
        from ..data.nouns import NounExtractor, draw_prompts

        if nouns is None:
            if self._extractor is None:  # loaded lazily, once per data-loader worker
                self._extractor = NounExtractor(self.tagger)
            nouns = self._extractor.nouns(caption)
        if self.stopwords:
            nouns = [w for w in nouns if w.lower() not in self.stopwords]
        prompts = draw_prompts(caption, nouns, self.k, rng, self.templates)
        present = sorted({noun_key(w) for w in nouns})[:MAX_CAPTION_NOUNS]
        keys = [-1 if noun is None else noun_key(noun) for _, noun in prompts]
        keys += present + [-2] * (MAX_CAPTION_NOUNS - len(present))
        return tokenize([caption, *(text for text, _ in prompts)]), torch.tensor(keys, dtype=torch.long)


def decode_caption(raw: bytes | str) -> str:
    caption = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    caption = caption.strip()
    if not caption:
        raise ValueError("empty caption")
    if not caption.isascii():  # a table's non-UTF-8 bytes arrive as surrogates (read_pairs_table)
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("caption is not UTF-8 text") from None
    return caption


def decode_image(raw: bytes) -> Image.Image:
    """Image bytes -> RGB; ValueError saying "not an image" or "damaged or truncated" otherwise."""
    try:
        image = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise ValueError("is not an image") from None
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"is damaged or truncated ({e})") from None
    return image.convert("RGB")


def read_image_file(path: Path) -> bytes:
    """The bytes of a row's image, after stat says it is a regular file of at most MAX_IMAGE_FILE_BYTES
    (FileNotFoundError when missing, ValueError saying what it is otherwise)."""
    return input_file(path, "image", MAX_IMAGE_FILE_BYTES).read_bytes()


def read_pairs_table(path: str | Path) -> list[tuple[Path, str]]:
    """A CSV or TSV of (image path, caption), header optional -> [(image path, caption)], paths relative to the
    file's folder. Bytes that are not UTF-8 are kept as surrogates, so such a caption is skipped and counted
    (`decode_caption`) instead of the whole file refused; a broken file is named with the line."""
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"training data {path} not found; give a CSV/TSV of (image path, caption) or shards")
    input_file(path, "training data")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            rows = [(reader.line_num, row) for row in reader if row]
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: not a readable CSV/TSV ({e})") from None
    if rows and rows[0][1][:2] in (["image", "caption"], ["filepath", "title"], ["url", "caption"]):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} holds no rows; expected one (image path, caption) per line")
    short = next((line for line, row in rows if len(row) < 2), None)
    if short is not None:
        raise DataError(f"{path}, line {short}: expected two {'tab' if delimiter != ',' else 'comma'}-separated "
                        "columns, image path and caption")  # fmt: skip
    return [(path.parent / row[0], row[1]) for _, row in rows]


class IndexedPairs(torch.utils.data.Dataset):
    """Image-caption pairs indexed by global sample position q: epoch q // N uses its own permutation, and the
    sample at q, its augmentation and its prompts are a pure function of (seed, q), so a resumed run sees exactly
    the same batches. Subclasses say how pair i is read (`caption`, `image`, `nouns`); a pair that cannot be read
    raises and is replaced by the next position's, deterministically, and counted in `skipped`."""

    def __init__(self, size: int, transform: Callable, texts: CaptionTexts, seed: int = 0) -> None:
        self.size, self.transform, self.texts, self.seed = size, transform, texts, seed
        self._perm: tuple[int, torch.Tensor] | None = None
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return self.size

    def caption(self, i: int) -> str | bytes:
        raise NotImplementedError

    def image(self, i: int) -> Image.Image | torch.Tensor:
        raise NotImplementedError

    def nouns(self, i: int) -> list[str] | None:
        return None  # tagged on the fly by CaptionTexts

    def row(self, q: int) -> int:
        epoch = q // self.size
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.size, generator=g))
        return int(self._perm[1][q % self.size])

    def __getitem__(self, q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """-> (image [3, S, S], ids [1 + K, 77], noun keys, samples skipped to find it)."""
        for attempt in range(self.size):
            i = self.row(q + attempt)
            rng = random.Random(self.seed * 1_000_003 + q + attempt)
            try:
                caption = decode_caption(self.caption(i))
            except (UnicodeDecodeError, ValueError):
                self.skipped["caption"] += 1
                continue
            try:
                image = self.image(i)
            except Exception:  # unreadable, truncated or not an image at all
                self.skipped["image"] += 1
                continue
            # Augmentation draws from `random` and torch's global RNG: seed both from the position, and leave
            # the caller's RNG states as they were (with workers=0 this runs in the training process). The CPU
            # generator is seeded directly: torch.manual_seed also queues seeds for every accelerator backend, which
            # records a stack trace each time and cost about half of a sample's time here.
            state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                random.seed(rng.random())
                torch.default_generator.manual_seed(rng.getrandbits(63))
                pixels = self.transform(image)
            random.setstate(state)
            return pixels, *self.texts(caption, rng, self.nouns(i)), attempt
        raise RuntimeError(f"no readable sample in {self.size} rows")


class CaptionTable(IndexedPairs):
    """A CSV or TSV of (image path, caption), header optional; paths relative to the file's folder."""

    def __init__(self, path: str | Path, transform: Callable, texts: CaptionTexts, seed: int = 0) -> None:
        self.rows = read_pairs_table(path)
        super().__init__(len(self.rows), transform, texts, seed)

    def caption(self, i: int) -> str:
        return self.rows[i][1]

    def image(self, i: int) -> Image.Image:
        return decode_image(read_image_file(self.rows[i][0]))


class MemoryPairs(IndexedPairs):
    """Webdataset shards decoded once into memory: images as uint8 tensors [3, H, W], captions, tagged nouns.

    For data that fits in RAM (SynthVOC's 20,000 scenes of 96 px: 550 MB). Batches are cut from it in the training
    process with tensor ops (`data.augment.TensorLightAugment`), so no step waits on JPEG decoding or a loader
    process. Samples that cannot be decoded are skipped and counted while loading (`skipped`).
    """

    def __init__(self, pattern: str, transform: Callable, texts: CaptionTexts, seed: int = 0) -> None:
        import tarfile

        import numpy as np
        from tqdm import tqdm

        skipped: Counter[str] = Counter()
        self.images: list[torch.Tensor] = []
        self.captions: list[str] = []
        self.tagged: list[list[str] | None] = []
        for url in tqdm(expand_shards(pattern), desc="loading shards into memory", unit="shard", leave=False):
            samples: dict[str, dict[str, bytes]] = {}
            with tarfile.open(url) as tar:
                for member in tar:
                    if member.isfile() and "." in Path(member.name).name:
                        key, ext = _split_key(member.name)
                        samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
            for image, caption, nouns in valid_samples(samples.values(), skipped):
                array = np.array(image, dtype=np.uint8)  # [H, W, 3]
                self.images.append(torch.from_numpy(array).permute(2, 0, 1))  # [3, H, W]
                self.captions.append(caption)
                self.tagged.append(nouns)
        if not self.images:
            raise ValueError(f"{pattern}: no readable image-caption pair ({dict(skipped)} skipped)")
        super().__init__(len(self.images), transform, texts, seed)
        self.skipped.update(skipped)

    def caption(self, i: int) -> str:
        return self.captions[i]

    def image(self, i: int) -> torch.Tensor:
        return self.images[i]

    def nouns(self, i: int) -> list[str] | None:
        return self.tagged[i]


def _split_key(name: str) -> tuple[str, str]:
    """'dir/00012.nouns.json' -> ('dir/00012', 'nouns.json'): webdataset's key is the path up to the first dot of the
    file name."""
    folder, slash, base = name.rpartition("/")
    stem, ext = base.split(".", 1)
    return folder + slash + stem, ext


def step_batches(
    start_step: int, steps: int | None, batch_size: int, accum: int, rank: int, world: int
) -> Iterator[list[int]]:
    """Global sample positions of each micro-batch of this rank, from `start_step` on (for ever when steps is None,
    as for a time budget)."""
    for step in range(start_step, steps) if steps is not None else itertools.count(start_step):
        for micro in range(accum):
            yield list(batch_positions(step, micro, batch_size, accum, rank, world))


def batch_positions(step: int, micro: int, batch_size: int, accum: int, rank: int, world: int) -> range:
    """Global sample positions of micro-batch `micro` of this rank at `step`: a step's global batch is the positions
    [step * G, (step + 1) * G), G = batch_size x world x accum, however it is split."""
    first = ((step * accum + micro) * world + rank) * batch_size
    return range(first, first + batch_size)


def collate(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    images, texts, keys, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(texts), torch.stack(keys), sum(skipped)


def expand_shards(pattern: str) -> list[str]:
    """'a/{000..009}.tar::b/{00..03}.tar' -> the list of shard paths."""
    urls = [u for part in pattern.split("::") for u in braceexpand.braceexpand(part.strip())]
    if not urls:
        raise ValueError(f"no shards in {pattern!r}")
    # Local files are checked up front: resampled shard streams would otherwise retry missing ones forever.
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.lexists(u)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards not found: {', '.join(missing[:3])}{more}")
    for u in local:  # a FIFO would block the reader
        input_file(u, "shard")
    return urls


def valid_samples(samples: Iterable[dict], stats: Counter) -> Iterator[tuple[Image.Image, str, list[str] | None]]:
    """webdataset samples -> (image, caption, tagged nouns or None); broken ones are counted in `stats` and skipped."""
    for sample in samples:
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        caption_key = next((k for k in CAPTION_KEYS if k in sample), None)
        if image_key is None or caption_key is None:
            stats["incomplete"] += 1
            continue
        try:
            caption = decode_caption(sample[caption_key])
        except (UnicodeDecodeError, ValueError):
            stats["caption"] += 1
            continue
        try:
            image = decode_image(sample[image_key])
        except Exception:
            stats["image"] += 1
            continue
        yield image, caption, json.loads(sample["nouns.json"]) if "nouns.json" in sample else None


def decode_samples(
    samples: Iterator[dict], transform: Callable, texts: CaptionTexts, rng: random.Random, stats: Counter
):
    """webdataset samples -> (image, ids, noun keys); broken ones are counted in `stats` and skipped."""
    for image, caption, nouns in valid_samples(samples, stats):
        yield transform(image), *texts(caption, rng, nouns)


def shard_loader(
    pattern: str,
    transform: Callable,
    texts: CaptionTexts,
    batch_size: int,
    workers: int,
    seed: int,
    shuffle_buffer: int = 10_000,
    resampled: bool = True,
) -> torch.utils.data.DataLoader:
    """A loader of (images [B, 3, S, S], ids [B, 1 + K, 77], noun keys [B, K + M], skipped-so-far per worker) from
    webdataset shards."""
    import webdataset as wds

    urls = expand_shards(pattern)

    def report(exn: Exception) -> bool:
        print(f"groupvit train: skipping unreadable data: {exn}", flush=True)
        return True

    def pipeline(stream: Iterator[dict]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        rng = random.Random(seed * 7919 + worker)
        if info is not None:  # in a worker process: seed its augmentation RNGs
            random.seed(rng.random())
            torch.manual_seed(rng.getrandbits(63))
        stats: Counter[str] = Counter()
        images, ids, keys = [], [], []
        for image, text, key in decode_samples(stream, transform, texts, rng, stats):
            images.append(image)
            ids.append(text)
            keys.append(key)
            if len(images) == batch_size:
                yield torch.stack(images), torch.stack(ids), torch.stack(keys), {"worker": worker, **stats}
                images, ids, keys = [], [], []

    shards = wds.ResampledShards(urls, seed=seed, deterministic=True) if resampled else wds.SimpleShardList(urls)
    stages = [shards] if resampled else [shards, wds.split_by_node, wds.split_by_worker]
    dataset = wds.DataPipeline(
        *stages,
        wds.tarfile_to_samples(handler=report),
        wds.shuffle(shuffle_buffer, rng=random.Random(seed)),
        pipeline,
    )
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)


def check_training_data(data: str, samples: int = 256) -> None:
    """Fail before training, naming the data and why, when no image-caption pair of a CSV/TSV (or of the first
    `samples` samples of local shards) can be read: all images missing or broken, all captions empty or not UTF-8.
    A stream of broken shards would otherwise never yield a batch."""
    problems: Counter[str] = Counter()
    example: dict[str, str] = {}
    if data.lower().endswith((".csv", ".tsv")):
        rows = read_pairs_table(data)
        for image_path, caption in rows:
            try:
                decode_caption(caption)
            except ValueError as e:
                problems["caption"] += 1
                example.setdefault("caption", f"{e} for {image_path.name}")
                continue
            try:
                decode_image(read_image_file(image_path))
                return
            except FileNotFoundError:
                problems["image"] += 1
                example.setdefault("image", f"{image_path} is missing")
            except (OSError, ValueError) as e:  # a device or FIFO, too large, unreadable, not an image, truncated
                problems["image"] += 1
                text = describe(e)
                example.setdefault("image", text if str(image_path) in text else f"{image_path} {text}")
        where = f"{len(rows)} rows"
    else:
        import webdataset as wds

        local = [u for u in expand_shards(data) if "://" not in u and not u.startswith("pipe:")]
        if not local:  # remote streams are not opened twice
            return

        def unreadable(e: Exception) -> bool:
            problems["unreadable shard"] += 1
            example.setdefault("unreadable shard", describe(e))
            return True

        stream = wds.DataPipeline(wds.SimpleShardList(local), wds.tarfile_to_samples(handler=unreadable))
        pairs = decode_samples(itertools.islice(stream, samples), lambda image: image, lambda *_: (), random.Random(0),
                               problems)  # fmt: skip
        if next(pairs, None) is not None:
            return
        where = f"the first {sum(problems.values())} samples of {len(local)} shards"
    kinds = {"image": "unreadable images", "caption": "empty or non-UTF-8 captions",
             "incomplete": "samples without image or caption", "unreadable shard": "unreadable shards"}  # fmt: skip
    found = "; ".join(
        f"{n} {kinds[k]}" + (f" (e.g. {example[k]})" if k in example else "") for k, n in problems.items() if n
    )
    raise DataError(f"{data}: no usable image-caption pair in {where}: {found or 'nothing to read'}")
