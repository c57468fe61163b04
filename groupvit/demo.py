"""`groupvit demo`: the paper's claim on a laptop. Generate SynthVOC, train a small GroupViT on its captions only,
then segment the validation scenes zero-shot with the VOC protocol and write results.json and report.html.

The same command trains the paper's comparisons: a plain ViT with the same losses (`baseline='vit'`, segmented by
patch-to-text similarity), soft assignment, no multi-label loss, one grouping stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from .checks import input_file
from .config import MAX_CONFIG_BYTES, GroupViTConfig, check_sections, dataclass_from_dict, parse_yaml
from .data.synthvoc import SceneOptions
from .evaluation.datasets import IGNORE_INDEX
from .naming import SCLIP_WORDS, Naming
from .settings import TestSettings

PRESET = "synthvoc"  # groupvit/configs/synthvoc.yaml: model and train sections
# Naming variants (groupvit.naming) tried on calib, each with its own threshold; the best is reported beside the
# headline, which keeps the official naming.
NAMINGS = {"official": Naming(), "voc_words": Naming(background_words=SCLIP_WORDS), "area_0.1": Naming(min_area=0.1),
           "hierarchical_0.3": Naming(hierarchical=0.3)}  # fmt: skip
# The model shipped in the package (groupvit.pretrained), which the report compares with the fresh one.
SHIPPED = "synthvoc"
# The results a demo run writes in its --out; the command refuses a folder holding any without --overwrite.
DEMO_OUTPUTS = ("results.json", "report.html", "model.safetensors", "checkpoint.pt")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, as under taskset or Slurm)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# A recipe: the demo options that make up one way of training, each a field of DemoOptions below. "paper" is the
# paper's recipe on the synthvoc preset (two grouping stages, std-0.02 init, pooled noun loss, softmax losses, the
# shard loader). "fast", the default, is what measurably makes segmentation emerge in 10 CPU minutes (docs/
# synthvoc.md, eighth round); every way it departs from "paper" is named in results.json and the report.
RECIPES: dict[str, dict] = {
    "paper": dict(stages=2, grouping_init="reference", noun_loss="pooled", loss="softmax", noun_positives="own",
                  deep_noun_loss=0.0, deep_noun_decay=False, mosaic_loss=0.0, noun_templates="full", text_pool="eot",
                  in_memory=False),
    "fast": dict(stages=1, grouping_init="fan_in", noun_loss="max_token", loss="sigmoid", noun_positives="shared",
                 deep_noun_loss=1.0, deep_noun_decay=True, mosaic_loss=0.0, noun_templates="full", text_pool="eot",
                 in_memory=True),
}  # fmt: skip


# The paper's values of the demo options that are not part of a recipe (comparisons and variants).
PAPER_VARIANT = {"baseline": None, "soft_assignment": False, "multi_label": True, "drop_boilerplate_nouns": False}
# Fine-tuning a trained model (`--init`): the fast recipe at 0.3 times its learning rate with a short warmup, as the
# feasibility run that made 20 new classes emerge in 10 minutes (docs/research/finetune.md); over the preset's train
# section, under the command line's key=value overrides.
FINETUNE_TRAIN = {"lr": 3e-4, "warmup_lr": 3e-6, "warmup_steps": 20}
# The share of VOC scenes among the training scenes of another vocabulary (`--replay`): 30 % kept VOC val at 19.5
# mIoU against 8.6 without, for 6 points of new-class mIoU (docs/research/finetune.md).
REPLAY = 0.3

# The background thresholds tried on calib. 0.95: the official VOC threshold. 0.05 (a pixel's score is at least
# 1/(5 C) = 0.01): the runs with mosaics chose 0.1, the lowest point before (docs/synthvoc.md, tenth round).
DEMO_THRESHOLDS = (0.05, *(round(0.1 * i, 1) for i in range(1, 10)), 0.95)


@dataclasses.dataclass
class DemoOptions:
    out: Path = Path("synthvoc_demo")
    minutes: float = 10.0
    data: Path | None = None  # SynthVOC folder (cached); default ~/.cache/groupvit/synthvoc-<seed>
    recipe: str = "fast"  # a RECIPES name; the fields it sets that are None below are taken from it
    baseline: str | None = None  # "vit": no grouping, same losses
    soft_assignment: bool = False
    multi_label: bool = True
    stages: int | None = None  # 1 or 2 grouping stages
    noun_loss: str | None = None  # "pooled" (the paper) or "max_token"
    grouping_init: str | None = None  # "reference" or "fan_in" (a variant: see VisionConfig.grouping_init)
    loss: str | None = None  # "softmax" (the paper) or "sigmoid" (SigLIP; TrainConfig.loss)
    noun_positives: str | None = None  # "own" (the paper) or "shared" (TrainConfig.noun_positives)
    deep_noun_loss: float | None = None  # weight of the noun loss on the tokens before grouping (0: off)
    deep_noun_decay: bool | None = None  # decay that weight linearly to zero over the run
    mosaic_loss: float | None = None  # weight of the losses on 2x2 mosaics of the batch (0: off; TrainConfig)
    noun_templates: str | None = None  # "full" (CLIP's 80, the paper) or "simple" (TrainConfig.noun_templates)
    text_pool: str | None = None  # "eot" (the paper) or "max" (TextConfig.pool)
    in_memory: bool | None = None  # training scenes decoded once into memory (TrainConfig.in_memory)
    drop_boilerplate_nouns: bool = False  # a variant: no prompts from nouns.BOILERPLATE_WORDS
    seed: int = 0
    train_scenes: int = 20_000
    val_scenes: int = 500
    workers: int = dataclasses.field(default_factory=usable_cores)  # generation, noun tagging
    config: str | Path | None = None  # YAML file or packaged name (synthvoc_gpu): sections over the preset's
    overrides: tuple[str, ...] = ()  # key=value for the training config
    scene: tuple[str, ...] = ()  # key=value for SceneOptions, over the preset's `scene` section
    init: str | None = None  # fine-tune these weights (a name or path load_model reads) instead of random ones
    vocabulary: str = "voc"  # the classes trained on and scored: voc, or novel (20 classes VOC lacks)
    replay: float = REPLAY  # with vocabulary novel: the share of VOC scenes among the training scenes

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        if self.vocabulary not in ("voc", "novel"):
            raise ValueError(f"vocabulary must be voc or novel, got {self.vocabulary!r}")
        if not 0 <= self.replay < 1:
            raise ValueError(f"replay is a share of the training scenes, 0 <= replay < 1; got {self.replay}")
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    def departures(self) -> dict:
        """The options that differ from the paper's recipe (none for `--recipe paper` without flags)."""
        paper = RECIPES["paper"]
        changed = {key: getattr(self, key) for key in paper if getattr(self, key) != paper[key]}
        return changed | {
            key: getattr(self, key) for key, paper in PAPER_VARIANT.items() if getattr(self, key) != paper
        }


