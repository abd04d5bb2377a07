"""Shared fixtures. Sections: feature-level pipeline (below); image preparation (further down)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "onnx")

from src.config import config_from_dict  # noqa: E402
from src.feature_io import save_features  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


# --------------------------------------------------------------------------- feature-level pipeline
def write_toy_features(root: Path, n_classes: int = 12, dim: int = 16, n_per_split=(8, 3, 3),
                       n_groups: int = 3, noise: float = 0.35, seed: int = 0) -> Path:
    """Write clustered, L2-normalized toy features for ``n_classes`` identities under ``root``.

    Identities come in ``n_groups`` groups whose centers are close, so k-means has structure to
    find; ``noise`` sets how far samples spread around their identity's center.
    """
    rng = np.random.default_rng(seed)
    group_centers = rng.normal(size=(n_groups, dim))
    for label in range(n_classes):
        center = group_centers[label % n_groups] + 0.45 * rng.normal(size=dim)
        center /= np.linalg.norm(center)
        for split, count in zip(("train", "val", "test"), n_per_split):
            samples = center + noise * rng.normal(size=(count, dim)) / np.sqrt(dim)
            samples /= np.linalg.norm(samples, axis=1, keepdims=True)
            save_features(root / split / f"id_{label:04d}.npz", samples)
    return root


def toy_config(tmp_path: Path, **values):
    """Return a validated config over toy features written under ``tmp_path``."""
    features = tmp_path / "features" / "toy"
    if not features.exists():
        write_toy_features(features, **values.pop("toy", {}))
    else:
        values.pop("toy", None)
    data = {
        "dataset_name": "toy",
        "datasets": {"toy": {"features_dir": str(features)}},
        "results_dir": str(tmp_path / "results"),
        "n_classes": 12,
        "n_clusters": 3,
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 0.01,
    }
    data.update(values)
    return config_from_dict(data, base_dir=tmp_path)


@pytest.fixture
def toy(tmp_path):
    """A config over 12 toy identities in 3 groups, 16-d features, 8/3/3 samples."""
    return toy_config(tmp_path)
