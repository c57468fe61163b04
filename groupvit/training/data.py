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
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import braceexpand
import torch
from PIL import Image

from ..data.nouns import CAPTION_KEYS, IMAGE_KEYS
from ..tokenizer import tokenize


class CaptionTexts:
    """caption -> token ids [1 + K, 77]: the caption, then K prompts built from its nouns (spec 3.3).

    stopwords: words never made into prompts, compared lower-case (e.g. `nouns.BOILERPLATE_WORDS`; the
    reference has none). A caption left with fewer than K words is padded with itself, as the reference does.
    """

    def __init__(self, multi_label: int, tagger: str = "spacy", stopwords: Iterable[str] = ()) -> None:
        self.k, self.tagger, self._extractor = multi_label, tagger, None
        self.stopwords = frozenset(w.lower() for w in stopwords)

    def __call__(self, caption: str, rng: random.Random, nouns: list[str] | None = None) -> torch.Tensor:
        if self.k == 0:
            return tokenize([caption])
        from ..data.nouns import NounExtractor, prompts_for_caption

        if nouns is None:
            if self._extractor is None:  # loaded lazily, once per data-loader worker
                self._extractor = NounExtractor(self.tagger)
            nouns = self._extractor.nouns(caption)
        if self.stopwords:
            nouns = [w for w in nouns if w.lower() not in self.stopwords]
        return tokenize([caption, *prompts_for_caption(caption, nouns, self.k, rng)])


def decode_caption(raw: bytes | str) -> str:
    caption = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    caption = caption.strip()
    if not caption:
        raise ValueError("empty caption")
    return caption


def decode_image(raw: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image.convert("RGB")


class CaptionTable(torch.utils.data.Dataset):
    """A CSV or TSV of (image path, caption), header optional; paths relative to the file's folder.

    Indexed by global sample position q: epoch q // N uses its own permutation of the rows.
    """

    def __init__(self, path: str | Path, transform: Callable, texts: CaptionTexts, seed: int = 0) -> None:
        path = Path(path)
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if r]
        if rows and rows[0][:2] in (["image", "caption"], ["filepath", "title"], ["url", "caption"]):
            rows = rows[1:]
        if not rows or any(len(r) < 2 for r in rows):
            raise ValueError(f"{path} needs rows of (image path, caption); found {len(rows)} rows")
        self.rows = [(path.parent / r[0], r[1]) for r in rows]
        self.transform, self.texts, self.seed = transform, texts, seed
        self._perm: tuple[int, torch.Tensor] | None = None
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, q: int) -> int:
        epoch = q // len(self.rows)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.rows), generator=g))
        return int(self._perm[1][q % len(self.rows)])

    def __getitem__(self, q: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """-> (image [3, S, S], ids [1 + K, 77], samples skipped to find it). A broken row is replaced by the
        next position's row, deterministically."""
        for attempt in range(len(self.rows)):
            image_path, caption = self.rows[self.row(q + attempt)]
            rng = random.Random(self.seed * 1_000_003 + q + attempt)
            try:
                caption = decode_caption(caption)
            except ValueError:
                self.skipped["caption"] += 1
                continue
            try:
                image = decode_image(Path(image_path).read_bytes())
            except Exception:  # unreadable, truncated or not an image at all
                self.skipped["image"] += 1
                continue
            # Augmentation draws from `random` and torch's global RNG: seed both from the position, and leave
            # the caller's RNG states as they were (with workers=0 this runs in the training process).
            state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                random.seed(rng.random())
                torch.manual_seed(rng.getrandbits(63))
                pixels = self.transform(image)
            random.setstate(state)
            return pixels, self.texts(caption, rng), attempt
        raise RuntimeError(f"no readable sample in {len(self.rows)} rows")


def step_batches(
    start_step: int, steps: int, batch_size: int, accum: int, rank: int, world: int
) -> Iterator[list[int]]:
    """Global sample positions of each micro-batch of this rank, from `start_step` on."""
    for step in range(start_step, steps):
        for micro in range(accum):
            first = ((step * accum + micro) * world + rank) * batch_size
            yield list(range(first, first + batch_size))


def collate(batch: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    images, texts, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(texts), sum(skipped)


def expand_shards(pattern: str) -> list[str]:
    """'a/{000..009}.tar::b/{00..03}.tar' -> the list of shard paths."""
    urls = [u for part in pattern.split("::") for u in braceexpand.braceexpand(part.strip())]
    if not urls:
        raise ValueError(f"no shards in {pattern!r}")
    # Local files are checked up front: resampled shard streams would otherwise retry missing ones forever.
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards not found: {', '.join(missing[:3])}{more}")
    return urls


def decode_samples(
    samples: Iterator[dict], transform: Callable, texts: CaptionTexts, rng: random.Random, stats: Counter
):
    """webdataset samples -> (image, ids); broken ones are counted in `stats` and skipped."""
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
        nouns = json.loads(sample["nouns.json"]) if "nouns.json" in sample else None
        yield transform(image), texts(caption, rng, nouns)


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
    """A loader of (images [B, 3, S, S], ids [B, 1 + K, 77], skipped-so-far per worker) from webdataset shards."""
    import webdataset as wds

    urls = expand_shards(pattern)

    def report(exn: Exception) -> bool:
        print(f"groupvit train: skipping unreadable data: {exn}", flush=True)
        return True

    def pipeline(stream: Iterator[dict]) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, int]]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        rng = random.Random(seed * 7919 + worker)
        if info is not None:  # in a worker process: seed its augmentation RNGs
            random.seed(rng.random())
            torch.manual_seed(rng.getrandbits(63))
        stats: Counter[str] = Counter()
        images, ids = [], []
        for image, text in decode_samples(stream, transform, texts, rng, stats):
            images.append(image)
            ids.append(text)
            if len(images) == batch_size:
                yield torch.stack(images), torch.stack(ids), {"worker": worker, **stats}
                images, ids = [], []

    shards = wds.ResampledShards(urls, seed=seed, deterministic=True) if resampled else wds.SimpleShardList(urls)
    stages = [shards] if resampled else [shards, wds.split_by_node, wds.split_by_worker]
    dataset = wds.DataPipeline(
        *stages,
        wds.tarfile_to_samples(handler=report),
        wds.shuffle(shuffle_buffer, rng=random.Random(seed)),
        pipeline,
    )
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
