"""`groupvit app`: a Gradio page to segment a photo into any words and see what each grouping stage gathered.

One model is loaded at start; class text embeddings are computed once per vocabulary and shared by all requests.
Uploads and result pictures live in a temporary folder made for this server and removed when it stops; the
handler reads nothing else. Without trained weights (no `--checkpoint`, or `--random-init PRESET`) the page says,
at the top, that it shows untrained random weights. Without `--checkpoint` it serves `synthvoc`, the small model
shipped in the package (trained on SynthVOC captions), with SynthVOC scenes as examples and its classes prefilled.
"""

from __future__ import annotations

import os

# Both libraries read these when imported. Without them, on a machine with no internet, gradio's analytics and
# hub lookups stall for about 10 s per call and at exit.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import copy
import functools
import html
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image

from .errors import describe
from .factory import load_model
from .image import load_image
from .model import GroupViT
from .naming import Naming, background_words
from .pretrained import PRETRAINED
from .pretrained import random_init as random_init_model
from .segmentation import ZeroShotSegmenter, check_class_names
from .settings import Requested, resolve_settings
from .viz import display_scale, enlarge_photo, group_maps_image, overlay, voc_palette

# Decoders the server will run on uploads, checked from the file's content, not its name (Pillow's EPS decoder,
# for one, calls Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
FILE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MODES = ("slide", "whole")
DEFAULT_PRESET = "gcc_yfcc"
DEFAULT_CHECKPOINT = "synthvoc"  # shipped in the package (groupvit.pretrained)
# scikit-image ships these photographs in its wheel, so the examples work offline.
EXAMPLES = {"astronaut": "person, flag, rocket, sky", "coffee": "cup, saucer, spoon, table", "chelsea": "cat, floor"}
# Validation scenes of SynthVOC shipped in the package, the examples for models trained on it (examples.json: each
# scene's file, caption and largest object).
SYNTHVOC_EXAMPLES = Path(str(resources.files("groupvit") / "assets" / "synthvoc"))
# Gradio draws its download and full-screen buttons over the top right corner of a picture: the overlay's legend
# starts below them.
BUTTONS_HEIGHT = 64


@dataclass(frozen=True)
class Limits:
    """What the page accepts; each limit is checked with a message shown on the page."""

    max_pixels: int = 40_000_000  # of an upload, read from its header before decoding
    max_classes: int = 30
    max_background_words: int = 64
    max_file_size: int = 32 * 2**20  # bytes; gradio refuses larger uploads before they reach the handler
    # The protocol resizes to a 448 short side anyway; larger photos are reduced first so that the pictures sent
    # back stay small.
    max_side: int = 1024


def load_app_model(
    checkpoint: str | None,
    device: str,
    random_init: str | None = None,
    source: str | None = None,
    short_side: int | None = None,
) -> tuple[GroupViT, str, str | None]:
    """(model, what it is, warning for the page or None). `checkpoint` is anything `load_model` reads (a file, a
    folder, weights by name); with `random_init`, untrained random weights of that preset; with neither, the
    `synthvoc` model shipped in the package. short_side: resize images to it instead of the model's test setting."""
    model, description, warning = _load_app_model(checkpoint, device, random_init, source)
    model.test_settings = resolve_settings(model.test_settings, model.config, Requested(short_side=short_side)).settings
    return model, description, warning


def _load_app_model(
    checkpoint: str | None, device: str, random_init: str | None, source: str | None
) -> tuple[GroupViT, str, str | None]:
    if random_init is None:
        checkpoint = checkpoint or DEFAULT_CHECKPOINT
        model = load_model(checkpoint, device=device, source=source)
        entry = PRETRAINED.get(checkpoint.partition("@")[0])
        if entry and not Path(checkpoint).exists():
            return model, f"`{checkpoint}`, {entry.description}. Licence: {entry.licence}", None
        about = model.test_settings.about
        runtime = "" if model.runtime == "pytorch" else f" (on {model.runtime})"
        return model, f"`{Path(checkpoint).name}`{runtime}" + (f", {about}" if about else ""), None
    preset = random_init
    model = random_init_model(preset, device)  # the same random model on every start
    warning = (
        f"Untrained random weights ({preset} architecture): the pictures show how the pipeline works, not what "
        "GroupViT learns. Restart without `--random-init` for the small model shipped in the package (SynthVOC "
        "scenes), with `--checkpoint gcc_yfcc` for the released weights (downloaded once), or with `--checkpoint` "
        "naming trained weights (the model.safetensors of `groupvit train`, an NVlabs .pth or a transformers "
        "folder)."
    )
    return model, f"random `{preset}` preset", warning


