"""`groupvit demo`: the paper's claim on a laptop. Generate SynthVOC, train a small GroupViT on its captions only,
then segment the validation scenes zero-shot with the VOC protocol and write results.json and report.html.

The same command trains the paper's comparisons: a plain ViT with the same losses (`baseline='vit'`, segmented by
patch-to-text similarity), soft assignment, no multi-label loss, one grouping stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from .naming import Naming
from .recipes import FINETUNE_TRAIN, NAMINGS, PAPER_VARIANT, RECIPES, REPLAY, SHIPPED
from .report import write_report
from .settings import TestSettings

PRESET = "synthvoc"  # groupvit/configs/synthvoc.yaml: model and train sections
# The results a demo run writes in its --out; the command refuses a folder holding any without --overwrite.
DEMO_OUTPUTS = ("results.json", "report.html", "model.safetensors", "checkpoint.pt")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, as under taskset or Slurm)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    calib_scenes: int = 100  # labelled calib scenes (of the 200 generated) the threshold and naming are chosen on
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
    print(f"wrote {len(paths)} SynthVOC validation scenes and captions.txt to {options.out}")
    return paths


def scene_outputs(count: int) -> list[str]:
    """The files `write_scenes` writes."""
    return [scene_file(i) for i in range(count)] + ["captions.txt"]


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
    result = evaluate_demo(model, scored, size, dataset, options.calib_scenes)
    val = load_dataset(dataset, scored, "val")
    # Run later as it was scored here (groupvit.settings): `groupvit segment --checkpoint OUT/model.safetensors`.
    how = f"fine-tuned from {options.init}" if options.init else "trained"
    about = (f"GroupViT {how} by `groupvit demo` on SynthVOC captions ({options.vocabulary} classes, "
             f"{options.recipe} recipe, {summary['steps']} steps)")  # fmt: skip
    choice = result["naming_choice"]
    model.test_settings = synthvoc_test_settings(size, choice["threshold"], val.class_names, about,
                                                 NAMINGS[choice["chosen"]], init=options.init or "")  # fmt: skip
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
        result["before"] = before_scores(before, scored, size, dataset, options.calib_scenes)
    if combined is not None:
        result.update(forgetting(model, voc, combined))
        if before is not None:
            result["before"].update(forgetting(before, voc, combined))
    if shipped is not None:
        result["shipped_model"] = score_shipped(shipped, val)
    grid_before = (before, f"before: {options.init}") if before is not None else (shipped, f"shipped {SHIPPED}")
    result["report_grid"] = write_report(model, val, scenes, result, out, size, shipped=grid_before[0],
                                         shipped_title=grid_before[1])  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(result_lines(result, out))
    return result


def result_lines(result: dict, out: Path) -> str:
    """The lines `groupvit demo` ends with: the scores, the run's length and where the report is."""
    lines = []
    if "voc_miou" in result:
        before = f" (before fine-tuning: {result['before']['miou']:.2f})" if result["init"] else ""
        lines.append(f"new classes: val mIoU {result['miou']:.2f}{before}; VOC val mIoU {result['voc_miou']:.2f}, "
                     f"40-class split {result['combined_miou']:.2f}")  # fmt: skip
    classes = "" if result["vocabulary"] == "voc" else f" ({result['vocabulary']} classes)"
    lines.append(f"SynthVOC val mIoU {result['miou']:.2f}{classes} (background threshold "
                 f"{result['background_threshold']}), final groups in use {result['groups_in_use']:.2f}, recognition "
                 f"{result['recognition']['pooled']:.1f} %, after {result['minutes']:.1f} min / "
                 f"{result['images_seen']} images; report: {Path(out) / 'report.html'}")  # fmt: skip
    return "\n".join(lines)


def before_scores(model, root: Path, size: int, dataset: str, calib_images: int = 100) -> dict:
    """The scores `run_demo` reports, of the model a fine-tuning run started from: calibrated on calib as the
    fine-tuned model is."""
    scores = evaluate_demo(model, root, size, dataset, calib_images)
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
                           naming: Naming | None = None, init: str = "") -> TestSettings:  # fmt: skip
    """How a SynthVOC model is run, as the demo scores it: the whole image at its training size, the naming and
    threshold chosen on calib, the classes of its vocabulary; `init`, the weights it was fine-tuned from."""
    return TestSettings(short_side=size, mode="whole", crop_size=size, stride=size // 2, background_threshold=threshold,
                        naming=naming or Naming(), classes=tuple(class_names), about=about, trained_on="synthvoc",
                        init=init)  # fmt: skip


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
    refined = any(n.refine is not None for n in namings.values())
    calib = CalibrationImages(model, load_dataset(dataset, voc, "calib"), calib_images, "whole", members=grouped,
                              keep_pixels=refined, short_side=size)  # fmt: skip
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
                          "calib_scenes": min(calib_images, len(calib.dataset)),
                          "calib_miou": {k: v["miou"] for k, v in choice.items()}, "val_miou": results["best"]["miou"]},
    }  # fmt: skip
