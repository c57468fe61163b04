"""The `groupvit` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import cli_options
from .checks import (
    MAX_COUNT,
    MAX_CROP_BATCH,
    MAX_GRID,
    MAX_MINUTES,
    MAX_SCENES,
    MAX_SHORT_SIDE,
    MAX_TRAIN_BATCH,
    MAX_WORKERS,
    at_most,
    checkpoint_target,
    input_files,
    output_dir,
    output_file,
    port,
    say_limits,
    share,
    unit_float,
    unit_floats,
    weight,
)
from .config import GROUPING_INITS, list_presets
from .data.synthvoc import SynthVOCSpec
from .errors import describe, exit_code
from .evaluation.datasets import DATASETS, convert_coco_object
from .export import MAX_OPSET, OPSET, export_onnx
from .factory import convert_model, describe_model
from .image import MAX_PIXELS
from .predict import classify_files, segment_files, segment_targets
from .pretrained import download_report, table
from .recipes import FINETUNE_TRAIN, REPLAY
from .runtime import EXPORT_FILES
from .segmentation import MAX_CLASSES, MAX_SEGMENT_CLASSES, check_class_names
from .settings import Requested


def _convert(args: argparse.Namespace) -> None:
    checkpoint_target(args.dst, args.to, args.overwrite)
    path = convert_model(args.src, args.dst, layout=args.to, dtype=args.dtype, source=args.source)
    print(f"wrote {path} ({args.to} layout)")


def _export(args: argparse.Namespace) -> None:
    output_dir(args.out, names=EXPORT_FILES, overwrite=args.overwrite)  # refused before the weights are read
    opset = args.opset or OPSET
    out = export_onnx(args.weights, args.out, opset=opset, overwrite=args.overwrite, source=args.source,
                      quantize=args.quantize)  # fmt: skip
    print(f"wrote {', '.join(EXPORT_FILES)} to {out} (ONNX opset {opset}); run it with --checkpoint {out}")


def _info(args: argparse.Namespace) -> None:
    print(describe_model(args.checkpoint or args.model, preset=args.preset, source=args.source))


def _segment(args: argparse.Namespace) -> int:
    class_names = None if args.classes is None else check_class_names(args.classes)
    naming = cli_options.naming(args)
    images, out = segment_targets(args.images, args.out, args.overwrite)
    model = cli_options.model_choice(args)
    requested = Requested(short_side=args.short_side, mode=args.mode, background_threshold=args.background_threshold,
                          dataset=args.dataset, background=not args.no_background, naming=naming)  # fmt: skip
    failures = segment_files(model.load(), images, out, class_names, requested, templates=args.templates,
                             batch_size=args.batch_size, autocast_dtype=model.autocast_dtype(),
                             checkpoint=model.name())  # fmt: skip
    return 1 if failures else 0


def _classify(args: argparse.Namespace) -> int:
    given = None if args.classes is None else check_class_names(args.classes, unique=False, limit=MAX_CLASSES)
    images = input_files(args.images)
    failures = classify_files(cli_options.model_choice(args).load(), images, given, templates=args.templates,
                              short_side=args.short_side, top=args.top)  # fmt: skip
    return 1 if failures else 0


def _train(args: argparse.Namespace) -> None:
    from .training.loop import RUN_FILES, train_from_config

    again = "pass --resume to continue that run, --overwrite to start again, or choose another folder"
    output_dir(args.out, names=RUN_FILES, overwrite=args.overwrite or args.resume, hint=again)
    train_from_config(args.config, args.out, args.overrides, resume=args.resume, data=args.data, init=args.init,
                      steps=args.steps, batch_size=args.batch_size, save_every=args.save_every)  # fmt: skip


def _prepare_nouns(args: argparse.Namespace) -> None:
    from .data.nouns import prepare_nouns
    from .training.data import expand_shards

    shards = expand_shards(args.shards)
    output_dir(args.out, names=[Path(s).name for s in shards] + ["nouns.json"], overwrite=True)  # special files only
    stats = prepare_nouns(shards, args.out, tagger=args.tagger, num_workers=args.workers,
                          skip_existing=args.skip_existing)  # fmt: skip
    print(json.dumps(stats.as_dict(), indent=2))


def _eval(args: argparse.Namespace) -> None:
    from .evaluation.run import evaluate_benchmark

    if args.out:
        output_file(args.out, overwrite=args.overwrite)
    naming = None if args.dataset == "imagenet" else cli_options.naming(args)
    model = cli_options.model_choice(args)
    evaluate_benchmark(model, args.dataset, args.root, split=args.split, out=args.out, templates=args.templates,
                       background_threshold=args.background_threshold, naming=naming,
                       calibrate_background=args.calibrate_background, calibration_split=args.calibration_split,
                       calibration_grid=args.calibration_grid, per_class_thresholds=args.per_class_thresholds,
                       limit=args.limit, oracle=args.oracle, recognition=args.recognition,
                       batch_size=args.batch_size, mode=args.mode, short_side=args.short_side)  # fmt: skip


def _convert_coco_object(args: argparse.Namespace) -> None:
    output_dir(args.out)
    written = convert_coco_object(args.stuff_root, args.out, split=args.split, image_dir=args.images)
    print(f"wrote {written} COCO-Object label maps under {Path(args.out) / 'annotations' / args.split}")


def _app(args: argparse.Namespace) -> None:
    from .serve import serve_app

    serve_app(args.checkpoint, host=args.host, port=args.port, device=args.device, random_init=args.random_init,
              source=args.source, short_side=args.short_side, max_pixels=args.max_pixels,
              max_classes=args.max_classes, max_upload_mb=args.max_upload_mb)  # fmt: skip


def _download(args: argparse.Namespace) -> None:
    print(download_report(args.name, args.source))


def _list(args: argparse.Namespace) -> None:
    print(table())


def _demo(args: argparse.Namespace) -> None:
    from .demo import DEMO_OUTPUTS, DemoOptions, run_demo, scene_outputs, write_scenes

    output_dir(args.out, names=scene_outputs(args.scenes_only) if args.scenes_only else DEMO_OUTPUTS,
               overwrite=args.overwrite)  # fmt: skip
    if args.data and not args.scenes_only:
        output_dir(args.data, "--data")
    # Each DemoOptions field is the flag of its name; a flag not given leaves the field's default.
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(DemoOptions)} | {
        "out": Path(args.out), "data": Path(args.data) if args.data else None, "multi_label": not args.no_multi_label,
        "scene": tuple(args.scene), "overrides": tuple(args.overrides)}  # fmt: skip
    options = DemoOptions(**{key: value for key, value in given.items() if value is not None})
    if args.scenes_only:
        write_scenes(options, args.scenes_only)
    else:
        run_demo(options)


DEBUG_HELP = "show the traceback of an error (also GROUPVIT_DEBUG=1)"
EXIT_CODES = ("exit codes: 0 done; 1 bad data (some inputs skipped or none usable) or a failed run; "
              "2 a usage error (options, paths, configs, checkpoints, outputs), reported before any work")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupvit", description=__doc__, epilog=EXIT_CODES)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="SynthVOC: train on captions only, then segment zero-shot (minutes on a CPU)")
    p.add_argument("--minutes", type=at_most(MAX_MINUTES, kind=float), default=10.0,
                   help="training time budget (default: 10)")  # fmt: skip
    p.add_argument(
        "--out", default="synthvoc_demo", help="results.json, report.html, checkpoint (default: synthvoc_demo)"
    )
    p.add_argument(
        "--data", help="SynthVOC folder, generated once and reused (default: ~/.cache/groupvit/synthvoc-SEED)"
    )
    p.add_argument("--config", help="YAML with model/train/scene sections over the packaged synthvoc preset's, key by "
                   "key, or a packaged one by name: synthvoc_gpu (a wider model for a GPU)")  # fmt: skip
    p.add_argument("--baseline", choices=["vit"], help="train a plain ViT with the same losses instead (no grouping)")
    p.add_argument("--soft-assignment", action="store_true", help="ablation: soft instead of hard Gumbel assignment")
    p.add_argument("--no-multi-label", action="store_true", help="ablation: image-text loss only")
    p.add_argument("--recipe", choices=["fast", "paper"], default="fast",
                   help="fast (default): what makes segmentation emerge in 10 CPU minutes; paper: the paper's recipe. "
                   "The flags below change single parts of it")  # fmt: skip
    p.add_argument("--stages", type=int, choices=[1, 2], help="grouping stages (paper: 2; fast: 1)")
    p.add_argument("--noun-loss", choices=["pooled", "max_token"],
                   help="noun loss on the pooled embedding (paper) or each noun's best token (fast)")  # fmt: skip
    p.add_argument("--grouping-init", choices=GROUPING_INITS,
                   help="grouping layers drawn as the paper (std 0.02: reference) or fan-in scaled (fast)")  # fmt: skip
    p.add_argument("--loss", choices=["softmax", "sigmoid"],
                   help="contrastive losses as the paper (softmax) or SigLIP's pairwise sigmoid (fast)")  # fmt: skip
    p.add_argument("--noun-positives", choices=["own", "shared"],
                   help="noun prompt positive for its own image (paper) or all whose caption has the noun")  # fmt: skip
    p.add_argument("--deep-noun-loss", type=weight, metavar="WEIGHT",
                   help="weight of a token-level noun loss on the patch tokens before grouping (paper: 0)")  # fmt: skip
    p.add_argument("--deep-noun-decay", action=argparse.BooleanOptionalAction,
                   help="decay the deep noun loss linearly to zero over the run")  # fmt: skip
    p.add_argument("--mosaic-loss", type=weight, metavar="WEIGHT",
                   help="weight of a loss on 2x2 mosaics of the batch: each quadrant's groups against its source "
                   "caption and nouns (MixReorg-style; paper: 0)")  # fmt: skip
    p.add_argument("--noun-templates", choices=["full", "simple"],
                   help="noun prompts drawn from CLIP's 80 templates (paper) or the one classes are named with, "
                   "'a photo of a {}.'")  # fmt: skip
    p.add_argument("--text-pool", choices=["eot", "max"],
                   help="text feature at the end-of-text token (paper) or the max over tokens")  # fmt: skip
    p.add_argument("--in-memory", action=argparse.BooleanOptionalAction,
                   help="decode the training scenes once into memory, not streamed from shards (fast)")  # fmt: skip
    p.add_argument("--drop-boilerplate-nouns", action="store_true",
                   help="no noun prompts from caption filler: 'photo', 'background', 'is'... (variant)")  # fmt: skip
    p.add_argument("--seed", type=at_most(2**31 - 1, least=0), default=0)
    p.add_argument("--train-scenes", type=at_most(MAX_SCENES), default=20_000, help="training scenes to generate")
    p.add_argument("--val-scenes", type=at_most(MAX_SCENES), default=500,
                   help="validation scenes to generate and score")  # fmt: skip
    p.add_argument("--calib-scenes", type=at_most(SynthVOCSpec.calib), default=100,
                   help="labelled calib scenes (of the 200 generated) the background threshold and naming are chosen "
                   "on (default 100)")  # fmt: skip
    p.add_argument("--workers", type=at_most(MAX_WORKERS),
                   help="processes for data generation and noun tagging (default: one per core)")  # fmt: skip
    p.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE",
                   help="scene generator option over the preset's, repeatable: max_clutter=0, max_objects=2, "
                        "object_scale=[0.45,0.75] (data cached per setting)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="fine-tune these weights (synthvoc: the shipped model) instead of training from random ones: "
                   f"the fast recipe at lr {FINETUNE_TRAIN['lr']:g} with {FINETUNE_TRAIN['warmup_steps']} warmup "
                   "steps; scored before and after")  # fmt: skip
    p.add_argument("--vocabulary", choices=["voc", "novel"], default="voc",
                   help="the classes trained on and scored: voc (default) or novel, 20 classes VOC lacks (banana, "
                   "hammer, guitar...; then VOC val and a 40-class split are scored too)")  # fmt: skip
    p.add_argument("--replay", type=share, metavar="SHARE",
                   help="with --vocabulary novel: the share of the training scenes taken from VOC, against "
                   f"forgetting (default {REPLAY:g})")  # fmt: skip
    p.add_argument("--scenes-only", type=at_most(MAX_SCENES), metavar="N",
                   help="only write the first N validation scenes as JPEGs (and captions.txt) to --out, to try "
                   "`groupvit segment --checkpoint synthvoc` on; no training")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="training config overrides as key=value, e.g. lr=2e-3")
    p.set_defaults(run=_demo)

    p = sub.add_parser("convert", help="convert an NVlabs .pth or transformers folder to another layout")
    p.add_argument("src", help="NVlabs .pth, transformers directory, our .safetensors, or released weights by name "
                   "(gcc_yfcc, gcc_redcaps, NAME@nvlabs, hf-hub:ORG/REPO)")  # fmt: skip
    cli_options.add_source_option(p)
    p.add_argument("dst", help="output path (.safetensors for ours, a directory for hf, .pth for nvlabs)")
    p.add_argument("--to", choices=["groupvit", "hf", "nvlabs"], default="groupvit", help="output layout")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="storage of ours (half the size in float16; read back as float32)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    p.set_defaults(run=_convert)

    p = sub.add_parser("export", help="export a model to ONNX, to run it on onnxruntime without PyTorch "
                       "(docs/deployment.md)")  # fmt: skip
    p.add_argument("weights", help="anything --checkpoint takes: synthvoc, gcc_yfcc, a .safetensors, an NVlabs .pth "
                   "or a transformers folder")  # fmt: skip
    cli_options.add_source_option(p)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="output format (default: onnx)")
    p.add_argument("--out", required=True, help="folder for vision.onnx, text.onnx and groupvit.json")
    p.add_argument("--opset", type=at_most(MAX_OPSET, least=OPSET), help=f"ONNX opset (default: {OPSET})")
    p.add_argument("--quantize", choices=["int8"], help="onnxruntime's dynamic int8 quantisation of the weights "
                   "(faster on CPU; its accuracy cost: docs/performance.md)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an export already in --out (default: refuse)")
    p.set_defaults(run=_export)

    p = sub.add_parser("info", help="print a model's configuration, parameter count and grouping shapes")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("model", nargs="?", help="weights, as --checkpoint takes them (synthvoc: the shipped model), "
                      "or a model YAML config")  # fmt: skip
    what.add_argument("--checkpoint", help=cli_options.CHECKPOINT_HELP)
    what.add_argument("--preset", help=f"an architecture with untrained weights, nothing downloaded: a preset "
                      f"({', '.join(list_presets())}) or a model YAML config")  # fmt: skip
    cli_options.add_source_option(p)
    p.set_defaults(run=_info)

    p = sub.add_parser("download", help="fetch released weights into the cache ahead of time and print where")
    p.add_argument("name", help="gcc_yfcc or gcc_redcaps (NVIDIA's, non-commercial licence), NAME@nvlabs, or "
                   "hf-hub:ORG/REPO[@REV]")  # fmt: skip
    cli_options.add_source_option(p)
    p.set_defaults(run=_download)

    p = sub.add_parser("list", help="released weights: names, sources, sizes, licences, and which are cached")
    p.set_defaults(run=_list)

    p = sub.add_parser("segment", help="segment images into the given class names (zero-shot)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--classes", help='comma-separated class names, e.g. "dog,grass,sky"; at most 255 (the label '
                   "PNG's palette), each cut to 77 text tokens, with a warning (default: the vocabulary the model "
                   "records, as the shipped synthvoc does)")  # fmt: skip
    p.add_argument("--out", default="segment_out", help="output folder (default: segment_out)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out (default: refuse)")
    cli_options.add_test_size_options(p)
    bg = p.add_mutually_exclusive_group()
    bg.add_argument("--background-threshold", type=unit_float,
                    help="background below this score, 0-1 (default: --dataset's, else the model's: VOC's 0.95 "
                    "for the released models, the calibrated one of the shipped synthvoc)")  # fmt: skip
    bg.add_argument("--no-background", action="store_true", help="no background class: every pixel gets a class")
    p.add_argument("--dataset", choices=["voc", "context", "coco_object"],
                   help="preset background threshold: voc 0.95, context 0.35, coco_object 0.95")  # fmt: skip
    p.add_argument("--templates", default="simple", choices=["simple", "subset", "full"])
    p.add_argument("--batch-size", type=at_most(MAX_CROP_BATCH), default=8, help="crops per encoder batch")
    cli_options.add_naming_options(p)
    cli_options.add_model_options(p)
    p.set_defaults(run=_segment)

    p = sub.add_parser("train", help="train GroupViT on image-caption pairs (webdataset shards or CSV/TSV)")
    p.add_argument("--config", help="a training YAML, e.g. configs/gcc_yfcc_30e.yaml or configs/synth_cpu.yaml")
    p.add_argument("--data", help="shards like 'cc3m/{000000..000436}.tar' (several joined with ::) or a CSV/TSV")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, model.safetensors, tensorboard/")
    p.add_argument("--init", metavar="WEIGHTS",
                   help=f"fine-tune: start from these weights ({cli_options.CHECKPOINT_HELP}); the architecture comes "
                   "from them; see docs/training.md for freeze and pretrained_lr_scale")  # fmt: skip
    p.add_argument("--steps", type=at_most(MAX_COUNT))
    p.add_argument("--batch-size", type=at_most(MAX_TRAIN_BATCH), dest="batch_size", help="per process")
    p.add_argument("--save-every", type=at_most(MAX_COUNT), dest="save_every")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (from checkpoint.prev.pt if that one is damaged)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="start again in an --out holding a run (default: refuse)")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. lr=1e-3 workers=2")
    p.set_defaults(run=_train)

    p = sub.add_parser("prepare-nouns", help="tag caption nouns once, into copies of webdataset shards")
    p.add_argument("shards", help="shards like 'cc3m/{000000..000436}.tar' (several joined with ::)")
    p.add_argument("--out", required=True, help="folder for the new shards (same names, plus nouns.json)")
    p.add_argument("--tagger", choices=["spacy", "pattern"], default="spacy")
    p.add_argument("--workers", type=at_most(MAX_WORKERS), default=1, help="parallel processes, one tagger each")
    p.add_argument("--skip-existing", action="store_true", help="leave shards already written alone")
    p.set_defaults(run=_prepare_nouns)

    p = sub.add_parser("eval", help="zero-shot segmentation mIoU on a standard benchmark (spec 5)")
    p.add_argument("--dataset", required=True, choices=[*DATASETS, "imagenet"])
    p.add_argument("--root", required=True, help="the dataset folder, e.g. VOCdevkit/VOC2012 or imagenet/val")
    p.add_argument("--split", default="val")
    cli_options.add_test_size_options(p)
    p.add_argument("--limit", type=at_most(MAX_COUNT), help="only the first N images")
    p.add_argument("--out", help="write the results as JSON (miou, pixel_accuracy, per_class in percent)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (default: refuse)")
    p.add_argument("--oracle", action="store_true", help="also score groups named by their majority GT class")
    p.add_argument("--recognition", action="store_true",
                   help="also score recognition: each image's classes among its top-ranked class prompts")  # fmt: skip
    p.add_argument("--background-threshold", type=unit_float, help="override the dataset's threshold (a variant)")
    p.add_argument("--calibrate-background", type=at_most(MAX_COUNT), metavar="N",
                   help="pick the threshold on N images of --calibration-split (a variant)")  # fmt: skip
    p.add_argument("--calibration-split", default="train")
    p.add_argument("--calibration-grid", type=unit_floats(MAX_GRID), metavar="T1,T2,...",
                   help="thresholds calibration tries (default 0.05 to 0.95 by 0.05); per-class calibration names "
                   "the images about 2 x classes x grid times, so a coarser grid is faster")  # fmt: skip
    p.add_argument("--per-class-thresholds", action="store_true",
                   help="with --calibrate-background: then one threshold per class, by coordinate ascent; stored in "
                   "the JSON's naming.class_thresholds, reusable with --background-thresholds (a variant)")  # fmt: skip
    p.add_argument("--templates", choices=["simple", "subset", "full"],
                   help="prompt templates (default: simple for segmentation, subset for imagenet)")  # fmt: skip
    p.add_argument("--batch-size", type=at_most(MAX_CROP_BATCH), default=8, help="crops per encoder batch")
    cli_options.add_naming_options(p)
    cli_options.add_model_options(p)
    p.set_defaults(run=_eval)

    p = sub.add_parser("convert-coco-object", help="make COCO-Object labels from COCO-Stuff-164k (spec 5.4)")
    p.add_argument("stuff_root", help="folder with stuffthingmaps_trainval2017/<split>/*.png (COCO-Stuff-164k)")
    p.add_argument("--out", required=True, help="COCO-Object root to write (annotations/<split>, images/<split>)")
    p.add_argument("--split", default="val2017")
    p.add_argument("--images", help="folder of the split's COCO images (default: STUFF_ROOT/images/<split>)")
    p.set_defaults(run=_convert_coco_object)

    p = sub.add_parser("classify", help="rank class names for whole images (zero-shot, ImageNet protocol)")
    p.add_argument("images", nargs="+")
    p.add_argument("--classes", help="comma-separated class names, at most 1000 (default: the vocabulary the model "
                   "records, as the shipped synthvoc does)")  # fmt: skip
    p.add_argument("--templates", default="subset", choices=["simple", "subset", "full"])
    p.add_argument("--top", type=at_most(MAX_CLASSES), default=5, help="classes listed per image (default: 5)")
    p.add_argument("--short-side", type=at_most(MAX_SHORT_SIDE), metavar="N",
                   help="resize images to this short side, then centre-crop the model's training size (default: "
                   "256 for the released 224-pixel models, as the protocol; 256/224 of the training size)")  # fmt: skip
    cli_options.add_model_options(p)
    p.set_defaults(run=_classify)

    p = sub.add_parser("app", help="a web page (Gradio) to segment photos into any words and see the groups")
    cli_options.add_weights_options(p, cli_options.CHECKPOINT_HELP + " (default: synthvoc, the small model shipped in "
                         "the package, trained on SynthVOC scenes)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=port, default=7860)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when a GPU is visible, else cpu")
    p.add_argument("--max-pixels", type=at_most(MAX_PIXELS), help="largest upload, in pixels (default: 40,000,000)")
    p.add_argument("--max-classes", type=at_most(MAX_SEGMENT_CLASSES),
                   help="most class names per request (default: 30)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=at_most(1024), help="largest upload, in MiB (default: 32)")
    p.add_argument("--short-side", type=at_most(MAX_SHORT_SIDE), metavar="N",
                   help="resize images to this short side (default: the model's test setting: 448 for the released "
                   "models, 64 for synthvoc)")  # fmt: skip
    p.set_defaults(run=_app)
    for p in sub.choices.values():  # --debug also after the subcommand; SUPPRESS keeps the top-level value
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    say_limits(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # `train` takes key=value overrides anywhere on the line, also between options.
    if args.command == "train" and all("=" in u and not u.startswith("-") for u in unknown):
        args.overrides += unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = args.debug or os.environ.get("GROUPVIT_DEBUG", "0") not in ("", "0")
    with warnings.catch_warnings(), _sigterm_interrupts():
        warnings.showwarning = _one_line_warning(args.command)
        try:
            return args.run(args) or 0
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM; the command says what it kept, if anything
            if debug:
                raise
            print(f"groupvit {args.command}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
            return 130
        except Exception as e:  # one line and an exit code instead of a traceback (groupvit/checks.py)
            if debug:
                raise
            print(f"groupvit {args.command}: error: {describe(e)}", file=sys.stderr)
            return exit_code(e)


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (kill, service managers) stops a command as Ctrl-C does: temporary files are removed and what is kept
    (a partial download) is said. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line_warning(command: str):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"groupvit {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    return show