def default_data_dir(seed: int, scene: SceneOptions) -> Path:
    """~/.cache/groupvit/synthvoc-SEED, with a digest of the scene options when they are not the defaults, so
    datasets of different difficulty are cached side by side."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "groupvit"
    if scene == SceneOptions():
        return cache / f"synthvoc-{seed}"
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(scene), sort_keys=True).encode()).hexdigest()[:8]
    return cache / f"synthvoc-{seed}-{digest}"


def merge_sections(base: dict, update: dict) -> dict:
    """`base` with `update`'s values, nested dicts merged key by key (so a file may give only what it changes)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            merge_sections(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _demo_configs_dir():
    from importlib import resources

    return resources.files("groupvit") / "configs" / "demo"


def packaged_demo_configs() -> list[str]:
    """Names of the demo configs shipped in groupvit/configs/demo/, usable as `--config NAME`. They sit apart from
    the model presets (groupvit/configs/*.yaml) because they only change parts of the synthvoc preset."""
    return sorted(p.name.removesuffix(".yaml") for p in _demo_configs_dir().iterdir() if p.name.endswith(".yaml"))


def read_demo_config(config: str | Path) -> str:
    """The text of a demo config: a YAML file, or the name of a packaged one (`synthvoc_gpu`)."""
    if os.path.lexists(config):
        return input_file(config, "--config", MAX_CONFIG_BYTES).read_text()
    if str(config) in packaged_demo_configs():
        return (_demo_configs_dir() / f"{config}.yaml").read_text()
    raise FileNotFoundError(f"--config {config}: no such file, and not a packaged demo config "
                            f"({', '.join(packaged_demo_configs())})")  # fmt: skip


