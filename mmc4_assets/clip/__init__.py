"""CLIP scoring with open_clip: image and sentence embeddings, per-document similarity."""
