"""Embed aligned faces with an ArcFace-style ONNX model and write per-identity feature files.

The model runs on onnxruntime's CPU provider. Its input name, layout (NCHW or NHWC), size and
batch dimension are read from the graph. Pixels are fed in RGB order as
``(pixel - input_mean) / input_std``, values that depend on the model:

- ``w600k_mbf.onnx`` (InsightFace buffalo_s): input_mean 127.5, input_std 127.5.
- ``arcfaceresnet100-8.onnx`` (ONNX model zoo): input_mean 0, input_std 1, because the graph
  itself subtracts 127.5 and scales by 1/128 (as InsightFace's fresnet training code does).
  NOTE: this file was not available to check; read the graph's first nodes to confirm.

Outputs are L2-normalized and written with src.feature_io.save_features to
``<features_dir>/<split>/<identity>.npz``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from src.faces import ALIGN_RECORDS_DIR, ALIGNED_DIR, list_split_identities
from src.feature_io import SPLITS, FeatureFileError, feature_path, load_features, save_features
from src.images import ImageReadError, list_image_files, list_split_images, read_image
from src.preparation_summary import StepSummary, new_record, read_json, record_path, write_json_atomic

logger = logging.getLogger(__name__)

EXTRACT_RECORDS_DIR = ".extract_records"
EXTRACT_SUMMARY_FILE = "summary.json"
DEFAULT_INPUT_SIZE = 112


class ModelInputError(ValueError):
    """A recognition model whose input is not a 4-D image tensor with 3 color channels."""


class EmbeddingModel:
    """An ArcFace-style ONNX recognition model that maps BGR face crops to L2-normalized embeddings."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        input_mean: float = 0.0,
        input_std: float = 1.0,
        threads: int = 0,
        batch_size: int = 32,
    ):
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"recognition model not found: {model_path}; download it (for example arcfaceresnet100-8.onnx "
                "from the ONNX model zoo) or set preparation.recognition_model in the config to an ONNX file"
            )
        options = ort.SessionOptions()
        # 0 lets onnxruntime choose (one thread per physical core).
        options.intra_op_num_threads = int(threads)
        # Errors only: models exported with a fixed output batch of 1 warn on every larger batch.
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.model_path = model_path
        self.input_mean = float(input_mean)
        self.input_std = float(input_std)
        self.threads = int(threads)

        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.layout, self.input_size, fixed_batch = _parse_input_shape(model_input.shape, model_path)
        self.output_name = self.session.get_outputs()[0].name
        self.batch_size = fixed_batch or int(batch_size)
        if fixed_batch and fixed_batch != batch_size:
            logger.info("%s has a fixed batch size of %d; embedding_batch_size=%d is ignored",
                        model_path.name, fixed_batch, batch_size)

    def describe(self) -> dict:
        """Return the model settings that a summary records."""
        return {
            "recognition_model": str(self.model_path),
            "input_name": self.input_name,
            "layout": self.layout,
            "input_size": list(self.input_size),
            "input_mean": self.input_mean,
            "input_std": self.input_std,
            "batch_size": self.batch_size,
            "intra_op_threads": self.threads,
        }

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """Return the model input for BGR uint8 images: resized, RGB, normalized, in the model's layout."""
        height, width = self.input_size
        batch = np.empty((len(images), height, width, 3), dtype=np.float32)
        for index, image in enumerate(images):
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            batch[index] = image[:, :, ::-1]
        batch = (batch - self.input_mean) / self.input_std
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch)

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """Return one L2-normalized float32 row per BGR image; rows with zero or non-finite norm are NaN."""
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = self.preprocess(images[start : start + self.batch_size])
            output = self.session.run([self.output_name], {self.input_name: batch})[0]
            outputs.append(np.asarray(output, dtype=np.float32).reshape(len(batch), -1))
        if not outputs:
            return np.empty((0, 0), dtype=np.float32)
        embeddings = np.concatenate(outputs)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        valid = np.isfinite(norms) & (norms > 0)
        return np.where(valid, embeddings / np.where(valid, norms, 1.0), np.nan).astype(np.float32)