def preset_sections(config: str | Path | None = None) -> tuple[dict, dict, dict]:
    """The preset's model, train and scene sections, with those of `config` (a YAML file or the name of a
    packaged demo config) over them."""
    from importlib import resources

    data = parse_yaml((resources.files("groupvit") / "configs" / f"{PRESET}.yaml").read_text(), f"preset {PRESET}")
    if config is not None:
        mine = parse_yaml(read_demo_config(config), str(config)) or {}
        if not isinstance(mine, dict) or not all(isinstance(v, dict) for v in mine.values()):
            raise ValueError(f"{config}: expected sections of key: value settings, e.g. 'train: {{batch_size: 256}}'")
        check_sections(mine, config)
        data = merge_sections(data, mine)
    model, train = data["model"], data["train"]
    sizes = {"model.vision.image_size": model["vision"]["image_size"], "train.image_size": train["image_size"],
             "train.eval_short_side": train["eval_short_side"]}  # fmt: skip
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{config or PRESET}: image sizes disagree ({sizes}); the demo trains and scores at one size")
    return model, train, data.get("scene", {})


def scene_options(section: dict, overrides: Sequence[str] = ()) -> SceneOptions:
    """SceneOptions from the preset's scene section and key=value overrides (values read as YAML)."""
    return dataclass_from_dict(SceneOptions, section, overrides, what="scene options")


def variant_model(model: dict, options: DemoOptions) -> dict:
    """The preset's model config with the requested comparison and recipe applied."""
    model = json.loads(json.dumps(model))  # deep copy
    vision = model["vision"]
    if options.baseline == "vit":  # the same number of transformer blocks, no grouping
        vision.update(depths=[sum(vision["depths"])], num_group_tokens=[0], num_output_groups=[])
    elif options.baseline is not None:
        raise ValueError(f"unknown baseline {options.baseline!r}; the one baseline is 'vit'")
    if options.baseline is None and options.stages == 1:  # one grouping stage, its blocks after it (a ViT has none)
        depths, groups = vision["depths"], vision["num_group_tokens"]
        vision.update(depths=[depths[0], sum(depths[1:])], num_group_tokens=[groups[0], 0],
                      num_output_groups=[vision["num_output_groups"][0]])  # fmt: skip
    elif options.stages not in (1, 2):
        raise ValueError(f"stages must be 1 or 2, got {options.stages}")
    if options.soft_assignment:
        vision.update(hard_assignment=False, gumbel=False)
    vision["grouping_init"] = options.grouping_init
    model["text"]["pool"] = options.text_pool
    if options.loss == "sigmoid":  # SigLIP's initial temperature (10) and biases (-10), as open_clip
        model.update(logit_bias=True, logit_scale_init=math.log(10))
    if options.deep_noun_loss:
        model["patch_head"] = True
    return model


def prepare_data(options: DemoOptions, scene: SceneOptions, root: Path | None = None,
                 train: int | None = None) -> tuple[Path, str]:  # fmt: skip
    """Generate SynthVOC (cached) in `root` (default: --data or the cache) with `train` training scenes (default:
    --train-scenes) and tag its captions' nouns once; returns (root, training shard pattern; '' without scenes)."""
    from filelock import FileLock, Timeout

    from .data.nouns import prepare_nouns
    from .data.synthvoc import SynthVOCSpec, generate, train_shards
    from .training.data import expand_shards

    root = Path(root or options.data or default_data_dir(options.seed, scene))
    train = options.train_scenes if train is None else train
    spec = SynthVOCSpec(seed=options.seed, train=train, val=options.val_scenes, scene=scene)
    tagged = root / "train_nouns"
    root.parent.mkdir(parents=True, exist_ok=True)
    # One process prepares a folder at a time: two demos started together on one cache would otherwise delete
    # each other's half-tagged shards. The second waits, then finds the folder ready.
    lock = FileLock(root.parent / f".{root.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process preparing {root} ...", flush=True)
        lock.acquire()
    try:
        if generate(root, spec, workers=options.workers):
            shutil.rmtree(tagged, ignore_errors=True)  # nouns of the previous scenes
        if train:
            shards = expand_shards(train_shards(root / "train", spec))
            prepare_nouns(shards, tagged, num_workers=options.workers, skip_existing=True)
    finally:
        lock.release()
    return root, train_shards(tagged, spec) if train else ""


