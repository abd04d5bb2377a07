"""Detect faces, pick the labeled one and warp it onto the 112x112 ArcFace template.

Detectors return faces with a box, a score and five landmarks in ArcFace order. As seen in the
image, that order is left eye, right eye, nose tip, left mouth corner and right mouth corner.
The detectors are:

- ``yunet``: OpenCV's YuNet through ``cv2.FaceDetectorYN``, fully offline.
- ``retinaface``: the ``retina-face`` package on its ONNX engine, with weights placed beforehand.

``align_dataset`` runs detection and alignment over the split folders that
src/images.py writes and stores one aligned PNG per kept image.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from src.config import FACE_RULES
from src.feature_io import SPLITS
from src.images import SPLIT_RECORDS_DIR, ImageReadError, encode_image, list_image_files, list_split_images, read_image
from src.preparation_summary import StepSummary, new_record, read_json, record_path, write_json_atomic

logger = logging.getLogger(__name__)

ALIGNED_SIZE = 112
# Landmark positions of the standard ArcFace (InsightFace) 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
# YuNet runs on a copy scaled down to this longer side; landmarks are scaled back, and the
# warp samples the full-resolution image.
DETECTION_MAX_SIDE = 640
YUNET_NMS_THRESHOLD = 0.3
YUNET_TOP_K = 5000
RETINAFACE_WEIGHTS_URL = "https://github.com/serengil/deepface_models/releases/download/v1.0/retinaface.onnx"
ALIGN_RECORDS_DIR = ".align_records"
ALIGNED_DIR = "aligned"
ALIGN_SUMMARY_FILE = "align_summary.json"


class RetinaFaceEngineError(RuntimeError):
    """The retina-face package would run on another engine than ONNX."""


@dataclass
class Face:
    """One detected face: box (x, y, width, height), landmarks (5, 2) in ArcFace order, score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return float(self.box[2] * self.box[3])

    @property
    def center(self) -> np.ndarray:
        """Box center (x, y)."""
        return np.array([self.box[0] + self.box[2] / 2.0, self.box[1] + self.box[3] / 2.0])