def _parse_input_shape(shape: list, model_path: Path) -> tuple[str, tuple[int, int], int | None]:
    """Return (layout, (height, width), fixed batch size or None) of a 4-D image input."""
    if len(shape) != 4:
        raise ModelInputError(f"{model_path}: expected a 4-D image input, got shape {shape}")
    if shape[1] == 3:
        layout, height, width = "NCHW", shape[2], shape[3]
    elif shape[3] == 3:
        layout, height, width = "NHWC", shape[1], shape[2]
    else:
        raise ModelInputError(f"{model_path}: input shape {shape} has no dimension of 3 color channels "
                              "at position 1 (NCHW) or 3 (NHWC)")
    height = height if isinstance(height, int) and height > 0 else DEFAULT_INPUT_SIZE
    width = width if isinstance(width, int) and width > 0 else DEFAULT_INPUT_SIZE
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return layout, (height, width), batch


# --------------------------------------------------------------------------- dataset
def list_extraction_inputs(data_dir: str | os.PathLike, aligned_dataset: bool) -> tuple[Path, list[str], dict]:
    """Return (image root, identities, {image key: source}) that the extract step reads.

    Datasets that are already aligned are read from their split folders. Others are read from
    the align step's output, and each aligned face's source is the split image it came from.
    """
    data_dir = Path(data_dir)
    if aligned_dataset:
        return data_dir, list_split_identities(data_dir), {}
    image_root = data_dir / ALIGNED_DIR
    records_dir = image_root / ALIGN_RECORDS_DIR
    identities, sources = [], {}
    for identity in list_split_identities(data_dir):
        record = read_json(record_path(records_dir, identity))
        if record is None:
            continue
        identities.append(identity)
        sources.update(record.get("sources") or {})
    return image_root, identities, sources


def extract_dataset(
    data_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    model: EmbeddingModel,
    *,
    aligned_dataset: bool = False,
    dataset: str = "",
    overwrite: bool = False,
    max_identities: int | None = None,
    progress: bool = True,
) -> dict:
    """Embed every identity's faces and write ``features_dir/<split>/<identity>.npz``; return the summary.

    An identity whose three feature files load fine is not redone, unless ``overwrite`` is set
    or its input images differ from those its record lists. An identity left without any face
    in one split gets no files and is counted as skipped. The summary is also written to
    ``features_dir/summary.json``.
    """
    data_dir, features_dir = Path(data_dir), Path(features_dir)
    records_dir = features_dir / EXTRACT_RECORDS_DIR
    if overwrite:
        _remove_extract_output(features_dir)
    image_root, identities, sources = list_extraction_inputs(data_dir, aligned_dataset)
    if max_identities is not None:
        identities = identities[:max_identities]
    if not identities:
        logger.warning("extract: no identities to embed in %s; run the split%s step first",
                       data_dir, "" if aligned_dataset else " and align")
    summary = StepSummary("extract", dataset, {"image_root": str(image_root), **model.describe()})

    todo, total = [], 0
    for identity in identities:
        inputs = list_split_images(image_root, identity)
        resumed = _load_finished_identity(features_dir, records_dir, identity, inputs)
        if resumed is not None:
            summary.add_record(resumed, resumed=True)
        else:
            todo.append(identity)
            total += len(inputs)
    logger.info("extract: %d identities to do (%d images), %d finished earlier",
                len(todo), total, summary.identities_resumed)

    bar = tqdm(total=total, desc="extract", unit="img", disable=not progress)
    for identity in todo:
        record, features = _embed_one_identity(image_root, identity, model, sources, summary, bar)
        write_json_atomic(record_path(records_dir, identity), record)
        for split in SPLITS:
            path = feature_path(features_dir, split, identity)
            if record["status"] == "kept":
                save_features(path, features[split], record["images"][split])
            else:
                path.unlink(missing_ok=True)
        summary.add_record(record)
    bar.close()
    return summary.write(features_dir / EXTRACT_SUMMARY_FILE)