def prepare_novel_data(options: DemoOptions, scene: SceneOptions, voc: Path) -> tuple[str, Path, Path]:
    """The data of `--vocabulary novel`: its scenes, with the share `replay` of the training scenes taken from the
    VOC folder `voc` (the first of its tagged shards), and a 40-class split of both vocabularies. Returns (training
    shards, the novel folder's VOC-layout root, the combined one's). With --data D: D/novel and D/combined."""
    from .data.synthvoc import SynthVOCSpec, train_shards, voc_root

    novel, combined = (dataclasses.replace(scene, vocabulary=v) for v in ("novel", "combined"))
    folders = {v: Path(options.data) / v if options.data else None for v in ("novel", "combined")}
    replayed = round(options.replay * options.train_scenes)
    novel_root, shards = prepare_data(options, novel, folders["novel"], options.train_scenes - replayed)
    combined_root, _ = prepare_data(options, combined, folders["combined"], 0)
    if replayed:  # whole shards: the share is exact when it is a multiple of the shard size
        spec = SynthVOCSpec(train=max(replayed, SynthVOCSpec.shard_size))
        shards += "::" + train_shards(voc / "train_nouns", spec)
    return shards, voc_root(novel_root), voc_root(combined_root)


def scene_file(index: int) -> str:
    """The name of validation scene `index`, as in SynthVOC's VOC layout (JPEGImages/val_000003.jpg)."""
    return f"val_{index:06d}.jpg"


def write_scenes(options: DemoOptions, count: int) -> list[Path]:
    """The first `count` validation scenes of the demo's SynthVOC (its seed and scene options) as JPEG files in
    `options.out`, with captions.txt, without generating the rest or training: pictures to try `groupvit segment
    --checkpoint synthvoc` on. Byte for byte the files of the generated val split, which the scores are on."""
    from .data.synthvoc import encode_jpeg, make_scene
    from .io import atomic_write

    scene = scene_options(preset_sections(options.config)[2], options.scene)
    out = Path(options.out)
    paths, captions = [], []
    for i in range(count):
        made = make_scene(options.seed, "val", i, scene)
        path = out / scene_file(i)
        atomic_write(path, lambda tmp, rgb=made.image: Path(tmp).write_bytes(encode_jpeg(rgb)))
        paths.append(path)
        captions.append(f"{path.name}\t{made.caption}\n")
    atomic_write(out / "captions.txt", lambda tmp: Path(tmp).write_text("".join(captions)))
    return paths


