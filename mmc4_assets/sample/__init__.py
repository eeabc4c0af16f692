"""Bundled MMC4 sample: a tiny C4 shard, page archives, images and their ground truth.

`build` regenerates the files under `data/`; `server` serves the sample images on loopback.
"""
