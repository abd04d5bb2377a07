"""Tests for image reading, augmentation and the train/val/test split (src/images.py, src/augmentation.py)."""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
from conftest import lfw_images, make_raw_identity, requires_shared_faces, write_problem_images

from src.augmentation import BRIGHTNESS_RANGE, MAX_ROTATION_DEGREES, MIN_CROP_FRACTION, augment_image
from src.images import (
    AUGMENTED_PREFIX,
    ImageReadError,
    SplitSettings,
    SplitSettingsError,
    list_image_files,
    read_image,
    split_identities,
)

pytestmark = requires_shared_faces

SMALL = SplitSettings(n_train=4, n_val=2, n_test=2, min_train_real=2, seed=0)


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# --------------------------------------------------------------------------- reading
def test_read_image_plain_jpeg():
    decoded = read_image(lfw_images("George_W_Bush", 1)[0])
    assert decoded.bgr.shape == (250, 250, 3)
    assert decoded.bgr.dtype == np.uint8
    assert decoded.conversions == ()


def test_read_image_problem_files(tmp_path):
    source = lfw_images("George_W_Bush", 1)[0]
    expected = write_problem_images(tmp_path, source)
    reference = read_image(source).bgr
    for name, outcome in expected.items():
        if outcome in ("corrupt", "not_an_image", "too_small"):
            with pytest.raises(ImageReadError) as raised:
                read_image(tmp_path / name)
            assert raised.value.reason == outcome, name
            continue
        decoded = read_image(tmp_path / name)
        assert decoded.bgr.shape == (250, 250, 3), name
        assert decoded.bgr.dtype == np.uint8, name
        assert outcome in decoded.conversions, name
        if outcome in ("grayscale", "16_bit"):
            gray = cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY)
            assert _mean_abs_diff(decoded.bgr[:, :, 0], gray) < 3.0, name
        else:
            assert _mean_abs_diff(decoded.bgr, reference) < 4.0, name


def test_read_image_exif_rotation_upright(tmp_path):
    source = lfw_images("Colin_Powell", 1)[0]
    write_problem_images(tmp_path, source)
    decoded = read_image(tmp_path / "exif_rotated.jpg")
    reference = read_image(source).bgr
    assert decoded.conversions == ("exif_orientation",)
    assert _mean_abs_diff(decoded.bgr, reference) < 4.0
    # The stored pixels are rotated, so ignoring the tag would give a very different image.
    assert _mean_abs_diff(np.rot90(decoded.bgr), reference) > 10.0


def test_read_image_transparent_pixels_white(tmp_path):
    from PIL import Image

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :32] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half_transparent.png")
    decoded = read_image(tmp_path / "half_transparent.png")
    assert decoded.conversions == ("alpha",)
    assert decoded.bgr[0, 0].tolist() == [30, 20, 10]
    assert decoded.bgr[0, 63].tolist() == [255, 255, 255]


def test_read_image_rgb_16bit_png(tmp_path):
    reference = read_image(lfw_images("Tony_Blair", 1)[0]).bgr
    cv2.imwrite(str(tmp_path / "rgb16.png"), reference.astype(np.uint16) * 257)
    decoded = read_image(tmp_path / "rgb16.png")
    assert _mean_abs_diff(decoded.bgr, reference) < 1.0


def test_read_image_missing_and_empty(tmp_path):
    with pytest.raises(ImageReadError) as raised:
        read_image(tmp_path / "missing.jpg")
    assert raised.value.reason == "unreadable"
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError) as raised:
        read_image(tmp_path / "empty.jpg")
    assert raised.value.reason == "not_an_image"


def test_list_image_files_ignores_hidden(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", ".hidden.jpg", "c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "subfolder.jpg").mkdir()
    images, ignored = list_image_files(tmp_path)
    assert images == ["a.png", "b.JPG", "c.jpeg"]
    assert ignored == 1