def run_demo(options: DemoOptions) -> dict:
    """Data, training for `options.minutes`, calibrated zero-shot evaluation, report. Returns results.json's dict.

    With `init`, the model is fine-tuned from those weights (FINETUNE_TRAIN) and scored before and after; with
    vocabulary novel, it is trained and scored on the 20 new classes, then also on VOC val and the 40-class split."""

    from .checkpoint import save_model
    from .data.nouns import BOILERPLATE_WORDS
    from .data.synthvoc import voc_root
    from .evaluation.datasets import load_dataset
    from .evaluation.metrics import prompt_similarity
    from .factory import load_model
    from .segmentation import class_text_embeddings
    from .training.config import TrainConfig
    from .training.loop import train

    model_section, train_section, scene_section = preset_sections(options.config)
    scene = scene_options(scene_section, options.scene)
    model_section = variant_model(model_section, options)
    before = None
    if options.init:  # the architecture and its size come from the weights
        before = load_model(options.init)
        size = before.config.vision.image_size
        train_section = {**train_section, **FINETUNE_TRAIN, "image_size": size, "eval_short_side": size}
    # Bad settings fail now, not after minutes of data generation.
    GroupViTConfig.from_dict(model_section)
    TrainConfig.from_dict({**train_section, "mosaic_loss": options.mosaic_loss}, list(options.overrides))
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    root, shards = prepare_data(options, scene)
    voc = voc_root(root)
    scored, dataset, combined = voc, "voc", None  # the VOC-layout folder trained for and scored, and its loader
    if options.vocabulary == "novel":
        shards, scored, combined = prepare_novel_data(options, scene, root)
        dataset = "synthvoc"  # its class names from the folder (groupvit.evaluation.datasets)
    if not options.init:
        (out / "model.yaml").write_text(yaml.safe_dump({"model": model_section}, sort_keys=False))
    cfg = TrainConfig.from_dict(
        {**train_section, "model": "" if options.init else str(out / "model.yaml"), "init": options.init or "",
         "data": shards, "minutes": options.minutes,
         "seed": options.seed, "eval_root": str(scored), "eval_dataset": dataset, "noun_loss": options.noun_loss,
         "loss": options.loss,
         "noun_positives": options.noun_positives, "deep_noun_loss": options.deep_noun_loss,
         "deep_noun_decay": options.deep_noun_decay, "mosaic_loss": options.mosaic_loss,
         "noun_templates": options.noun_templates,
         "in_memory": options.in_memory,
         "noun_stopwords": list(BOILERPLATE_WORDS) if options.drop_boilerplate_nouns else [],
         "multi_label": train_section["multi_label"] if options.multi_label else 0},
        list(options.overrides),
    )  # fmt: skip
    summary = train(cfg, out)
    model = load_model(out / "model.safetensors")
    size = cfg.image_size
    result = evaluate_demo(model, scored, size, dataset)
    val = load_dataset(dataset, scored, "val")
    # Run later as it was scored here (groupvit.settings): `groupvit segment --checkpoint OUT/model.safetensors`.
    how = f"fine-tuned from {options.init}" if options.init else "trained"
    about = (f"GroupViT {how} by `groupvit demo` on SynthVOC captions ({options.vocabulary} classes, "
             f"{options.recipe} recipe, {summary['steps']} steps)")  # fmt: skip
    model.test_settings = synthvoc_test_settings(size, result["background_threshold"], val.class_names, about,
                                                 init=options.init or "")  # fmt: skip
    save_model(model, out / "model.safetensors")
    shipped = shipped_model()
    scenes = json.loads((scored / "scenes.json").read_text())
    by_objects: dict[int, list[int]] = {}
    for item in result.pop("per_image"):
        by_objects.setdefault(len(scenes[item["id"]]["objects"]), []).append(item["groups_in_use"])
    result.update(
        init=options.init,
        vocabulary=options.vocabulary,
        minutes=summary["minutes"],
        images_seen=summary["images_seen"],
        steps=summary["steps"],
        recipe=options.recipe,
        variant={"baseline": options.baseline, "soft_assignment": options.soft_assignment,
                 "multi_label": options.multi_label, "drop_boilerplate_nouns": options.drop_boilerplate_nouns,
                 **{key: getattr(options, key) for key in RECIPES["paper"]},
                 "config": str(options.config) if options.config else None},
        departures_from_paper=options.departures(),
        scene=dataclasses.asdict(dataclasses.replace(scene, vocabulary=options.vocabulary)),
        groups_in_use_by_objects={str(k): float(np.mean(v)) for k, v in sorted(by_objects.items())},
        prompt_similarity=prompt_similarity(class_text_embeddings(model, val.class_names), val.class_names),
        curve=summary["eval_history"],
    )  # fmt: skip
    if options.vocabulary == "novel":
        result["replay"] = options.replay
    if before is not None:
        result["before"] = before_scores(before, scored, size, dataset)
    if combined is not None:
        result.update(forgetting(model, voc, combined))
        if before is not None:
            result["before"].update(forgetting(before, voc, combined))
    if shipped is not None:
        result["shipped_model"] = score_shipped(shipped, val)
    grid_before = (before, f"before: {options.init}") if before is not None else (shipped, f"shipped {SHIPPED}")
    result["report_grid"] = write_report(model, val, scenes, result, out, result["background_threshold"], size,
                                         shipped=grid_before[0], shipped_title=grid_before[1])  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def before_scores(model, root: Path, size: int, dataset: str) -> dict:
    """The scores `run_demo` reports, of the model a fine-tuning run started from: calibrated on calib as the
    fine-tuned model is."""
    scores = evaluate_demo(model, root, size, dataset)
    return {"miou": scores["miou"], "background_threshold": scores["background_threshold"],
            "oracle_miou": scores["oracle"]["miou"], "recognition": scores["recognition"],
            "per_class": scores["per_class"]}  # fmt: skip


def forgetting(model, voc: Path, combined: Path) -> dict:
    """What a model trained on the novel classes knows of the VOC ones: VOC val and the 40-class split, each at the
    settings recorded with the model (its threshold, calibrated on the novel classes' calib)."""
    from .evaluation.datasets import load_dataset

    scores = {name: score_at_own_settings(model, load_dataset(kind, root, "val"))
              for name, kind, root in (("voc", "voc", voc), ("combined", "synthvoc", combined))}  # fmt: skip
    return {"voc_miou": scores["voc"]["miou"], "voc_recognition": scores["voc"]["recognition"]["pooled"],
            "combined_miou": scores["combined"]["miou"],
            "combined_recognition": scores["combined"]["recognition"]["pooled"]}  # fmt: skip


def shipped_model():
    """The model shipped in the package, or None where this copy of the package has none (a source checkout
    without the weights file)."""
    from .errors import DownloadError
    from .factory import load_model

    try:
        return load_model(SHIPPED)
    except DownloadError:
        return None


