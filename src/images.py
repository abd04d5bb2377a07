"""Read face images robustly and split identity folders into train, val and test folders.

``read_image`` decodes any image that Pillow reads into an upright 8-bit BGR array (the OpenCV
convention) and raises ImageReadError with a short reason code for files it cannot use.

``split_identities`` turns ``<raw_dir>/<identity>/<image>`` into
``<out_dir>/{train,val,test}/<identity>/<image>`` with a seeded random choice of images per
identity. Val and test get real images only. A train split with fewer than ``n_train`` real
images is filled up with augmented copies of that identity's own train images (see
src/augmentation.py), so no image crosses splits.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from src.augmentation import augment_image
from src.feature_io import SPLITS
from src.preparation_summary import (
    StepSummary,
    new_record,
    read_json,
    record_path,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Images whose shorter side is below this many pixels are skipped as "too_small": a face in
# them is too small for the detector and for a 112x112 crop.
MIN_IMAGE_SIDE = 32
# Transparent pixels are blended onto this color (white, as most image viewers show them).
ALPHA_BACKGROUND_RGB = (255, 255, 255)
AUGMENTED_PREFIX = "augmented_"
AUGMENTED_JPEG_QUALITY = 95
SPLIT_RECORDS_DIR = ".split_records"
SPLIT_SUMMARY_FILE = "split_summary.json"
SPLIT_SETTINGS_FILE = "split_settings.json"

# Exceptions that Pillow's decoders raise for damaged files (truncated data, bad headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


class ImageReadError(ValueError):
    """An image file that cannot be used; ``reason`` is a short code counted in summaries."""

    def __init__(self, path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class SplitSettingsError(ValueError):
    """A split folder written with other settings than the current ones."""


@dataclass
class DecodedImage:
    """An upright uint8 BGR image and the conversions applied to get there."""

    bgr: np.ndarray
    conversions: tuple[str, ...] = ()


# --------------------------------------------------------------------------- reading
def read_image(path: str | os.PathLike) -> DecodedImage:
    """Read an image file as upright 8-bit BGR; raise ImageReadError with a reason code.

    Reasons: ``unreadable`` (the file cannot be opened), ``not_an_image``, ``corrupt`` (the
    decoder failed, for example on a truncated JPEG), ``too_large`` (over Pillow's
    decompression-bomb limit) and ``too_small`` (shorter side below MIN_IMAGE_SIDE).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageReadError(path, "unreadable", str(error)) from error
    return decode_image(data, path)


