"""GroupViT: semantic segmentation that emerges from text supervision, in plain modern PyTorch."""

from .checkpoint import CheckpointError, load_model, save_model
from .config import GroupViTConfig, TextConfig, VisionConfig, model_config
from .model import GroupViT, ImageGroups
from .tokenizer import tokenize

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "GroupViT",
    "GroupViTConfig",
    "ImageGroups",
    "TextConfig",
    "VisionConfig",
    "load_model",
    "model_config",
    "save_model",
    "tokenize",
]