def synthvoc_test_settings(size: int, threshold: float, class_names: Sequence[str], about: str,
                           init: str = "") -> TestSettings:  # fmt: skip
    """How a SynthVOC model is run, as the demo scores it: the whole image at its training size, the threshold
    chosen on calib, the classes of its vocabulary; `init`, the weights it was fine-tuned from."""
    return TestSettings(short_side=size, mode="whole", crop_size=size, stride=size // 2, background_threshold=threshold,
                        classes=tuple(class_names), about=about, trained_on="synthvoc", init=init)  # fmt: skip


def score_at_own_settings(model, dataset, limit: int | None = None) -> dict:
    """Results of `evaluate_segmentation` at the model's recorded test settings, with the oracle and recognition."""
    from .evaluation.run import evaluate_segmentation

    settings = model.test_settings
    return evaluate_segmentation(model, dataset, background_threshold=settings.background_threshold,
                                 naming=settings.naming, limit=limit, oracle=True, recognition=True)  # fmt: skip


def score_shipped(model, val) -> dict:
    """The shipped model on the same validation scenes, at the settings recorded with it."""
    settings = model.test_settings
    scores = score_at_own_settings(model, val)
    return {
        "name": SHIPPED,
        "about": settings.about,
        "background_threshold": settings.background_threshold,
        "miou": scores["miou"],
        "oracle_miou": scores["oracle"]["miou"],
        "recognition": scores["recognition"],
    }


def evaluate_demo(model, voc: Path, size: int, dataset: str = "voc", calib_images: int = 100) -> dict:
    """Score a trained model on SynthVOC's VOC-layout folder. The background threshold and the naming variant
    are chosen on the labelled 'calib' split, never on the reported 'val'; val is then encoded once and named
    with the calibrated threshold (the headline), the official 0.95 and the best naming variant. Recognition
    comes from the same pass: are the classes recognised at all? It tells weak naming (low) from weak grouping
    (high, with a low mIoU). Returns the headline's results with `calibration`, `miou_at_official_threshold`
    and `naming_choice`."""
    from .evaluation.datasets import load_dataset
    from .evaluation.run import DATASET_DEFAULT, CalibrationImages, choose_naming, evaluate_namings

    grouped = any(model.config.vision.num_group_tokens)  # a plain ViT has no groups to split hierarchically
    namings = {name: n for name, n in NAMINGS.items() if grouped or n.hierarchical is None}
    calib = CalibrationImages(model, load_dataset(dataset, voc, "calib"), calib_images, "whole", members=grouped,
                              short_side=size)  # fmt: skip
    best, choice = choose_naming(calib, namings, DEMO_THRESHOLDS)
    threshold = choice["official"]["threshold"]
    options = {"calibrated": (threshold, NAMINGS["official"]), "official": (DATASET_DEFAULT, NAMINGS["official"]),
               "best": (choice[best]["threshold"], NAMINGS[best])}  # fmt: skip
    results = evaluate_namings(model, load_dataset(dataset, voc, "val"), options, "whole", short_side=size,
                               per_image=True, oracle=True, recognition=True)  # fmt: skip
    return {
        **results["calibrated"],
        "calibration": {str(t): m for t, m in choice["official"]["curve"].items()},
        "miou_at_official_threshold": results["official"]["miou"],
        "naming_choice": {"chosen": best, "naming": NAMINGS[best].to_dict(), "threshold": choice[best]["threshold"],
                          "calib_miou": {k: v["miou"] for k, v in choice.items()}, "val_miou": results["best"]["miou"]},
    }  # fmt: skip


def largest_object_named(prediction: np.ndarray, target: np.ndarray) -> tuple[int, float]:
    """The scene's largest object class (most ground-truth pixels, background 0 and ignore 255 left out) and the
    IoU of the prediction with it; the report grid's check counts the scenes where that IoU reaches a bar (the
    largest object segmented and named correctly). (-1, 0.0) for a scene without objects."""
    counts = np.bincount(target[(target != 0) & (target != IGNORE_INDEX)].ravel(), minlength=1)
    if counts.sum() == 0:
        return -1, 0.0
    largest = int(counts.argmax())
    valid = target != IGNORE_INDEX
    truth, predicted = (target == largest) & valid, (prediction == largest) & valid
    return largest, float((truth & predicted).sum() / (truth | predicted).sum())


