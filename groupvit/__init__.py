"""GroupViT: semantic segmentation that emerges from text supervision, in plain modern PyTorch."""

from . import checkpoint
from .checkpoint import save_model
from .classification import ZeroShotClassifier
from .config import GroupViTConfig, TextConfig, VisionConfig, model_config
from .errors import CheckpointError
from .factory import load_model
from .model import GroupViT, ImageGroups
from .pretrained import list_pretrained
from .segmentation import SegmentationResult, ZeroShotSegmenter
from .tokenizer import tokenize

# `from groupvit.checkpoint import load_model`, as before it moved up to groupvit.factory: set from here, the top,
# since checkpoint.py cannot import the module above it (importing groupvit.checkpoint runs this file first).
checkpoint.load_model = load_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "GroupViT",
    "GroupViTConfig",
    "ImageGroups",
    "SegmentationResult",
    "TextConfig",
    "VisionConfig",
    "ZeroShotClassifier",
    "ZeroShotSegmenter",
    "list_pretrained",
    "load_model",
    "model_config",
    "save_model",
    "tokenize",
]
