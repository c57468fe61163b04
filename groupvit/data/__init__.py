"""Training data: augmentation, caption nouns and prompts."""