def write_report(model, dataset, scenes: dict, result: dict, out: Path, threshold: float, size: int,
                 images: int = 12, shipped=None, min_iou: float = 0.5, shipped_title: str = f"shipped {SHIPPED}",
                 ) -> dict:  # fmt: skip
    """report.html: the numbers, the mIoU curve, and a grid of image / ground truth / prediction / group maps;
    with `shipped` (the model shipped in the package, or the one a fine-tuning run started from: `shipped_title`),
    its prediction beside the fresh model's. Returns the grid's check: in how many of its scenes the largest object
    is segmented and named correctly (IoU >= `min_iou`)."""
    from .segmentation import ZeroShotSegmenter
    from .viz import comparison_grid, group_maps_image, result_grid

    segmenter = ZeroShotSegmenter(model, dataset.class_names, threshold, mode="whole", short_side=size)
    other = None if shipped is None else ZeroShotSegmenter(shipped, dataset.class_names, group_maps=False)
    rows, groups, largest, ious = [], [], [], []
    for i in range(min(images, len(dataset))):
        image_id, image, target = dataset[i]
        seg = segmenter(image)
        label, iou = largest_object_named(seg.labels, target)
        ious.append(iou)
        largest.append({"id": image_id, "class": dataset.label_names[label] if label >= 0 else None,
                        "iou": round(100 * iou, 1)})  # fmt: skip
        rows.append((image, target, seg.labels, *([] if other is None else [other(image).labels])))
        groups.append([group_maps_image(image, seg.group_maps)])
    titles = ("image", "ground truth", "this run", *([] if other is None else [shipped_title]))
    names = [dataset.samples[i][0] for i in range(len(rows))]
    captions = [f"{name}: {scenes[name]['caption']}" for name in names]
    comparison_grid(rows, dataset.label_names, titles, captions=captions).save(out / "report_grid.png")
    result_grid(groups, captions=captions).save(out / "report_groups.png")
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'absent' if iou is None else f'{iou:.1f}'}</td></tr>"
        for name, iou in result["per_class"].items()
    )
    check = {"scenes": len(rows), "largest_object_correct": sum(iou >= min_iou for iou in ious),
             "min_iou": min_iou, "per_scene": largest}  # fmt: skip
    caption_list = "".join(f"<li>{html.escape(caption)}</li>" for caption in captions)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>groupvit demo</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:0.1em 1em;text-align:left}}
