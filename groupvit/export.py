"""Export a GroupViT to ONNX, to run it without PyTorch (onnxruntime, a browser, another language).

`export_onnx("synthvoc", "synthvoc_onnx")` writes a folder of three files:

* `vision.onnx`: pixels [B, 3, H, W] (ImageNet-normalised, H and W any multiple of the patch size; the position
  embedding is resized inside the graph) -> `image_embeds` [B, D], `group_embeds` [B, G, D] and `assignment_<i>`
  [B, S_out, N_in], the soft assignment map of each grouping stage: all that zero-shot segmentation needs.
* `text.onnx`: token ids [N, L] (L <= the context length, padding allowed) -> `text_embeds` [N, D].
* `groupvit.json`: the architecture, the opset, the model's test settings (its vocabulary among them), the logit
  scale, the preprocessing, what it was exported from and with which versions.

Embeddings are projected, not L2-normalised, as `GroupViT.encode_image_groups` and `encode_text` return them.
`load_model(folder)` reads the folder back as a model on onnxruntime (groupvit.runtime). The graphs are traced with
the TorchScript-based exporter (`dynamo=False`): it needs no package beyond torch and onnx, and the two models'
control flow depends on shapes only, never on values, once the text encoder runs without trimming its padding.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .factory import load_model
from .image import IMAGENET_MEAN, IMAGENET_STD
from .io import atomic_write
from .model import GroupViT
from .runtime import EXPORT_FILES, EXPORT_FORMAT, INSTALL
from .tokenizer import EOT_TOKEN, SOT_TOKEN

# 17 is the first opset with LayerNormalization; onnxruntime has run it since 1.14 and browsers' runtimes too.
OPSET = 17
MAX_OPSET = 20  # the newest opset torch's TorchScript-based exporter writes


class VisionGraph(nn.Module):
    """What `vision.onnx` computes: `encode_image_groups` with its outputs as a flat tuple."""

    def __init__(self, model: GroupViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.encode_image_groups(pixels)
        return (out.image_embeds, out.group_embeds, *out.assignments)


class TextGraph(nn.Module):
    """What `text.onnx` computes: `encode_text` without dropping the padding after the last end-of-text token
    (the same result: attention is causal), so that the graph has no length that depends on the ids."""

    def __init__(self, model: GroupViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_projection(self.model.text.pooled(ids))


def num_assignments(model: GroupViT) -> int:
    return sum(1 for n in model.config.vision.num_group_tokens if n > 0)


def export_onnx(
    model_or_name: GroupViT | str | Path,
    out_dir: str | Path,
    opset: int = OPSET,
    overwrite: bool = False,
    source: str | None = None,
    quantize: str | None = None,
) -> Path:
    """Write `vision.onnx`, `text.onnx` and `groupvit.json` for a model (or anything `load_model` reads; `source`
    as there) into `out_dir`; returns the folder. Existing export files are replaced only with `overwrite`. A model
    passed in is put in eval mode on the CPU. quantize="int8": onnxruntime's dynamic int8 quantisation of the
    weights of both graphs (smaller and faster on CPUs with int8 dot products; see docs/performance.md for what it
    costs in accuracy)."""
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    try:
        import onnx  # only the export needs it
    except ImportError:
        raise ValueError(f"exporting to ONNX needs the onnx package: {INSTALL}") from None

    out = Path(out_dir)
    taken = [n for n in EXPORT_FILES if (out / n).exists()]
    if taken and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(taken)}; pass overwrite=True (--overwrite) to replace them")
    if isinstance(model_or_name, GroupViT):
        model, source = model_or_name, "a GroupViT in memory"
    else:
        model = load_model(model_or_name, source=source)
        source = str(model_or_name) + (f" (source {source})" if source else "")
    if not isinstance(model, GroupViT):
        raise ValueError(f"{source} is already an ONNX export; copy the folder instead of exporting it again")
    model = model.eval().cpu()
    cfg = model.config
    out.mkdir(parents=True, exist_ok=True)
    vision_outputs = ["image_embeds", "group_embeds"] + [f"assignment_{i}" for i in range(num_assignments(model))]
    vision_axes = {"pixels": {0: "batch", 2: "height", 3: "width"}, "image_embeds": {0: "batch"},
                   "group_embeds": {0: "batch"}}  # fmt: skip
    for i, name in enumerate(vision_outputs[2:]):
        # The first stage's map has one column per patch; later stages have fixed sizes.
        vision_axes[name] = {0: "batch", 2: "patches"} if i == 0 else {0: "batch"}
    # Traced at a size that is not the training size, so that the graph keeps the position-embedding resize.
    g, p = cfg.vision.grid_size, cfg.vision.patch_size
    pixels = torch.randn(2, cfg.vision.in_chans, (g + 1) * p, (g + 2) * p)
    ids = torch.zeros(2, cfg.text.context_length, dtype=torch.long)
    ids[:, 0], ids[:, 1], ids[:, 2] = SOT_TOKEN, 320, EOT_TOKEN
    graphs = (
        ("vision.onnx", VisionGraph(model).eval(), pixels, ["pixels"], vision_outputs, vision_axes),
        ("text.onnx", TextGraph(model).eval(), ids, ["ids"], ["text_embeds"],
         {"ids": {0: "batch", 1: "length"}, "text_embeds": {0: "batch"}}),
    )  # fmt: skip
    for name, graph, example, inputs, outputs, axes in graphs:
        proto = trace(graph, example, inputs, outputs, axes, opset)
        onnx.checker.check_model(proto, full_check=True)
        atomic_write(out / name, lambda tmp, m=proto: onnx.save_model(m, tmp))
        if quantize:
            quantize_int8(out / name)
    manifest = export_manifest(model, source, opset) | {
        "quantization": "dynamic int8 (onnxruntime)" if quantize else None
    }
    atomic_write(out / "groupvit.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return out


def trace(graph: nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], axes: dict, opset: int):
    """The TorchScript-based exporter's graph of `graph` on `example`, as an onnx ModelProto."""
    import io

    import onnx

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-level shape checks, and its deprecation
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes)  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


