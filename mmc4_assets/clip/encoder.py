"""Load an open_clip model and embed images and sentences in batches, fast.

Production is ViT-L-14 with OpenAI weights, as MMC4. Where no weights can be had (tests,
the bundled sample, air-gapped CI) ``mmc4-tiny-random`` is a 3.6M-parameter open_clip
config shipped with this package and initialised from a fixed seed: it exercises every
code path, and its similarities mean nothing.

What keeps the hardware busy:

* the model runs in eval + inference mode, under bf16/fp16 autocast where the device
  does that natively (``precision="auto"``), ``torch.compile``d unless the model is tiny
  (on CPU with weight freezing: oneDNN GEMMs with bias and GELU fused in);
* images reach the model as uint8 NHWC batches (a quarter of the bytes of float32 over
  PCIe) and are normalised on the device, which leaves them channels-last;
* :class:`ImagePrep` decodes, resizes and crops with Pillow (which releases the GIL), at
  a reduced JPEG DCT scale when the picture is at least twice the model's input, so a
  thread pool keeps up with the model;
* sentences are encoded sorted by token length, each batch cut to its longest sentence
  instead of the 77-token context: CLIP's text tower is causal and pools at the
  end-of-text token, so the padding after it never changes the result, only costs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def _register_local_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


@dataclass(frozen=True)
class ClipSpec:
    model_name: str = "ViT-L-14"
    pretrained: str | None = "openai"  # an open_clip tag, a local checkpoint path, or None = random
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast on the device)
    batch_size: int = 64  # images per forward pass
    text_batch_size: int = 256  # sentences of 32 tokens per forward pass (a token budget)
    seed: int = 0
    compile: str = "auto"  # torch.compile the towers: on | off | auto (models >= 50M params)
    fast_decode: bool = True  # decode JPEGs at a reduced DCT scale when >= 2x the input size

    @property
    def is_random(self) -> bool:
        return not self.pretrained


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: without them bf16 matmuls on CPU are emulated and far slower than fp32."""
    cpu = getattr(torch._C, "_cpu", None)
    return bool(
        cpu
        and (
            getattr(cpu, "_is_amx_tile_supported", lambda: False)()
            or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        )
    )


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on GPUs that have it (fp16 on older ones) and on CPUs with native bf16, else fp32."""
    if precision not in ("auto", *_DTYPES):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision != "auto":
        return precision
    kind = device.split(":")[0]
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if kind == "cpu":
        return "bf16" if _cpu_has_fast_bf16() else "fp32"
    return "fp32"


_COMPILE_AUTO_MIN_PARAMS = 50_000_000
_TOKENS_PER_SENTENCE = 32  # text_batch_size counts sentences of this length: a token budget
_MIN_CHUNK_TOKENS = 4096  # GEMM rows below which a length split costs more efficiency than padding does
_MAX_LENGTH_SPREAD = 1.25  # longest / shortest sentence of a chunk, once it is that large


def _length_chunks(lengths: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """(start, end) chunks of ascending ``lengths`` for one forward pass each.

    A chunk holds at most ``max_tokens`` padded tokens (many short sentences, few long ones),
    and ends once its longest sentence would pad its shortest by more than a quarter -- unless
    it is still too small (< 4096 tokens) for full-speed matmuls.
    """
    chunks, start = [], 0
    for i, length in enumerate(lengths):
        size = i - start
        if size and (
            (size + 1) * length > max_tokens
            or (size * lengths[start] >= _MIN_CHUNK_TOKENS and length > _MAX_LENGTH_SPREAD * lengths[start])
        ):
            chunks.append((start, i))
            start = i
    if start < len(lengths):
        chunks.append((start, len(lengths)))
    return chunks


def resolve_compile(setting: str | bool, model: torch.nn.Module) -> bool:
    """``auto``: compile real models (>= 50M parameters), not the tiny test config whose compile costs more than it
    saves.
    """
    value = str(setting).strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    if value != "auto":
        raise ValueError(f"compile must be on, off or auto, not {setting!r}")
    return sum(p.numel() for p in model.parameters()) >= _COMPILE_AUTO_MIN_PARAMS


class _CompiledOrEager:
    """``torch.compile(fn, dynamic=True)``; if compiling fails (no C++ compiler, an unsupported
    op), the error is logged once and the eager function is used from then on."""

    def __init__(self, fn, what: str):
        self.eager, self.what = fn, what
        self.compiled = torch.compile(fn, dynamic=True)
        self.failed = False

    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.failed:
            return self.eager(x, **kwargs)
        if x.shape[0] == 1:  # a batch of one would be specialised and compiled again: run it as two
            return self(torch.cat([x, x]), **kwargs)[:1]
        try:
            return self.compiled(x, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compile failure: keep scoring, eagerly
            self.failed = True
            log.warning("torch.compile of the %s failed, running it eagerly: %s", self.what, exc)
            return self.eager(x, **kwargs)


@dataclass(frozen=True)
class ImagePrep:
    """Bytes -> uint8 HxWx3 model input: RGB, shorter side resized to ``size``, centre crop.

    The same geometry as open_clip's ``Resize(size) + CenterCrop(size)`` on PIL images;
    with ``draft`` a JPEG at least twice as large as needed is decoded at 1/2, 1/4 or 1/8
    scale first (libjpeg's DCT scaling), never below ``size`` on the shorter side.
    """

    size: int
    resample: Image.Resampling
    draft: bool = True

    def __call__(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        if self.draft and img.format == "JPEG":
            img.draft("RGB", (self.size, self.size))
        img = img.convert("RGB")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), self.resample)
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        if (new_w, new_h) != (self.size, self.size):
            img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img)


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _plain_block(block) -> bool:
    """open_clip's standard pre-norm self-attention block, nothing else in it."""
    attn = getattr(block, "attn", None)
    return (
        type(block) is open_clip.transformer.ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, torch.nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.dropout == 0.0
    )


def _attention_block(block, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """``block`` on batch-first ``x``: nn.MultiheadAttention's arithmetic, as one packed input
    projection, one scaled_dot_product_attention call and one output projection on contiguous
    tensors (on CPU 5-10 % faster than the module's own paths, which transpose and copy)."""
    attn = block.attn
    y = block.ln_1(x)
    batch, length, width = y.shape
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out = F.linear(out.transpose(1, 2).reshape(batch, length, width), attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _self_attention_forward(block, q_x, k_x=None, v_x=None, attn_mask=None):
    if k_x is None and v_x is None and attn_mask is None:
        return _attention_block(block, q_x, causal=False)
    return open_clip.transformer.ResidualAttentionBlock.forward(block, q_x, k_x, v_x, attn_mask)


def _streamline_vision_blocks(model) -> bool:
    """Route the image tower's unmasked self-attention blocks through :func:`_attention_block`."""
    tower = getattr(getattr(model, "visual", None), "transformer", None)
    blocks = list(getattr(tower, "resblocks", []))
    if not blocks or not getattr(tower, "batch_first", False) or not all(_plain_block(b) for b in blocks):
        return False
    for block in blocks:
        block.forward = functools.partial(_self_attention_forward, block)
    return True


def _causal_text_blocks(model) -> bool:
    """True when the text tower is plain blocks under exactly the causal mask (is_causal=True is the same)."""
    tower, mask = getattr(model, "transformer", None), getattr(model, "attn_mask", None)
    if mask is None or not getattr(tower, "batch_first", False):
        return False
    causal = torch.full_like(mask, float("-inf")).triu_(1)
    return torch.equal(mask, causal) and all(_plain_block(b) for b in tower.resblocks)


_RANDOM_NOTICE = "Model initialized randomly"
_random_models_logged: set[str] = set()


class _WithoutRandomInitNotice(logging.Filter):
    """open_clip logs its random-init notice on the root logger at every load; we log ours once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _RANDOM_NOTICE not in record.getMessage()


def _create_model(model_name: str, pretrained: str | None, device):
    if pretrained is not None:
        return open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    root, quiet = logging.getLogger(), _WithoutRandomInitNotice()
    root.addFilter(quiet)
    try:
        created = open_clip.create_model_and_transforms(model_name, pretrained=None, device=device)
    finally:
        root.removeFilter(quiet)
    if model_name not in _random_models_logged:  # once per process and model
        _random_models_logged.add(model_name)
        log.warning(
            "CLIP %s has RANDOM weights (pretrained=None): its similarities carry no quality meaning", model_name
        )
    return created


class ClipEncoder:
    def __init__(self, spec: ClipSpec):
        _register_local_configs()
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.precision = resolve_precision(spec.precision, self.device)
        pretrained = spec.pretrained or None
        if pretrained and os.path.sep in pretrained and not os.path.exists(pretrained):
            raise FileNotFoundError(f"CLIP checkpoint not found: {pretrained}")
        torch.manual_seed(spec.seed)  # a random model must be the same model on every run
        model, _, preprocess = _create_model(spec.model_name, pretrained, self.device)
        model.eval().requires_grad_(False)
        if hasattr(model, "visual"):
            model.visual.to(memory_format=torch.channels_last)  # the patch conv reads NHWC input as is
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.model_name)
        self.embed_dim = int(model.visual.output_dim)

        cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
        size = cfg.get("size")
        size = size[0] if isinstance(size, (tuple, list)) and len(set(size)) == 1 else size
        fast = (
            isinstance(size, int)
            and cfg.get("resize_mode", "shortest") == "shortest"
            and cfg.get("interpolation", "bicubic") in _RESAMPLE
        )
        # models whose preprocessing is not plain resize + centre crop keep open_clip's transform
        self.image_prep = (
            ImagePrep(size, _RESAMPLE[cfg.get("interpolation", "bicubic")], draft=spec.fast_decode) if fast else None
        )
        self._mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)), device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)), device=self.device).view(1, 3, 1, 1)
        # only open_clip's own CLIP text tower (causal, pooled at EOT) may be cut to length
        self.text_cut_to_length = (
            type(model) is open_clip.CLIP
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        )
        self.streamlined_image_blocks = _streamline_vision_blocks(model)
        self.causal_text_blocks = self.text_cut_to_length and _causal_text_blocks(model)
        self._image_fn = model.encode_image
        self._text_fn = self._encode_text_cut if self.text_cut_to_length else model.encode_text
        self.compiled = resolve_compile(spec.compile, model)
        if self.compiled:
            if self.device == "cpu":
                # weights become constants: inductor prepacks them for oneDNN and fuses bias + GELU into the GEMM
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True
            # dynamic: one graph for every batch size and sentence length (batches of 1 are padded).
            # With a symbolic batch inductor prepacks fp32 weights for oneDNN; static shapes make it
            # use MKL's packed GEMM instead, which compiles in half the time but ran the ViT-B-32 image
            # tower 2-7 % slower (interleaved A/B, 2-core AMD EPYC, torch 2.14), so dynamic it stays.
            self._image_fn = _CompiledOrEager(self._image_fn, "image tower")
            self._text_fn = _CompiledOrEager(self._text_fn, "text tower")

    @property
    def description(self) -> str:
        weights = "RANDOM weights (no quality meaning)" if self.spec.is_random else self.spec.pretrained
        return f"{self.spec.model_name} / {weights}"

    def _autocast(self):
        dtype = _DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    # -- images ------------------------------------------------------------------------
    def prepare(self, data: bytes) -> np.ndarray | torch.Tensor:
        """One stored image -> model input: uint8 HxWx3 (fast path) or open_clip's CHW float tensor."""
        if self.image_prep is not None:
            return self.image_prep(data)
        return self.preprocess(decode_rgb(data))

    @torch.inference_mode()
    def encode_prepared(self, batch: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """L2-normalised float32 embeddings of outputs of :meth:`prepare`, one row per image."""
        if not batch:
            return np.zeros((0, self.embed_dim), np.float32)
        if isinstance(batch[0], np.ndarray):
            pixels = torch.from_numpy(np.stack(batch))
            if self.device.startswith("cuda"):
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            # NHWC uint8 -> NCHW view with channels-last strides; ToTensor + Normalize, same op order
            x = pixels.permute(0, 3, 1, 2).float().div_(255.0).sub_(self._mean).div_(self._std)
        else:
            x = torch.stack(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            feats = self._image_fn(x, normalize=True)
        return feats.float().cpu().numpy()

    def encode_images(self, images: Iterable[Image.Image]) -> np.ndarray:
        """L2-normalised float32 embeddings of decoded images, in batches of ``batch_size``."""
        out, batch = [], []
        for img in images:
            batch.append(self.preprocess(img))
            if len(batch) == self.spec.batch_size:
                out.append(self.encode_prepared(batch))
                batch = []
        if batch:
            out.append(self.encode_prepared(batch))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    # -- sentences ---------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def _encode_text_cut(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` on tokens cut after their last end-of-text position."""
        m = self.model
        length = tokens.shape[1]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        if self.causal_text_blocks:
            for block in m.transformer.resblocks:
                x = _attention_block(block, x, causal=True)
        else:
            x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = open_clip.transformer.text_global_pool(
            x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None)
        )
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Embeddings of tokenised sentences (rows of ``tokens``), in the order given."""
        if tokens.shape[0] == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        nonpad = tokens != 0
        # tokens after the last non-padding one (the end-of-text token) are never needed
        used = tokens.shape[1] - nonpad.flip(1).int().argmax(1)
        order = torch.argsort(used, stable=True)
        out = np.empty((tokens.shape[0], self.embed_dim), np.float32)
        budget = self.spec.text_batch_size * _TOKENS_PER_SENTENCE
        for idx in _length_chunks(used[order].tolist(), budget):
            rows = order[idx[0] : idx[1]]
            length = int(used[rows].max()) if self.text_cut_to_length else tokens.shape[1]
            chunk = tokens[rows, :length].to(self.device)
            with self._autocast():
                feats = self._text_fn(chunk, normalize=True)
            out[rows.numpy()] = feats.float().cpu().numpy()
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per sentence."""
        return self.encode_tokens(self.tokenize(texts)) if len(texts) else np.zeros((0, self.embed_dim), np.float32)


def decode_rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
