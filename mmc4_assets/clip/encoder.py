"""Load an open_clip model and embed images and sentences in batches.

Production is ViT-L-14 with OpenAI weights, as MMC4. Where no weights can be had (tests,
the bundled sample, air-gapped CI) ``mmc4-tiny-random`` is a 3.6M-parameter open_clip
config shipped with this package and initialised from a fixed seed: it exercises every
code path, and its similarities mean nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def _register_local_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


@dataclass(frozen=True)
class ClipSpec:
    model_name: str = "ViT-L-14"
    pretrained: str | None = "openai"   # an open_clip tag, a local checkpoint path, or None = random
    device: str = "auto"                # auto: cuda when available, else cpu
    precision: str = "fp32"             # fp32 | bf16 | fp16 (autocast on the device)
    batch_size: int = 64
    seed: int = 0

    @property
    def is_random(self) -> bool:
        return not self.pretrained


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ClipEncoder:
    def __init__(self, spec: ClipSpec):
        _register_local_configs()
        self.spec = spec
        self.device = resolve_device(spec.device)
        pretrained = spec.pretrained or None
        if pretrained and os.path.sep in pretrained and not os.path.exists(pretrained):
            raise FileNotFoundError(f"CLIP checkpoint not found: {pretrained}")
        torch.manual_seed(spec.seed)  # a random model must be the same model on every run
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model_name, pretrained=pretrained, device=self.device)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.model_name)
        self.embed_dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") \
            and model.text_projection is not None else None

    @property
    def description(self) -> str:
        weights = "RANDOM weights (no quality meaning)" if self.spec.is_random else self.spec.pretrained
        return f"{self.spec.model_name} / {weights}"

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.spec.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    @torch.inference_mode()
    def encode_images(self, images: Iterable[Image.Image]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per image."""
        out = []
        batch: list[torch.Tensor] = []
        for img in images:
            batch.append(self.preprocess(img))
            if len(batch) == self.spec.batch_size:
                out.append(self._encode_image_batch(batch))
                batch = []
        if batch:
            out.append(self._encode_image_batch(batch))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim or 0), np.float32)

    def _encode_image_batch(self, batch: list[torch.Tensor]) -> np.ndarray:
        x = torch.stack(batch).to(self.device)
        with self._autocast():
            feats = self.model.encode_image(x, normalize=True)
        return feats.float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.spec.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.spec.batch_size])).to(self.device)
            with self._autocast():
                feats = self.model.encode_text(tokens, normalize=True)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim or 0), np.float32)


def decode_rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