# --------------------------------------------------------------------------- detectors
class YuNetDetector:
    """YuNet face detector (``cv2.FaceDetectorYN``) for BGR images of any size."""

    def __init__(self, model_path: str | os.PathLike, score_threshold: float = 0.7):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"YuNet model not found: {model_path}; set preparation.detector_model to the path of "
                "face_detection_yunet_2023mar*.onnx (from the OpenCV model zoo)"
            )
        self.score_threshold = score_threshold
        # OpenCV 5.1 warns on every create() that its new DNN engine ignores target settings;
        # the warning is harmless, so it is hidden for this call.
        previous_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._detector = cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), score_threshold, YUNET_NMS_THRESHOLD, YUNET_TOP_K
            )
        finally:
            cv2.utils.logging.setLogLevel(previous_level)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Return the faces in a BGR image whose score reaches the threshold."""
        height, width = image.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(height, width))
        if scale < 1.0:
            image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        self._detector.setInputSize((image.shape[1], image.shape[0]))
        _, rows = self._detector.detect(image)
        if rows is None:
            return []
        # Each row: x, y, w, h, then (x, y) of right eye, left eye, nose tip, right and left mouth
        # corner of the person (the image's left side first), then the score.
        return [
            Face(box=row[0:4] / scale, landmarks=row[4:14].reshape(5, 2) / scale, score=float(row[14]))
            for row in rows.astype(np.float64)
        ]


class RetinaFaceDetector:
    """RetinaFace (ResNet50) from the ``retina-face`` package, run on its ONNX engine.

    The package downloads its weights on first use, but this class never does. It loads the ONNX
    file at ``weights_path`` itself and raises FileNotFoundError naming the file and where to put
    it when it is missing.

    NOTE: the tests cover the missing-weights error, the engine check and the conversion of the
    package's output, but not detection with the real weights, which were not available offline.
    """

    def __init__(self, weights_path: str | os.PathLike, score_threshold: float = 0.9):
        weights_path = Path(os.path.expanduser(str(weights_path)))
        if not weights_path.is_file():
            raise FileNotFoundError(
                f"RetinaFace weights not found: {weights_path.resolve()}. Download retinaface.onnx from "
                f"{RETINAFACE_WEIGHTS_URL} and save it as {weights_path.resolve()}, or set "
                "preparation.retinaface_weights in the config to the file's path"
            )
        module, onnx_model_class = import_retinaface()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(weights_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.score_threshold = score_threshold
        self._model = onnx_model_class(session)
        self._module = module

    def detect(self, image: np.ndarray) -> list[Face]:
        """Return the faces in a BGR image whose score reaches the threshold."""
        result = self._module.detect_faces(image, threshold=self.score_threshold, model=self._model)
        return faces_from_retinaface(result)


def import_retinaface():
    """Import the ``retina-face`` package on its ONNX engine; return (RetinaFace module, ONNX model class).

    Without DEEPFACE_BACKEND_ENGINE=onnx the package picks TensorFlow when it is installed and
    sets TF_USE_LEGACY_KERAS=1, which switches the whole process to legacy Keras.
    """
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "onnx")
    from retinaface.commons import backend_utils

    engine = backend_utils.get_backend_engine()
    if engine != "onnx":
        raise RetinaFaceEngineError(
            f"retina-face would run on {engine!r} because DEEPFACE_BACKEND_ENGINE="
            f"{os.environ.get('DEEPFACE_BACKEND_ENGINE')!r}; unset DEEPFACE_BACKEND_ENGINE or set it to 'onnx'"
        )
    # NOTE: importing retinaface.RetinaFace calls warnings.filterwarnings("ignore") for the
    # whole process (retina-face 0.0.19).
    from retinaface import RetinaFace
    from retinaface.model.retinaface_onnx_model import RetinaFace as OnnxRetinaFace

    return RetinaFace, OnnxRetinaFace


def faces_from_retinaface(result: dict) -> list[Face]:
    """Convert ``RetinaFace.detect_faces`` output to Face objects.

    retina-face names landmarks from the person's view, so its "right_eye" is on the image's
    left side, which is the first ArcFace template point.
    """
    faces = []
    if not isinstance(result, dict):
        return faces
    for entry in result.values():
        x1, y1, x2, y2 = (float(v) for v in entry["facial_area"])
        marks = entry["landmarks"]
        landmarks = np.array(
            [marks["right_eye"], marks["left_eye"], marks["nose"], marks["mouth_right"], marks["mouth_left"]],
            dtype=np.float64,
        )
        faces.append(Face(box=np.array([x1, y1, x2 - x1, y2 - y1]), landmarks=landmarks, score=float(entry["score"])))
    return faces


def create_detector(name: str, *, detector_model, retinaface_weights, min_face_score: float):
    """Return the detector named in the config: ``yunet`` or ``retinaface``."""
    if name == "yunet":
        return YuNetDetector(detector_model, min_face_score)
    if name == "retinaface":
        return RetinaFaceDetector(retinaface_weights, min_face_score)
    raise ValueError(f"invalid detector {name!r}: expected 'yunet' or 'retinaface'")


# --------------------------------------------------------------------------- face choice
def choose_face(faces: list[Face], rule: str, image_shape: tuple[int, ...]) -> tuple[Face | None, str | None]:
    """Pick the face to keep by ``rule``; return (face, None) or (None, skip reason).

    ``single`` keeps images with exactly one face, ``largest`` the face with the largest box and
    ``center`` the face whose box center is nearest the image center (LFW's labeled person).
    """
    if rule not in FACE_RULES:
        raise ValueError(f"invalid face rule {rule!r}: expected one of {list(FACE_RULES)}")
    if not faces:
        return None, "no_face"
    if rule == "single":
        return (faces[0], None) if len(faces) == 1 else (None, "multiple_faces")
    if rule == "largest":
        return max(faces, key=lambda face: face.area), None
    image_center = np.array([image_shape[1] / 2.0, image_shape[0] / 2.0])
    return min(faces, key=lambda face: float(np.linalg.norm(face.center - image_center))), None


# --------------------------------------------------------------------------- alignment
def estimate_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the 2x3 similarity transform (rotation, uniform scale, shift) mapping ``source`` to ``target``.

    Least squares over all points (Umeyama, 1991), the estimate that InsightFace's alignment
    gets from scikit-image's SimilarityTransform. Raises ValueError for coincident points.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError(f"expected two (n, 2) point arrays of equal shape, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centered, target_centered = source - source_mean, target - target_mean
    source_variance = (source_centered**2).sum() / len(source)
    if not np.isfinite(source_variance) or source_variance < 1e-12:
        raise ValueError("landmarks coincide or are not finite; no similarity transform exists")

    covariance = target_centered.T @ source_centered / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        # A reflection fits better; force a proper rotation instead.
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    scale = float(singular_values @ signs) / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp the face with these five landmarks onto the ArcFace template; return a size x size crop."""
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    matrix = estimate_similarity(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


# --------------------------------------------------------------------------- dataset
def list_split_identities(data_dir: str | os.PathLike) -> list[str]:
    """Return the identities that the split step finished in ``data_dir``, sorted.

    Without split records (split folders made by hand or by another tool), every identity
    folder under ``train`` counts.
    """
    data_dir = Path(data_dir)
    records_dir = data_dir / SPLIT_RECORDS_DIR
    if records_dir.is_dir():
        identities = []
        for path in sorted(records_dir.glob("*.json")):
            record = read_json(path)
            if record is not None and record.get("status") == "kept":
                identities.append(record["identity"])
        return sorted(identities)
    train_dir = data_dir / "train"
    if not train_dir.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir() and not entry.name.startswith("."))


def aligned_file_name(name: str, used: set[str]) -> str:
    """Return the PNG name of the aligned face of image ``name``, unique among ``used``."""
    candidate = f"{Path(name).stem}.png"
    return candidate if candidate not in used else f"{name}.png"


def align_dataset(
    data_dir: str | os.PathLike,
    detector,
    *,
    face_rule: str = "single",
    dataset: str = "",
    overwrite: bool = False,
    max_identities: int | None = None,
    progress: bool = True,
) -> dict:
    """Detect and align the faces of every split image in ``data_dir``; return the summary.

    Reads ``data_dir/{train,val,test}/<identity>/`` and writes
    ``data_dir/aligned/{train,val,test}/<identity>/<stem>.png`` (112x112 BGR). An identity is
    done once its record exists in ``data_dir/aligned/.align_records`` and lists the split
    images now on disk. ``overwrite`` first deletes the aligned folder. The summary is also
    written to ``data_dir/align_summary.json``.
    """
    data_dir = Path(data_dir)
    aligned_root = data_dir / ALIGNED_DIR
    records_dir = aligned_root / ALIGN_RECORDS_DIR
    if overwrite and aligned_root.exists():
        logger.info("align: overwrite requested, deleting %s", aligned_root)
        shutil.rmtree(aligned_root)

    identities = list_split_identities(data_dir)
    if max_identities is not None:
        identities = identities[:max_identities]
    if not identities:
        logger.warning("align: no split identities in %s; run the split step first", data_dir)
    settings = {"detector": type(detector).__name__, "face_rule": face_rule,
                "min_face_score": getattr(detector, "score_threshold", None)}
    summary = StepSummary("align", dataset, settings)

    todo, total = [], 0
    for identity in identities:
        inputs = list_split_images(data_dir, identity)
        previous = read_json(record_path(records_dir, identity))
        if previous is not None and previous.get("inputs") == inputs:
            summary.add_record(previous, resumed=True)
            continue
        if previous is not None:
            logger.info("align: the split images of %s changed since it was aligned; aligning it again", identity)
        todo.append(identity)
        total += len(inputs)
    logger.info("align: %d identities to do (%d images), %d finished earlier", len(todo), total,
                summary.identities_resumed)

    bar = tqdm(total=total, desc="align", unit="img", disable=not progress)
    for identity in todo:
        record = _align_one_identity(data_dir, aligned_root, identity, detector, face_rule, summary, bar)
        write_json_atomic(record_path(records_dir, identity), record)
        summary.add_record(record)
    bar.close()
    return summary.write(data_dir / ALIGN_SUMMARY_FILE)


def _align_one_identity(data_dir: Path, aligned_root: Path, identity: str, detector, face_rule: str,
                        summary: StepSummary, bar) -> dict:
    record = new_record(identity)
    # The split images this record was made from; a rerun redoes the identity when they change.
    record["inputs"] = list_split_images(data_dir, identity)
    record["sources"] = {}
    face_counts: Counter = Counter()
    for split in SPLITS:
        source_dir = data_dir / split / identity
        target_dir = aligned_root / split / identity
        if target_dir.exists():
            # Left over from an interrupted run: the identity had no record yet.
            shutil.rmtree(target_dir)
        target_dir.mkdir(parents=True)
        names = list_image_files(source_dir)[0] if source_dir.is_dir() else []
        kept, used = [], set()
        for name in names:
            bar.update(1)
            key = f"{split}/{identity}/{name}"
            try:
                decoded = read_image(source_dir / name)
            except ImageReadError as error:
                record["skipped_images"][key] = error.reason
                summary.log_image_skip(error.reason, str(source_dir / name), error.detail)
                continue
            if decoded.conversions:
                record["converted_images"][key] = list(decoded.conversions)

            start = time.perf_counter()
            faces = detector.detect(decoded.bgr)
            summary.add_time("detection", time.perf_counter() - start)
            summary.images_processed += 1
            face_counts[str(len(faces)) if len(faces) < 4 else "4+"] += 1

            face, reason = choose_face(faces, face_rule, decoded.bgr.shape)
            if face is None:
                record["skipped_images"][key] = reason
                summary.log_image_skip(reason, str(source_dir / name), f"{len(faces)} faces detected")
                continue
            try:
                aligned = align_face(decoded.bgr, face.landmarks)
            except ValueError as error:
                record["skipped_images"][key] = "invalid_landmarks"
                summary.log_image_skip("invalid_landmarks", str(source_dir / name), str(error))
                continue
            aligned_name = aligned_file_name(name, used)
            used.add(aligned_name)
            (target_dir / aligned_name).write_bytes(encode_image(aligned, ".png"))
            record["sources"][f"{split}/{identity}/{aligned_name}"] = key
            kept.append(aligned_name)
        record["images"][split] = kept
    record["face_counts"] = dict(face_counts)
    return record
