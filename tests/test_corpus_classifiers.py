"""NSFW / face classifiers on CLIP features: both weight formats, thresholds, and what 'off' means."""

import numpy as np
import polars as pl
import pytest
import torch

from mmc4_assets.classify.features import FeatureClassifier, load_classifier
from mmc4_assets.classify.shard import score_features
from mmc4_assets.publish.corpus_rules import ImageScore, ShardRules, apply_corpus_rules
from mmc4_assets.stats import StepStats

DIM = 16


def _features(n=400, seed=0):
    """Unit vectors; the 'positive' class leans on feature 0 (a stand-in for a concept direction)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    y = (x[:, 0] > 0.3).astype(np.int64)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def train_torch_mlp(path, outputs=1, seed=0):
    """A tiny MLP trained on synthetic features, saved as a state_dict (MMC4's NSFW model shape)."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend (2 s -> 0.3 s on a busy 2-core box)
    try:
        return _train(path, outputs, seed)
    finally:
        torch.set_num_threads(threads)


def _train(path, outputs, seed):
    x, y = _features(seed=seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, outputs)
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(200):  # plain gradient descent: torch.optim's import alone costs seconds
        model.zero_grad()
        out = model(xt)
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], yt.float())
            if outputs == 1
            else torch.nn.functional.cross_entropy(out, yt)
        )
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    model.eval()
    torch.save(model.state_dict(), path)
    return model


@pytest.mark.parametrize("outputs", [1, 2])
def test_torch_state_dict_mlp_loads_and_classifies(tmp_path, outputs):
    path = tmp_path / "nsfw.pt"
    model = train_torch_mlp(path, outputs)
    clf = load_classifier("nsfw", str(path))
    x, y = _features(seed=1)
    p = clf.predict_proba(x)
    assert clf.format == "torch" and clf.input_dim == DIM and len(clf.sha256) == 64
    assert ((p > 0.5) == y).mean() > 0.9
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    want = torch.sigmoid(logits[:, 0]) if outputs == 1 else torch.softmax(logits, 1)[:, 1]
    np.testing.assert_allclose(p, want.numpy(), atol=1e-5)


def test_sklearn_logistic_regression_loads_from_joblib(tmp_path):
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = _features()
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, tmp_path / "face.joblib")
    clf = load_classifier("face", str(tmp_path / "face.joblib"))
    xt, _ = _features(seed=2)
    np.testing.assert_allclose(clf.predict_proba(xt), model.predict_proba(xt)[:, 1], rtol=1e-5)
    assert clf.format == "sklearn" and clf.input_dim == DIM


def test_wrong_feature_dimension_and_unsupported_weights_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    train_torch_mlp(path)
    with pytest.raises(ValueError, match="16-d CLIP features, got 8-d"):
        load_classifier("nsfw", str(path)).predict_proba(np.zeros((2, 8), np.float32))
    torch.save({"norm.weight": torch.ones(16)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a Linear layer"):
        load_classifier("nsfw", str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_classifier("nsfw", str(tmp_path / "weights.onnx"))


def _fixed(name, probabilities):
    """A classifier returning given probabilities, to pin thresholds exactly."""
    return FeatureClassifier(name, "fixed", "test", "0" * 64, None, lambda x: np.asarray(probabilities))


def test_threshold_is_strict_and_off_means_null():
    batch = pl.DataFrame(
        {
            "image_name": ["a", "b", "c"],
            "embedding": pl.Series(np.eye(3, DIM, dtype=np.float32), dtype=pl.Array(pl.Float32, DIM)),
        }
    )
    nsfw = _fixed("nsfw", np.array([0.1, 0.1001, 0.0], dtype=np.float32))
    rows = score_features(batch, nsfw, 0.1, None, 0.5, StepStats(), StepStats())
    assert rows["nsfw"].to_list() == [False, True, False]  # p = 0.1 kept, above dropped
    assert rows["p_face"].to_list() == [None] * 3 and rows["face"].to_list() == [None] * 3


def _row(images):
    return {
        "doc_id": "s:1",
        "url": "https://s.test/1",
        "text_list": ["A.", "B."],
        "image_info": [
            {
                "image_index": i,
                "image_name": n,
                "raw_url": f"https://i.test/{n}",
                "phash": f"{i:016x}",
                "matched_text_index": 0,
                "matched_sim": 0.3,
                "surplus": False,
            }
            for i, n in enumerate(images)
        ],
        "similarity_matrix": [[0.3, 0.1] for _ in images],
        "could_have_url_duplicate": 0,
    }


def test_publication_drops_nsfw_and_records_face_probability():
    scores = {
        "a": ImageScore(0.05, False, 0.91234, True),
        "b": ImageScore(0.5, True, 0.1, False),
        "c": ImageScore(0.0, False, 0.2, False),
    }
    rules = ShardRules("s", scores=scores, nsfw_on=True, face_on=True)
    images = StepStats()
    doc = apply_corpus_rules(_row(["a", "b", "c"]), rules, StepStats(), images)
    assert [im["image_name"] for im in doc["image_info"]] == ["a", "c"]
    assert doc["image_info"][0]["face_detections"] == {"p_face": 0.9123, "has_face": True}
    assert doc["image_info"][1]["face_detections"] == {"p_face": 0.2, "has_face": False}
    assert len(doc["similarity_matrix"]) == 2 and images.dropped == {"nsfw": 1}
    # filters off: nothing dropped, face_detections stays null as in MMC4's files without a detector
    off = apply_corpus_rules(_row(["a", "b"]), ShardRules("s", scores=scores), StepStats(), StepStats())
    assert [im["face_detections"] for im in off["image_info"]] == [None, None]
    # filter on but an image never scored: not let through
    unscored = apply_corpus_rules(_row(["z"]), ShardRules("s", nsfw_on=True), docs := StepStats(), StepStats())
    assert unscored is None and docs.dropped == {"no_image_after_corpus_rules": 1}