def legend_html(class_names: Sequence[str], labels: np.ndarray) -> str:
    """An HTML table of the classes found (and background), largest share first: overlay colour and share of the
    pixels; then the requested classes that were not found, in one line."""
    fractions = np.bincount(labels.ravel(), minlength=len(class_names) + 1) / labels.size
    names, palette = ["background", *class_names], voc_palette()
    rows = []
    for i in sorted(np.flatnonzero(fractions), key=lambda i: -fractions[i]):
        # Background is left unpainted in the overlay, so its swatch is empty.
        color = "transparent" if i == 0 else "rgb({},{},{})".format(*palette[i])
        swatch = f'<span style="display:inline-block;width:1em;height:1em;border:1px solid #888;background:{color}">'
        rows.append(f"<tr><td>{swatch}</span></td><td>{html.escape(names[i])}</td><td>{fractions[i]:.1%}</td></tr>")
    absent = [html.escape(n) for n, f in zip(class_names, fractions[1:], strict=True) if f == 0]
    missing = f'<p class="groupvit-absent">Not found: {", ".join(absent)}.</p>' if absent else ""
    header = "<tr><th></th><th>class</th><th>pixels</th></tr>"
    return f'<table class="groupvit-legend">{header}{"".join(rows)}</table>{missing}'


