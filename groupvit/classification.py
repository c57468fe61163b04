"""Zero-shot image classification against class names (spec 5.5, the ImageNet protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .checks import check_memory
from .data.augment import eval_transform
from .image import ImageInput, load_image
from .model import GroupViT
from .segmentation import MAX_CLASSES, check_class_names, class_text_embeddings
from .templates import get_templates


class ZeroShotClassifier:
    """Rank class names for whole images: logits = normalize(z_image) . T^T, T averaged over templates."""

    def __init__(
        self,
        model: GroupViT,
        class_names: Sequence[str],
        templates: str | Sequence[str] = "subset",
        short_side: int | None = None,
    ) -> None:
        """short_side: images are resized to it, then centre-cropped to the model's training size (at most the
        short side). Default: 256/224 of the training size, the protocol's 256 for the 224-pixel models (spec 5.5)."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.class_names = check_class_names(class_names, unique=False, limit=MAX_CLASSES)
        self.text_embeds = class_text_embeddings(model, self.class_names, get_templates(templates))  # [C, D]
        size = model.config.vision.image_size
        short_side = short_side or int(size * 256 / 224)
        self.short_side = short_side
        self.transform = eval_transform(min(size, short_side), resize=short_side)

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, S, S] (S: the model's training size) -> cosine similarities [B, C]."""
        image = F.normalize(self.model.encode_image(pixels.to(self.device)).float(), dim=-1)
        return image @ self.text_embeds.t()

    @torch.no_grad()
    def __call__(self, image: ImageInput, top: int = 5) -> list[tuple[str, float]]:
        """Top classes of one image with softmax probabilities (at the model's logit scale)."""
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        factor = self.short_side / min(height, width)  # the resize before the centre crop
        check_memory(round(height * factor) * round(width * factor) * 3 * 2, f"a {width}x{height} image resized to a "
                     f"short side of {self.short_side}", "choose a smaller short side")  # fmt: skip
        logits = self.logits(self.transform(Image.fromarray(rgb))[None])[0]
        probs = (logits * self.model.logit_scale_value()).softmax(dim=-1)
        best = probs.topk(min(top, len(self.class_names)))
        return [(self.class_names[i], float(p)) for p, i in zip(best.values, best.indices, strict=True)]
