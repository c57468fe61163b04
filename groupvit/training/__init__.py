"""Training GroupViT from image-text pairs (spec sections 3-4)."""