def quantize_int8(path: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of one graph's weights, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it advises, through the root logger, to pre-process first: not needed here
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        atomic_write(path, lambda tmp: quantize_dynamic(path, tmp, weight_type=QuantType.QInt8))
    finally:
        root.setLevel(level)


def export_manifest(model: GroupViT, source: str, opset: int) -> dict[str, Any]:
    """What `groupvit.json` records: enough to run the graphs without this package, and to load them back."""
    import onnx

    from . import __version__

    cfg = model.config
    return {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "opset": opset,
        "exported_from": source,
        "versions": {"groupvit": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
        "config": cfg.to_dict(),
        "test_settings": model.test_settings.to_dict(),
        "logit_scale": float(model.logit_scale_value().detach()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision": {
            "file": "vision.onnx",
            "input": "pixels [batch, 3, height, width] float32: RGB / 255, minus mean, over std; height and width "
            f"positive multiples of {cfg.vision.patch_size}",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "patch_size": cfg.vision.patch_size,
            "outputs": {
                "image_embeds": "[batch, D] the pooled image embedding, projected, not normalised",
                "group_embeds": "[batch, G, D] each final group's embedding, projected, not normalised",
                **{
                    f"assignment_{i}": "[batch, groups out, tokens in] soft assignment of grouping stage "
                    f"{i} (softmax over the groups)"
                    for i in range(num_assignments(model))
                },
            },
        },
        "text": {
            "file": "text.onnx",
            "input": f"ids [batch, length] int64: {SOT_TOKEN}, CLIP BPE ids, {EOT_TOKEN}, zero padding; length <= "
            f"{cfg.text.context_length}, the end-of-text token the highest id of each row",
            "sot_token": SOT_TOKEN,
            "eot_token": EOT_TOKEN,
            "context_length": cfg.text.context_length,
            "outputs": {"text_embeds": "[batch, D] projected, not normalised"},
        },
    }