def _remove_extract_output(features_dir: Path) -> None:
    """Delete the feature files and records in ``features_dir``, leaving other files alone."""
    logger.info("extract: overwrite requested, deleting the feature files in %s", features_dir)
    for split in SPLITS:
        split_dir = features_dir / split
        if split_dir.is_dir():
            for path in split_dir.glob("*.npz"):
                path.unlink()
    if (features_dir / EXTRACT_RECORDS_DIR).exists():
        shutil.rmtree(features_dir / EXTRACT_RECORDS_DIR)


def _load_finished_identity(features_dir: Path, records_dir: Path, identity: str, inputs: list[str]) -> dict | None:
    """Return the record of an identity whose feature files all load fine, else None.

    An identity whose record lists other input images than ``inputs`` (the images now on disk)
    is not finished either, because its features were computed from older images.
    """
    record = read_json(record_path(records_dir, identity))
    if record is not None and record.get("status") == "skipped" and record.get("inputs") == inputs:
        return record
    counts = {}
    for split in SPLITS:
        path = feature_path(features_dir, split, identity)
        if not path.exists():
            return None
        try:
            counts[split] = len(load_features(path))
        except FeatureFileError as error:
            logger.warning("extract: %s; embedding identity %s again", error, identity)
            return None
    if record is not None and record.get("inputs") not in (None, inputs):
        logger.info("extract: the images of %s changed since its features were written; embedding it again", identity)
        return None
    if record is None or any(len(record["images"].get(split, [])) != n for split, n in counts.items()):
        # Files written without a matching record (for example by an earlier version): count rows only.
        record = new_record(identity)
        record["images"] = {split: [""] * n for split, n in counts.items()}
    return record


def _embed_one_identity(image_root: Path, identity: str, model: EmbeddingModel, sources: dict,
                        summary: StepSummary, bar) -> tuple[dict, dict]:
    record = new_record(identity)
    record["inputs"] = list_split_images(image_root, identity)
    images, owners = [], []
    for split in SPLITS:
        folder = image_root / split / identity
        names = list_image_files(folder)[0] if folder.is_dir() else []
        for name in names:
            key = f"{split}/{identity}/{name}"
            try:
                decoded = read_image(folder / name)
            except ImageReadError as error:
                record["skipped_images"][sources.get(key, key)] = error.reason
                summary.log_image_skip(error.reason, str(folder / name), error.detail)
                bar.update(1)
                continue
            if decoded.conversions:
                record["converted_images"][sources.get(key, key)] = list(decoded.conversions)
            images.append(decoded.bgr)
            owners.append((split, sources.get(key, key)))

    start = time.perf_counter()
    embeddings = model.embed(images)
    summary.add_time("embedding", time.perf_counter() - start)
    summary.images_processed += len(images)
    bar.update(len(images))

    features = {split: [] for split in SPLITS}
    record["images"] = {split: [] for split in SPLITS}
    for row, (split, source) in zip(embeddings, owners):
        if not np.isfinite(row).all():
            record["skipped_images"][source] = "invalid_embedding"
            summary.log_image_skip("invalid_embedding", source, "zero or non-finite model output")
            continue
        features[split].append(row)
        record["images"][split].append(source)

    empty = [split for split in SPLITS if not features[split]]
    if empty:
        record["status"] = "skipped"
        record["reason"] = f"no_images_in_{empty[0]}"
        for split in SPLITS:
            for source in record["images"][split]:
                record["skipped_images"][source] = "identity_skipped"
        record["images"] = {}
        logger.info("extract: skipped identity %s: no usable face in split(s) %s", identity, ", ".join(empty))
        return record, {}
    return record, {split: np.stack(rows) for split, rows in features.items()}