def one_line_refusals(handler):
    """Wrap a page handler: a refused request (gr.Error, or a ValueError about the input) and a request that failed
    (out of memory, anything unexpected) are shown on the page and logged on the server as one line each, instead
    of the traceback gradio prints for every error."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except (gr.Error, ValueError) as e:
            message = e.message if isinstance(e, gr.Error) else str(e)
            print(f"groupvit app: refused a request: {' '.join(str(message).split())}", flush=True)
            raise gr.Error(message, print_exception=False) from None
        except Exception as e:  # MemoryError, a RuntimeError of the model, ...
            print(f"groupvit app: failed a request: {describe(e)}", flush=True)
            raise gr.Error(describe(e), print_exception=False) from None

    return wrapped


class SegmentationApp:
    """The page's state (model, segmenter with its text-embedding cache, limits) and its request handler."""

    def __init__(
        self, model: GroupViT, description: str, warning: str | None, temp_dir: str | Path, limits: Limits = Limits()
    ) -> None:
        self.description, self.warning, self.limits = description, warning, limits
        self.temp_dir = Path(temp_dir).resolve()
        self.settings = model.test_settings  # the page's defaults (groupvit.settings)
        self.segmenter = ZeroShotSegmenter(model, ["object"])

    def read_image(self, path: str) -> np.ndarray:
        """An uploaded file -> RGB uint8 [H, W, 3], reduced to `max_side`; gr.Error with the reason otherwise."""
        file = Path(path).resolve()
        if not file.is_relative_to(self.temp_dir):  # gradio checks this too; the handler never reads elsewhere
            raise gr.Error("That file was not uploaded to this page.")
        try:
            rgb = load_image(file, max_pixels=self.limits.max_pixels, formats=IMAGE_FORMATS)
        except ValueError as e:  # name the upload, not its path on the server
            raise gr.Error(str(e).replace(str(file), file.name)) from None
        height, width = rgb.shape[:2]
        scale = self.limits.max_side / max(height, width)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        return rgb

    def read_classes(self, text: str) -> list[str]:
        try:
            names = check_class_names(text)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        if len(names) > self.limits.max_classes:
            raise gr.Error(f"{len(names)} class names given; this page takes at most {self.limits.max_classes}.")
        return names

    def read_background_words(self, text: str) -> tuple[str, ...]:
        """'voc', 'car', 'none' or comma-separated words (never a file: the handler reads nothing but uploads)."""
        try:
            words = background_words(text or "none", files=False)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        if len(words) > self.limits.max_background_words:
            raise gr.Error(f"{len(words)} background words given; at most {self.limits.max_background_words}.")
        return words

    @one_line_refusals
    def segment(
        self, path: str | None, classes: str, threshold: float, mode: str, words: str = "none"
    ) -> tuple[Image.Image, str, Image.Image, str]:
        """The page's request: (overlay with legend, legend table HTML, group maps per stage, status line).
        words: background words scored with the classes (groupvit.naming.background_words), a protocol variant."""
        if not path:
            raise gr.Error("Upload an image or pick an example first.")
        if mode not in MODES:
            raise gr.Error(f"test mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise gr.Error(f"the background threshold must be between 0 and 1, got {threshold}")
        names = self.read_classes(classes)
        naming = Naming(background_words=self.read_background_words(words))
        rgb = self.read_image(path)
        # A shallow copy per request: the model and the per-vocabulary text cache are shared, the settings are not.
        segmenter = copy.copy(self.segmenter)
        segmenter.mode, segmenter.background_threshold, segmenter.naming = mode, float(threshold), naming
        start = time.perf_counter()
        try:
            segmenter.set_classes(names)
            segmenter.query()  # a background word that is also a class
        except ValueError as e:
            raise gr.Error(str(e)) from None
        result = segmenter(rgb)
        seconds = time.perf_counter() - start
        unlike = self.settings.unlike(rgb.shape)
        status = (
            f"{rgb.shape[1]}x{rgb.shape[0]} pixels, {mode} mode, background threshold {float(threshold):.2f}"
            f"{f', {len(naming.background_words)} background words' if naming.background_words else ''}"
            f" (short side resized to {segmenter.short_side}): {seconds:.2f} s on {segmenter.device.type}"
            + (f". Note: {unlike}, so expect little." if unlike else "")
        )
        return (
            overlay(rgb, result.labels, names, legend_top=BUTTONS_HEIGHT),
            legend_html(names, result.labels),
            group_maps_image(rgb, result.group_maps),
            status,
        )

    @one_line_refusals
    def preview(self, path: str | None) -> np.ndarray | None:
        """The uploaded image as the page shows it before segmenting (checked as `segment` checks it; a small one
        enlarged to be seen)."""
        if not path:
            return None
        rgb = self.read_image(path)
        return enlarge_photo(rgb, display_scale(rgb.shape))

    def pick_example(self, selected: gr.SelectData) -> tuple[str, str]:
        """A click on an example's thumbnail -> (its file for the upload box, its classes)."""
        return tuple(self.examples[selected.index])

    def write_examples(self) -> tuple[list[list[str]], list[str]]:
        """Copy the examples into the temp folder (gradio serves only files it may read) -> ([[path, classes]],
        labels): SynthVOC scenes with the model's classes for models trained on SynthVOC, else scikit-image's
        photographs with words of their own."""
        folder = self.temp_dir / "examples"
        folder.mkdir(exist_ok=True)
        rows, labels = [], []
        if self.settings.trained_on == "synthvoc":
            for scene in json.loads((SYNTHVOC_EXAMPLES / "examples.json").read_text()):
                path = folder / scene["file"]
                shutil.copyfile(SYNTHVOC_EXAMPLES / scene["file"], path)
                rows.append([str(path), ", ".join(self.settings.classes)])
                labels.append(scene["caption"])
            return rows, labels
        import skimage.data

        for name, classes in EXAMPLES.items():
            path = folder / f"{name}.png"
            Image.fromarray(getattr(skimage.data, name)()).save(path)
            rows.append([str(path), classes])
        return rows, list(EXAMPLES)

    def build(self) -> gr.Blocks:
        formats, megapixels = ", ".join(IMAGE_FORMATS), self.limits.max_pixels / 1e6
        self.examples, labels = self.write_examples()
        calibrated = self.settings.background_threshold is not None
        with gr.Blocks(title="GroupViT segmentation", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
            gr.Markdown(f"# GroupViT: segment a photo into any words\nModel: {self.description}.")
            if self.warning:
                gr.Markdown(f"**Warning: {self.warning}**", elem_id="weights-warning")
            with gr.Row():
                with gr.Column():
                    image = gr.File(
                        label=f"Image ({formats}; at most {megapixels:g} megapixels)",
                        file_types=list(FILE_TYPES),
                        type="filepath",
                        elem_id="image",
                    )
                    preview = gr.Image(label="Preview", interactive=False, elem_id="preview", format="png", height=240)
                    classes = gr.Textbox(
                        label=f"Class names, comma-separated (at most {self.limits.max_classes})",
                        value=", ".join(self.settings.classes) or "person, grass, sky",
                        elem_id="classes",
                    )
                    threshold = gr.Slider(
                        0.0,
                        1.0,
                        value=self.segmenter.background_threshold,
                        step=0.01,
                        label="Background threshold",
                        info="presets: VOC and COCO-Object 0.95, Context 0.35; 0 turns background off"
                        + ("; the default is the one calibrated with this model" if calibrated else ""),
                        elem_id="threshold",
                    )
                    words = gr.Textbox(
                        label="Background words (a protocol variant)",
                        value="none",
                        info="scored with the classes; a pixel won by one is background: voc (SCLIP and NACLIP's "
                        "26 stuff words: sky, wall, tree, ...), car (CaR's 23), none, or your own, comma-separated",
                        elem_id="background-words",
                    )
                    mode = gr.Radio(
                        list(MODES),
                        value=self.segmenter.mode,
                        label="Test mode",
                        info=f"slide: {self.segmenter.crop_size} crops, stride {self.segmenter.stride} (the official "
                        "protocol at 448); whole: one pass",
                        elem_id="mode",
                    )
                    button = gr.Button("Segment", variant="primary", elem_id="segment")
                    thumbnails = [(path, label) for (path, _), label in zip(self.examples, labels, strict=True)]
                    examples = gr.Gallery(thumbnails, label="Examples (click one)", columns=4, buttons=[],
                                          allow_preview=False, interactive=False, elem_id="examples")  # fmt: skip
                with gr.Column():
                    overlay_out = gr.Image(
                        label="Overlay", type="pil", format="png", interactive=False, elem_id="overlay"
                    )
                    legend = gr.HTML(elem_id="legend")
                    status = gr.Markdown(elem_id="status")
            groups = gr.Image(label="Groups per stage", type="pil", format="png", interactive=False, elem_id="groups")
            results = [overlay_out, legend, groups, status]
            private = {"api_visibility": "private"}  # page plumbing, not part of the API
            # Each request first clears the previous result, so that a refusal does not leave it on the page.
            button.click(lambda: (None, "", None, ""), None, results, queue=False, **private).then(
                self.segment, [image, classes, threshold, mode, words], results, api_name="segment"
            )
            image.change(lambda: None, None, preview, queue=False, **private).then(
                self.preview, image, preview, **private
            )
            examples.select(self.pick_example, None, [image, classes], **private)
        return page


def run_app(
    checkpoint: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    limits: Limits = Limits(),
    random_init: str | None = None,
    source: str | None = None,
    short_side: int | None = None,
) -> None:
    """Serve the page until interrupted. device: 'cpu', 'cuda', or None for a GPU when there is one."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    model, description, warning = load_app_model(checkpoint, device, random_init, source, short_side)
    if warning:
        print(f"groupvit app: {warning}", flush=True)
    temp_dir = tempfile.mkdtemp(prefix="groupvit-app-")
    # Gradio keeps uploads and the pictures it sends in GRADIO_TEMP_DIR and accepts uploaded paths only from there.
    os.environ["GRADIO_TEMP_DIR"] = temp_dir
    print(f"groupvit app: uploads and result pictures go to {temp_dir} (removed at exit)", flush=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (service managers, `kill`) stops like Ctrl-C; background jobs of a shell may have SIGINT ignored.
    signal.signal(signal.SIGTERM, stop)
    try:
        page = SegmentationApp(model, description, warning, temp_dir, limits).build()
        page.queue(max_size=16).launch(
            server_name=host, server_port=port, max_file_size=limits.max_file_size, ssr_mode=False, mcp_server=False,
            prevent_thread_lock=True, quiet=True,
        )  # fmt: skip
        # quiet: gradio's lines, among them its hint to make a public link (share=True), which this page is not for
        print(f"groupvit app: serving http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
        # Our own wait: gradio's blocking wait closes the server gracefully on Ctrl-C, which can hang for minutes on
        # open connections; the server thread is a daemon, so leaving this function ends it.
        threading.Event().wait()
    except KeyboardInterrupt:
        print("groupvit app: stopped", flush=True)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
