"""A GroupViT exported to ONNX (groupvit.export), run on onnxruntime behind the PyTorch model's interface.

`load_model(folder)` returns an `OnnxGroupViT` for an export folder: `encode_image`, `encode_image_groups` and
`encode_text` take and return torch tensors as `GroupViT`'s do, and `config`, `test_settings` and
`logit_scale_value()` are there, so `ZeroShotSegmenter`, `ZeroShotClassifier`, `groupvit segment|classify|eval`
and the app run on it unchanged. It runs on the CPU, in float32, with as many threads as torch is set to use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import GroupViTConfig
from .errors import CheckpointError
from .model import ImageGroups
from .settings import TestSettings

EXPORT_FILES = ("vision.onnx", "text.onnx", "groupvit.json")  # what groupvit.export writes
EXPORT_FORMAT = "groupvit-onnx"
INSTALL = 'pip install "groupvit[onnx]"'


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder holding (part of) an ONNX export, not weights."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in EXPORT_FILES)


def load_export(path: str | Path, device: str | torch.device = "cpu") -> OnnxGroupViT:
    """An export folder -> OnnxGroupViT; one line naming the file for a missing or unreadable one."""
    path = Path(path)
    if torch.device(device).type != "cpu":
        raise ValueError(f"{path} is an ONNX export, which runs on the CPU through onnxruntime; use --device cpu")
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"{path} is an ONNX export and onnxruntime is not installed: {INSTALL}") from None
    missing = [name for name in EXPORT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} is an incomplete ONNX export: {', '.join(missing)} missing; export it again "
                              "with `groupvit export WEIGHTS --format onnx --out FOLDER`")  # fmt: skip
    manifest = read_manifest(path / "groupvit.json")
    options = session_options(onnxruntime)
    sessions = {}
    for name in ("vision.onnx", "text.onnx"):
        try:
            sessions[name] = onnxruntime.InferenceSession(str(path / name), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for damaged and foreign files
            reason = " ".join(str(e).split())[:200]
            raise CheckpointError(f"cannot read {path / name}: truncated or not an ONNX model ({reason}); export "
                                  "it again") from None  # fmt: skip
    return OnnxGroupViT(manifest, sessions["vision.onnx"], sessions["text.onnx"], path)


def session_options(onnxruntime):
    """As many threads as torch uses, and no spinning: onnxruntime's idle threads otherwise keep the cores busy for
    a while after each call, and the torch work around the calls (naming, upsampling) waits for them."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: not valid JSON ({getattr(e, 'msg', e)}); export again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f'{path} is not the groupvit.json of an ONNX export (no "format": "{EXPORT_FORMAT}")')
    try:
        manifest["config"] = GroupViTConfig.from_dict(manifest["config"])
        manifest["test_settings"] = TestSettings.from_dict(manifest["test_settings"])
        manifest["logit_scale"] = float(manifest["logit_scale"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config, test settings or logit scale are not usable ({e})") from None
    return manifest


class OnnxGroupViT(nn.Module):
    """GroupViT's inference interface on onnxruntime sessions. A module only so that `.eval()`, `.to("cpu")` and
    `next(model.parameters()).device` work as on `GroupViT`: its one parameter is the logit scale."""

    runtime = "onnxruntime"

    def __init__(self, manifest: dict[str, Any], vision, text, folder: Path) -> None:
        super().__init__()
        self.config: GroupViTConfig = manifest["config"]
        self.test_settings: TestSettings = manifest["test_settings"]
        self.manifest, self.folder = manifest, folder
        self.vision_session, self.text_session = vision, text
        self.logit_scale = nn.Parameter(torch.tensor(manifest["logit_scale"]), requires_grad=False)

    @property
    def embed_dim(self) -> int:
        return self.config.projection_dim

    @property
    def parameter_count(self) -> int:
        """The exported model's parameters (this module holds only the logit scale)."""
        return int(self.manifest.get("parameters", 0))

    def _out(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.logit_scale.device)

    def _check_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        v = self.config.vision
        if pixels.ndim != 4 or pixels.shape[1] != v.in_chans:
            raise ValueError(f"expected images as a float tensor [B, {v.in_chans}, H, W], got shape "
                             f"{tuple(pixels.shape)}")  # fmt: skip
        H, W = pixels.shape[2:]
        p = v.patch_size
        if H < p or W < p or H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a positive multiple of the patch size {p}; resize or crop it "
                             f"(e.g. to {max(p, H // p * p)}x{max(p, W // p * p)})")  # fmt: skip
        return pixels.detach().float().cpu().numpy()

    def encode_image_groups(self, pixels: torch.Tensor) -> ImageGroups:
        """pixels [B, 3, H, W] (ImageNet-normalised) -> pooled [B, D], groups [B, G, D], soft maps per stage."""
        image, groups, *assignments = self.vision_session.run(None, {"pixels": self._check_pixels(pixels)})
        return ImageGroups(self._out(image), self._out(groups), [self._out(a) for a in assignments])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_image_groups(pixels).image_embeds

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, L] from `groupvit.tokenize` -> projected text embeddings [N, D]."""
        if ids.ndim != 2:
            raise ValueError(f"expected token ids [N, L], got shape {tuple(ids.shape)}; use groupvit.tokenize")
        if ids.shape[1] > self.config.text.context_length:
            raise ValueError(f"token ids have length {ids.shape[1]} > context length {self.config.text.context_length}")
        # As GroupViT does: the padding after the last end-of-text token cannot change a pooled feature.
        ids = ids[:, : int(ids.argmax(dim=-1).max()) + 1] if ids.numel() else ids
        (embeds,) = self.text_session.run(None, {"ids": ids.detach().long().cpu().numpy()})
        return self._out(embeds)

    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) clamped at 100, as recorded at export."""
        return self.logit_scale.detach()

    def compile_encoders(self, **options) -> OnnxGroupViT:
        raise ValueError("--compile applies to the PyTorch model; onnxruntime optimises the ONNX export itself")

    def describe(self) -> str:
        return f"ONNX export {self.folder} of {self.manifest.get('exported_from', '?')}, on onnxruntime"