# --------------------------------------------------------------------------- augmentation
def test_augment_image_parameters_in_range():
    image = read_image(lfw_images("George_W_Bush", 1)[0]).bgr
    rng = np.random.default_rng(3)
    for _ in range(20):
        augmented, params = augment_image(image, ["flip", "rotate", "crop", "brightness"], rng)
        assert augmented.shape == image.shape
        assert augmented.dtype == np.uint8
        assert abs(params["rotate_degrees"]) <= MAX_ROTATION_DEGREES
        assert MIN_CROP_FRACTION <= params["crop_fraction"] <= 1.0
        assert BRIGHTNESS_RANGE[0] <= params["brightness"] <= BRIGHTNESS_RANGE[1]
        assert _mean_abs_diff(augmented, image) > 1.0


def test_augment_image_flip_only_always_flips():
    image = read_image(lfw_images("George_W_Bush", 1)[0]).bgr
    rng = np.random.default_rng(0)
    for _ in range(5):
        augmented, params = augment_image(image, ["flip"], rng)
        assert params == {"flip": True}
        assert np.array_equal(augmented, image[:, ::-1])


def test_augment_image_rejects_unknown_name():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="blur"):
        augment_image(image, ["blur"], np.random.default_rng(0))


# --------------------------------------------------------------------------- split
@pytest.fixture
def raw_dir(tmp_path):
    """A raw folder: two full identities with non-ASCII names, one needing augmentation, and bad cases."""
    raw = tmp_path / "raw"
    make_raw_identity(raw, "José Núñez", "Colin_Powell", 10)
    make_raw_identity(raw, "Ana María", "Tony_Blair", 7)
    make_raw_identity(raw, "Few Images", "Laura_Bush", 5)
    make_raw_identity(raw, ".hidden person", "Laura_Bush", 10)
    (raw / "Empty Person").mkdir()
    (raw / "stray_file.jpg").write_bytes(lfw_images("Laura_Bush", 1)[0].read_bytes())
    bad = make_raw_identity(raw, "Bad Files", "Gerhard_Schroeder", 6)
    (bad / "truncated.jpg").write_bytes(lfw_images("Gerhard_Schroeder")[7].read_bytes()[:3000])
    (bad / "not_an_image.jpg").write_text("not an image\n")
    (bad / "notes.txt").write_text("ignored\n")
    (bad / ".DS_Store").write_bytes(b"\x00")
    return raw


def _split_files(out_dir, identity):
    return {split: sorted(os.listdir(out_dir / split / identity)) for split in ("train", "val", "test")}


def test_split_layout_and_counts(raw_dir, tmp_path):
    out = tmp_path / "data"
    summary = split_identities(raw_dir, out, SMALL, dataset="test", progress=False)

    assert sorted(os.listdir(out / "train")) == ["Ana María", "Bad Files", "José Núñez"]
    assert summary["identities"]["kept"] == 3
    assert summary["identities"]["skipped"] == {"no_images": 1, "too_few_images": 1}
    assert summary["images"]["skipped"] == {"corrupt": 1, "not_an_image": 1}
    assert summary["images"]["ignored_non_image_files"] == 1
    assert summary["images"]["kept"] == {"train": 12, "val": 6, "test": 6}
    assert summary["images"]["augmented"] == 3
    assert json.loads((out / "split_summary.json").read_text(encoding="utf-8")) == summary

    for identity in ("José Núñez", "Ana María", "Bad Files"):
        files = _split_files(out, identity)
        assert [len(files[s]) for s in ("train", "val", "test")] == [4, 2, 2], identity
        real = [set(f for f in files[s] if not f.startswith(AUGMENTED_PREFIX)) for s in ("train", "val", "test")]
        assert not real[0] & real[1], identity
        assert not real[0] & real[2], identity
        assert not real[1] & real[2], identity
        for split in ("val", "test"):
            for name in files[split]:
                assert not name.startswith(AUGMENTED_PREFIX)
                assert (raw_dir / identity / name).is_file()


