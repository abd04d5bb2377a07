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


# --------------------------------------------------------------------------- image preparation
# Real LFW images and ONNX models are read in place from the shared folder next to the
# repository. Tests that need them skip when it is absent.
LFW_DIR = SHARED / "faces" / "lfw"
YUNET_MODEL = SHARED / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
ARCFACE_MODEL = SHARED / "models" / "w600k_mbf.onnx"

requires_shared_faces = pytest.mark.skipif(
    not (LFW_DIR.is_dir() and YUNET_MODEL.is_file() and ARCFACE_MODEL.is_file()),
    reason=f"needs LFW images and the YuNet and w600k_mbf ONNX models under {SHARED}",
)


def lfw_images(person: str, count: int | None = None) -> list[Path]:
    """Return the first ``count`` LFW image paths of ``person`` (all when None), sorted."""
    paths = sorted((LFW_DIR / person).glob("*.jpg"))
    return paths if count is None else paths[:count]


def make_raw_identity(raw_dir: Path, identity: str, person: str, count: int) -> Path:
    """Create ``raw_dir/identity`` holding copies of ``count`` LFW images of ``person``."""
    folder = raw_dir / identity
    folder.mkdir(parents=True, exist_ok=True)
    for path in lfw_images(person, count):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def two_face_image(center_person: str = "George_W_Bush", side_person: str = "Colin_Powell") -> np.ndarray:
    """Return a BGR image with two LFW faces: ``center_person`` near the middle, a larger ``side_person`` to the right.

    The canvas is 600x300 pixels. The center person's 250x250 photo spans x 50-300 (face center
    about 125 px from the image center), and the side person's photo, scaled to 300x300, spans
    x 300-600 (face center about 150 px away).
    """
    import cv2

    canvas = np.full((300, 600, 3), 128, dtype=np.uint8)
    center = cv2.imread(str(lfw_images(center_person, 1)[0]))
    side = cv2.resize(cv2.imread(str(lfw_images(side_person, 1)[0])), (300, 300))
    canvas[25:275, 50:300] = center
    canvas[:, 300:600] = side
    return canvas


def write_problem_images(folder: Path, source: Path) -> dict[str, str]:
    """Write one file per kind of awkward input into ``folder``, made from the LFW image ``source``.

    Returns {file name: expected outcome}: the ImageReadError reason for files that must be
    skipped, or the conversion that read_image must report for files that must be converted.
    """
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    original = Image.open(source).convert("RGB")
    data = source.read_bytes()
    expected = {}

    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "corrupt"
    (folder / "not_an_image.jpg").write_text("this is a text file with an image extension\n")
    expected["not_an_image.jpg"] = "not_an_image"
    original.resize((20, 20)).save(folder / "tiny.png")
    expected["tiny.png"] = "too_small"

    original.convert("L").save(folder / "grayscale.jpg", quality=95)
    expected["grayscale.jpg"] = "grayscale"
    original.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = "cmyk"
    rgba = original.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(folder / "rgba.png")
    expected["rgba.png"] = "alpha"
    gray16 = (np.asarray(original.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, format="PNG")
    (folder / "grayscale_16bit.png").write_bytes(buffer.getvalue())
    expected["grayscale_16bit.png"] = "16_bit"
    # The pixels are stored rotated 90 degrees counterclockwise. EXIF orientation 6 means "rotate
    # 90 degrees clockwise to display", so the upright image equals the original.
    exif = Image.Exif()
    exif[0x0112] = 6
    original.rotate(90, expand=True).save(folder / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
    expected["exif_rotated.jpg"] = "exif_orientation"
    return expected
