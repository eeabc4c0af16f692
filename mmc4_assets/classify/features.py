"""Binary classifiers over CLIP image features, loaded from weights on disk or object storage.

MMC4 ran an MLP on CLIP ViT-L/14 image features for NSFW (dropping p(nsfw) > 0.1) and a
logistic regression on the same features for faces (the -ff subsets). Either is loaded
from a configured path, in one of two formats:

- ``sklearn``: a joblib or pickle file of an estimator with ``predict_proba`` (for example
  ``LogisticRegression`` or ``MLPClassifier``); the positive class is ``1``/``True`` in
  ``classes_``. Loading a pickle runs code from the file: configure trusted paths only.
- ``torch``: a ``state_dict`` (``torch.save(model.state_dict(), path)``) of an
  ``nn.Sequential`` of ``nn.Linear`` layers with ReLU between them (Dropout is fine: it
  has no weights). The last layer has 1 output (sigmoid) or 2 (softmax, index 1 is the
  positive class). Loaded with ``weights_only=True``: no code runs.

There is no built-in or dummy model: with no path configured, a filter is off.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from upath import UPath

SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass
class FeatureClassifier:
    """p(positive) for rows of L2-normalised CLIP image features."""

    name: str  # "nsfw" or "face"
    path: str
    format: str  # "sklearn" or "torch"
    sha256: str  # of the weights file, so metadata pins the exact model
    input_dim: int | None
    _predict: Any

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"{self.name} classifier expects a 2-d feature matrix")
        if self.input_dim is not None and features.shape[1] != self.input_dim:
            raise ValueError(
                f"{self.name} classifier expects {self.input_dim}-d CLIP features, "
                f"got {features.shape[1]}-d: it was trained for another CLIP model"
            )
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._predict(features), dtype=np.float32).reshape(-1)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "sha256": self.sha256, "input_dim": self.input_dim}


def detect_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(SKLEARN_SUFFIXES):
        return "sklearn"
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    raise ValueError(
        f"cannot tell the format of {path!r} from its suffix; set the format "
        f"('sklearn' for {'/'.join(SKLEARN_SUFFIXES)}, 'torch' for {'/'.join(TORCH_SUFFIXES)})"
    )


def load_classifier(name: str, path: str, fmt: str = "auto") -> FeatureClassifier:
    fmt = detect_format(path) if fmt == "auto" else fmt
    data = UPath(path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if fmt == "sklearn":
        predict, dim = _sklearn(data, path)
    elif fmt == "torch":
        predict, dim = _torch_mlp(data, path)
    else:
        raise ValueError(f"unknown classifier format {fmt!r} (sklearn, torch or auto)")
    return FeatureClassifier(name, path, fmt, sha, dim, predict)


def _sklearn(data: bytes, path: str):
    import joblib  # scikit-learn's own dependency; only needed for this format

    model = joblib.load(io.BytesIO(data))
    if not hasattr(model, "predict_proba"):
        raise TypeError(f"{path}: {type(model).__name__} has no predict_proba")
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [0, 1])]
    positive = next((i for i, c in enumerate(classes) if c in (1, True, "1", "positive")), len(classes) - 1)
    dim = getattr(model, "n_features_in_", None)
    return (lambda x: model.predict_proba(x)[:, positive]), (int(dim) if dim is not None else None)


_LAYER = re.compile(r"^(.*)\.(weight|bias)$")


def _torch_mlp(data: bytes, path: str):
    import torch

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state_dict, got {type(state).__name__}")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _LAYER.match(key)
        if not m:
            raise ValueError(f"{path}: unexpected state_dict entry {key!r} (only Linear layers)")
        layers.setdefault(m.group(1), {})[m.group(2)] = tensor.float()
    linears = []
    for prefix, params in layers.items():  # state_dict keeps module order
        weight = params.get("weight")
        if weight is None or weight.ndim != 2:
            raise ValueError(f"{path}: {prefix} is not a Linear layer (only Linear layers are supported)")
        linears.append((weight, params.get("bias")))
    if not linears:
        raise ValueError(f"{path}: empty state_dict")
    for (w1, _), (w2, _) in zip(linears, linears[1:]):
        if w1.shape[0] != w2.shape[1]:
            raise ValueError(f"{path}: layer shapes do not chain ({tuple(w1.shape)} -> {tuple(w2.shape)})")
    outputs = linears[-1][0].shape[0]
    if outputs not in (1, 2):
        raise ValueError(f"{path}: last layer has {outputs} outputs; expected 1 (sigmoid) or 2 (softmax)")

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        h = torch.as_tensor(np.array(x, dtype=np.float32, copy=True))  # polars hands out read-only views
        for i, (w, b) in enumerate(linears):
            h = torch.nn.functional.linear(h, w, b)
            if i < len(linears) - 1:
                h = torch.relu(h)
        p = torch.sigmoid(h[:, 0]) if outputs == 1 else torch.softmax(h, dim=1)[:, 1]
        return p.numpy()

    return predict, int(linears[0][0].shape[1])