table{{border-collapse:collapse;margin:0.5em 0}}tr:nth-child(even){{background:#f2f2f2}}img{{max-width:100%}}
</style></head><body>
<h1>SynthVOC zero-shot segmentation</h1>
<p>Trained on captions only for {result["minutes"]:.1f} minutes ({result["steps"]} steps, {result["images_seen"]}
image-caption pairs); recipe <b>{html.escape(result["recipe"])}</b>.</p>
<h2>Results on {result["images"]} validation scenes</h2>
{results_table(result, threshold)}
{finetune_paragraph(result)}
{shipped_paragraph(result.get("shipped_model"), in_grid=not result.get("init"))}
<h2>Departures from the paper's recipe</h2>
{departures_table(result["departures_from_paper"])}
{curve_svg(result["curve"])}
<h2>Validation scenes</h2>
<p>The largest object segmented and named correctly (IoU >= {min_iou:.1f}) in <b>{check["largest_object_correct"]} of
{check["scenes"]}</b> scenes below.</p>
<img src="report_grid.png" alt="image, ground truth and prediction">
<img src="report_groups.png" alt="final groups of every stage">
<ol start="0">{caption_list}</ol>
<h2>Per class IoU</h2><table>{table}</table></body></html>"""
    (out / "report.html").write_text(page)
    return check


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small HTML table, every cell escaped."""

    def row(cells: Sequence[object], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    return f"<table>{row(header, 'th')}{''.join(row(r, 'td') for r in rows)}</table>"


def results_table(result: dict, threshold: float) -> str:
    """The report's numbers, one per row, each saying what it measures."""
    recognition, naming = result["recognition"], result["naming_choice"]
    by_objects = ", ".join(
        f"{n} object{'s' * (n != '1')}: {g:.2f}" for n, g in result["groups_in_use_by_objects"].items()
    )
    rows = [
        ("mIoU (21 classes with background)", f"{result['miou']:.2f}",
         f"background threshold {threshold}, chosen on the calib split"),
        ("mIoU at the official threshold 0.95", f"{result['miou_at_official_threshold']:.2f}", ""),
        ("mIoU of oracle-named groups", f"{result['oracle']['miou']:.2f}",
         "each group named by the class it overlaps most: grouping apart from naming"),
        ("Recognition, pooled embedding / best group",
         f"{recognition['pooled']:.1f} % / {recognition['best_group']:.1f} %",
         "each scene's classes among its top-ranked classes"),
        ("Final groups in use per image", f"{result['groups_in_use']:.2f}", by_objects),
        (f"mIoU with the naming chosen on calib: {naming['chosen']}", f"{naming['val_miou']:.2f}",
         f"threshold {naming['threshold']}, among {', '.join(NAMINGS)} (a protocol variant; groupvit.naming)"),
    ]  # fmt: skip
    return html_table(("", "value", "how"), rows)


def departures_table(departures: dict) -> str:
    if not departures:
        return "<p>None: this run is the paper's recipe.</p>"
    paper = RECIPES["paper"] | PAPER_VARIANT
    return html_table(("option", "this run", "paper"), [(k, v, paper[k]) for k, v in departures.items()])


def finetune_paragraph(result: dict) -> str:
    """What fine-tuning changed (the model before, in the grid's last column) and what was forgotten of VOC."""
    parts = []
    if result.get("init"):
        b = result["before"]
        parts.append(f"Fine-tuned from <code>{html.escape(result['init'])}</code> on the {result['vocabulary']} "
                     f"classes. Before fine-tuning, calibrated the same way: <b>mIoU {b['miou']:.2f}</b>, recognition "
                     f"{b['recognition']['pooled']:.1f} %; its predictions are the grid's last column.")  # fmt: skip
    if "voc_miou" in result:
        before = result.get("before", {})

        def was(key: str) -> str:
            return f" (before: {before[key]:.2f})" if key in before else ""

        parts.append(f"Trained on the {result['vocabulary']} classes with {100 * result['replay']:.0f} % of the "
                     f"scenes from VOC (replay). What it knows of VOC, at its recorded threshold: VOC val mIoU "
                     f"<b>{result['voc_miou']:.2f}</b>{was('voc_miou')}; the 40-class split (VOC and new) "
                     f"<b>{result['combined_miou']:.2f}</b>{was('combined_miou')}.")  # fmt: skip
    return f"<p>{' '.join(parts)}</p>" if parts else ""


def shipped_paragraph(scores: dict | None, in_grid: bool = True) -> str:
    if scores is None:
        return "<p>No model is shipped in this copy of the package to compare with.</p>"
    column = "; its predictions are the last column of the grid" if in_grid else ""
    return (
        f"<p>On the same scenes, the model shipped in the package (<code>{SHIPPED}</code>: "
        f"{html.escape(scores['about'])}) scores <b>mIoU {scores['miou']:.2f}</b> at the threshold recorded with "
        f"it ({scores['background_threshold']}), oracle-named {scores['oracle_miou']:.2f}, recognition "
        f"{scores['recognition']['pooled']:.1f} %{column}.</p>"
    )


def curve_svg(history: list[dict], width: int = 480, height: int = 200) -> str:
    """An inline SVG chart of validation mIoU against training minutes: a marker and its value per evaluation, joined
    by a line, on axes from 0 (so a short run's one or two evaluations show too)."""
    if not history:
        return "<p>No validation mIoU was measured during training (eval_every=0).</p>"
    top_x = max(h["minutes"] for h in history) or 1.0
    top_y = max(100.0, *(h["miou"] for h in history))
    points = [(40 + (width - 50) * h["minutes"] / top_x, height - 20 - (height - 30) * h["miou"] / top_y, h)
              for h in history]  # fmt: skip
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
    marks = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="steelblue"/><text x="{x - 8:.1f}" y="{y - 6:.1f}" '
        f'font-size="10">{h["miou"]:.1f}</text>'
        for x, y, h in points
    )
    steps = (
        f"at step {history[0]['step']}"
        if len(history) == 1
        else f"at steps {', '.join(str(h['step']) for h in history)}"
    )
    return (
        f"<h2>Validation mIoU (first 200 scenes, threshold 0.95) during training</h2><p>Measured {steps}.</p>"
        f'<svg width="{width}" height="{height}"><line x1="40" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" '
        f'stroke="black"/><line x1="40" y1="10" x2="40" y2="{height - 20}" stroke="black"/><polyline points="{line}" '
        f'fill="none" stroke="steelblue" stroke-width="2"/>{marks}<text x="36" y="{height - 4}" font-size="11">0</text>'
        f'<text x="{width - 60}" y="{height - 4}" font-size="11">{top_x:.1f} min</text><text x="4" y="16" '
        f'font-size="11">{top_y:.0f}</text><text x="24" y="{height - 20}" font-size="11">0</text></svg>'
    )