def test_split_augments_from_own_train_images(raw_dir, tmp_path):
    out = tmp_path / "data"
    split_identities(raw_dir, out, SMALL, progress=False)
    files = _split_files(out, "Ana María")
    augmented = [name for name in files["train"] if name.startswith(AUGMENTED_PREFIX)]
    real_train = [name for name in files["train"] if not name.startswith(AUGMENTED_PREFIX)]
    assert len(real_train) == 3
    assert len(augmented) == 1
    source_stem = augmented[0].split("_from_", 1)[1].rsplit(".", 1)[0]
    assert f"{source_stem}.jpg" in real_train
    decoded = read_image(out / "train" / "Ana María" / augmented[0])
    assert decoded.bgr.shape == (250, 250, 3)


def test_split_real_images_are_linked(raw_dir, tmp_path):
    out = tmp_path / "data"
    split_identities(raw_dir, out, SMALL, progress=False)
    name = _split_files(out, "José Núñez")["val"][0]
    assert os.path.samefile(out / "val" / "José Núñez" / name, raw_dir / "José Núñez" / name)


def test_split_seeded_choice(raw_dir, tmp_path):
    first = tmp_path / "first"
    second = tmp_path / "second"
    third = tmp_path / "third"
    split_identities(raw_dir, first, SMALL, progress=False)
    split_identities(raw_dir, second, SMALL, progress=False)
    split_identities(raw_dir, third, dataclasses.replace(SMALL, seed=1), progress=False)
    assert _split_files(first, "José Núñez") == _split_files(second, "José Núñez")
    assert _split_files(first, "José Núñez") != _split_files(third, "José Núñez")


def test_split_rerun_skips_finished(raw_dir, tmp_path):
    out = tmp_path / "data"
    split_identities(raw_dir, out, SMALL, progress=False)
    kept_file = out / "train" / "José Núñez" / _split_files(out, "José Núñez")["train"][0]
    mtime = kept_file.stat().st_mtime_ns
    # Simulate an interruption inside "Ana María": no record, a stray partial file.
    (out / ".split_records" / "Ana María.json").unlink()
    (out / "train" / "Ana María" / "partial.jpg").write_bytes(b"partial")

    summary = split_identities(raw_dir, out, SMALL, progress=False)
    assert summary["identities"]["resumed_from_earlier_runs"] == 2
    assert summary["identities"]["kept"] == 3
    assert kept_file.stat().st_mtime_ns == mtime
    assert "partial.jpg" not in os.listdir(out / "train" / "Ana María")
    assert len(_split_files(out, "Ana María")["train"]) == 4


def test_split_changed_settings_rejected(raw_dir, tmp_path):
    out = tmp_path / "data"
    split_identities(raw_dir, out, SMALL, progress=False)
    changed = SplitSettings(n_train=5, n_val=2, n_test=2, min_train_real=2)
    with pytest.raises(SplitSettingsError, match="n_train: 4 -> 5.*--overwrite"):
        split_identities(raw_dir, out, changed, progress=False)
    summary = split_identities(raw_dir, out, changed, overwrite=True, progress=False)
    assert summary["identities"]["resumed_from_earlier_runs"] == 0
    assert len(_split_files(out, "José Núñez")["train"]) == 5


def test_split_max_identities(raw_dir, tmp_path):
    summary = split_identities(raw_dir, tmp_path / "data", SMALL, max_identities=1, progress=False)
    assert summary["identities"]["kept"] == 1
    assert os.listdir(tmp_path / "data" / "train") == ["Ana María"]


def test_split_without_augmentations_keeps_real_only(raw_dir, tmp_path):
    settings = SplitSettings(n_train=4, n_val=2, n_test=2, min_train_real=2, augmentations=())
    split_identities(raw_dir, tmp_path / "data", settings, progress=False)
    assert _split_files(tmp_path / "data", "Ana María")["train"] == sorted(
        f for f in _split_files(tmp_path / "data", "Ana María")["train"] if not f.startswith(AUGMENTED_PREFIX)
    )
    assert len(_split_files(tmp_path / "data", "Ana María")["train"]) == 3


def test_split_missing_raw_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw_dir"):
        split_identities(tmp_path / "missing", tmp_path / "data", SMALL, progress=False)

