"""Perceptual-hash deduplication and URL duplicate flags."""