def decode_image(data: bytes, name: str | os.PathLike = "<bytes>") -> DecodedImage:
    """Decode encoded image bytes as ``read_image`` does; ``name`` appears in errors."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise ImageReadError(name, "not_an_image", "Pillow cannot identify the format") from error
    except Image.DecompressionBombError as error:
        raise ImageReadError(name, "too_large", str(error)) from error
    except _DECODE_ERRORS as error:
        raise ImageReadError(name, "corrupt", str(error)) from error
    try:
        # load() decodes all pixel data, so truncated files fail here rather than later.
        image.load()
    except _DECODE_ERRORS as error:
        raise ImageReadError(name, "corrupt", str(error)) from error

    conversions: list[str] = []
    image = _apply_exif_orientation(image, name, conversions)
    rgb = _to_rgb_array(image, conversions)
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageReadError(name, "too_small", f"{width}x{height} pixels, minimum side is {MIN_IMAGE_SIDE}")
    return DecodedImage(np.ascontiguousarray(rgb[:, :, ::-1]), tuple(conversions))


def _apply_exif_orientation(image: Image.Image, name, conversions: list[str]) -> Image.Image:
    # Pillow does not apply the EXIF orientation tag on its own. (OpenCV 5.1's imread and
    # imdecode do, but this reader uses Pillow to detect truncated files.)
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS as error:
        logger.warning("%s: unreadable EXIF data (%s); using the image as stored", name, error)
        return image
    if orientation in (None, 1):
        return image
    transposed = ImageOps.exif_transpose(image)
    conversions.append("exif_orientation")
    return transposed


def _to_rgb_array(image: Image.Image, conversions: list[str]) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        # Mode "I" also contains 8-bit data in some files, so only values above 255 are scaled.
        if mode != "I" or values.max(initial=0) > 255:
            values = values >> 8
        gray = np.clip(values, 0, 255).astype(np.uint8)
        conversions.append("16_bit")
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        conversions.append("float")
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND_RGB + (255,))
        conversions.append("alpha")
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(image)
    conversions.append({"L": "grayscale", "1": "grayscale", "CMYK": "cmyk"}.get(mode, mode.lower()))
    return np.asarray(image.convert("RGB"))


def encode_image(bgr: np.ndarray, suffix: str, jpeg_quality: int = AUGMENTED_JPEG_QUALITY) -> bytes:
    """Encode a BGR image as ``suffix`` (".jpg" or ".png") bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(suffix, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {bgr.shape} image as {suffix}")
    return buffer.tobytes()


# --------------------------------------------------------------------------- listing
def list_identity_dirs(root: str | os.PathLike) -> list[str]:
    """Return the names of the non-hidden folders in ``root``, sorted."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))


def list_image_files(folder: str | os.PathLike) -> tuple[list[str], int]:
    """Return the image file names in ``folder`` (sorted) and the count of other files ignored.

    Hidden files (names starting with ".") are ignored without being counted. Image files are
    recognized by extension (IMAGE_EXTENSIONS, any case); whether they decode is checked later.
    """
    images, ignored = [], 0
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            images.append(entry.name)
        else:
            ignored += 1
    return sorted(images), ignored


def list_split_images(root: str | os.PathLike, identity: str) -> list[str]:
    """Return ``<split>/<identity>/<name>`` for every image of ``identity`` under ``root``'s split folders."""
    keys = []
    for split in SPLITS:
        folder = Path(root) / split / identity
        if folder.is_dir():
            keys.extend(f"{split}/{identity}/{name}" for name in list_image_files(folder)[0])
    return keys


def identity_rng(seed: int, identity: str) -> np.random.Generator:
    """Return the random generator of one identity: the same for a seed whatever else runs."""
    return np.random.default_rng([seed, zlib.crc32(identity.encode("utf-8"))])


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target``, or copy it where the filesystem refuses links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# --------------------------------------------------------------------------- split
@dataclass
class SplitSettings:
    """Image counts and augmentation settings of the split step."""

    n_train: int = 20
    n_val: int = 5
    n_test: int = 5
    min_train_real: int = 5
    augmentations: tuple[str, ...] = ("flip", "rotate", "crop", "brightness")
    seed: int = 0

    @property
    def min_images(self) -> int:
        """Minimum number of readable images an identity needs to be kept."""
        return self.min_train_real + self.n_val + self.n_test

    @property
    def n_total(self) -> int:
        """Images per kept identity across the three splits, augmented ones included."""
        return self.n_train + self.n_val + self.n_test

    def to_dict(self) -> dict:
        """Return the settings as JSON-ready values."""
        return {
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "min_train_real": self.min_train_real,
            "augmentations": list(self.augmentations),
            "seed": self.seed,
        }


def split_identities(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: SplitSettings,
    *,
    dataset: str = "",
    overwrite: bool = False,
    max_identities: int | None = None,
    progress: bool = True,
) -> dict:
    """Split ``raw_dir``'s identity folders into ``out_dir``/{train,val,test} and return the summary.

    Identities are processed in sorted order until ``max_identities`` are kept. A finished
    identity (one with a record in ``out_dir/.split_records``) is not redone. ``overwrite``
    first deletes the split folders and records in ``out_dir``. The summary is also written to
    ``out_dir/split_summary.json``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(
            f"raw image folder not found: {raw_dir}; set raw_dir of the dataset in the config to a "
            "folder with one subfolder of images per identity"
        )
    records_dir = out_dir / SPLIT_RECORDS_DIR
    if overwrite:
        _remove_split_output(out_dir)
    _check_split_settings(out_dir, settings)

    summary = StepSummary("split", dataset, {"raw_dir": str(raw_dir), **settings.to_dict()})
    identities = list_identity_dirs(raw_dir)
    logger.info("split: %d identity folders in %s", len(identities), raw_dir)
    summary.extra["identity_folders"] = {"total": len(identities), "visited": 0}
    bar = tqdm(identities, desc="split", unit="identity", disable=not progress)
    for identity in bar:
        if max_identities is not None and summary.identities_kept >= max_identities:
            break
        summary.extra["identity_folders"]["visited"] += 1
        previous = read_json(record_path(records_dir, identity))
        if previous is not None:
            summary.add_record(previous, resumed=True)
            continue

        files, ignored = list_image_files(raw_dir / identity)
        summary.ignored_files += ignored
        if not files:
            summary.skip_identity(identity, "no_images")
            continue
        if len(files) < settings.min_images:
            summary.skip_identity(identity, "too_few_images")
            continue

        record = _split_one_identity(raw_dir / identity, out_dir, identity, files, settings, summary)
        write_json_atomic(record_path(records_dir, identity), record)
        summary.add_record(record)
    bar.close()
    return summary.write(out_dir / SPLIT_SUMMARY_FILE)


def _remove_split_output(out_dir: Path) -> None:
    for name in (*SPLITS, SPLIT_RECORDS_DIR):
        if (out_dir / name).exists():
            logger.info("split: overwrite requested, deleting %s", out_dir / name)
            shutil.rmtree(out_dir / name)
    (out_dir / SPLIT_SETTINGS_FILE).unlink(missing_ok=True)


def _check_split_settings(out_dir: Path, settings: SplitSettings) -> None:
    settings_path = out_dir / SPLIT_SETTINGS_FILE
    stored = read_json(settings_path)
    current = settings.to_dict()
    if stored is not None and stored != current:
        changed = sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))
        differences = ", ".join(f"{key}: {stored.get(key)!r} -> {current.get(key)!r}" for key in changed)
        raise SplitSettingsError(
            f"{out_dir} was split with different settings ({differences}); "
            "pass --overwrite to split again, or set data_dir to another folder"
        )
    write_json_atomic(settings_path, current)


def _split_one_identity(
    source_dir: Path, out_dir: Path, identity: str, files: list[str], settings: SplitSettings, summary: StepSummary
) -> dict:
    """Choose, verify and place one identity's images; return its record."""
    record = new_record(identity)
    rng = identity_rng(settings.seed, identity)
    chosen: list[tuple[str, DecodedImage]] = []
    for name in rng.permutation(np.array(files, dtype=object)):
        if len(chosen) == settings.n_total:
            break
        try:
            decoded = read_image(source_dir / name)
        except ImageReadError as error:
            record["skipped_images"][f"{identity}/{name}"] = error.reason
            summary.log_image_skip(error.reason, str(source_dir / name), error.detail)
            continue
        summary.images_processed += 1
        if decoded.conversions:
            record["converted_images"][f"{identity}/{name}"] = list(decoded.conversions)
        chosen.append((str(name), decoded))

    if len(chosen) < settings.min_images:
        record["status"] = "skipped"
        record["reason"] = "too_few_readable_images"
        logger.info(
            "split: skipped identity %s: %d readable images, at least %d required",
            identity, len(chosen), settings.min_images,
        )
        return record

    val = chosen[: settings.n_val]
    test = chosen[settings.n_val : settings.n_val + settings.n_test]
    train = chosen[settings.n_val + settings.n_test :]
    for split, items in (("train", train), ("val", val), ("test", test)):
        split_dir = out_dir / split / identity
        if split_dir.exists():
            # Left over from an interrupted run: the identity had no record yet.
            shutil.rmtree(split_dir)
        split_dir.mkdir(parents=True)
        for name, _ in items:
            link_or_copy(source_dir / name, split_dir / name)
        record["images"][split] = sorted(name for name, _ in items)

    if len(train) < settings.n_train and settings.augmentations:
        augmented = _augment_train_split(out_dir / "train" / identity, train, settings, rng)
        record["augmented_images"] = augmented
        record["images"]["train"] = sorted(record["images"]["train"] + list(augmented))
    return record


def _augment_train_split(
    train_dir: Path, train: list[tuple[str, DecodedImage]], settings: SplitSettings, rng: np.random.Generator
) -> dict:
    """Write augmented copies of the real train images until the split contains ``n_train``.

    Sources are taken in turn from a random order, so each real image is used about equally.
    Returns {augmented file name: parameters}.
    """
    n_missing = settings.n_train - len(train)
    order = rng.permutation(len(train))
    augmented = {}
    for index in range(n_missing):
        source_name, source = train[order[index % len(train)]]
        image, params = augment_image(source.bgr, list(settings.augmentations), rng)
        name = f"{AUGMENTED_PREFIX}{index:02d}_from_{Path(source_name).stem}.jpg"
        (train_dir / name).write_bytes(encode_image(image, ".jpg"))
        augmented[name] = {"source": source_name, **params}
    return augmented
