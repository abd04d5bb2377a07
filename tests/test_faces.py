"""Tests for face detection, the face rules and 5-point alignment (src/faces.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import (
    ARCFACE_MODEL,
    REPO_ROOT,
    YUNET_MODEL,
    lfw_images,
    requires_shared_faces,
    two_face_image,
    write_problem_images,
)

from src.extraction import EmbeddingModel
from src.faces import (
    ARCFACE_TEMPLATE,
    Face,
    RetinaFaceDetector,
    YuNetDetector,
    align_dataset,
    align_face,
    choose_face,
    estimate_similarity,
    faces_from_retinaface,
)
from src.images import read_image


@pytest.fixture(scope="module")
def yunet():
    if not YUNET_MODEL.is_file():
        pytest.skip(f"YuNet model not found at {YUNET_MODEL}")
    return YuNetDetector(YUNET_MODEL, score_threshold=0.7)


@pytest.fixture(scope="module")
def arcface():
    if not ARCFACE_MODEL.is_file():
        pytest.skip(f"w600k_mbf model not found at {ARCFACE_MODEL}")
    return EmbeddingModel(ARCFACE_MODEL, input_mean=127.5, input_std=127.5, threads=2)


def _face(x: float, y: float, size: float) -> Face:
    return Face(box=np.array([x, y, size, size]), landmarks=np.zeros((5, 2)), score=0.9)


# --------------------------------------------------------------------------- geometry
def test_estimate_similarity_recovers_transform():
    rng = np.random.default_rng(0)
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = rng.uniform(0, 100, size=(5, 2))
    target = scale * source @ rotation.T + shift
    matrix = estimate_similarity(source, target)
    assert np.allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    assert np.allclose(matrix[:, 2], shift, atol=1e-9)


def test_estimate_similarity_least_squares():
    rng = np.random.default_rng(1)
    source = ARCFACE_TEMPLATE * 2.0 + rng.normal(scale=3.0, size=(5, 2)) + 40.0

    def error(matrix):
        return float(((source @ matrix[:, :2].T + matrix[:, 2] - ARCFACE_TEMPLATE) ** 2).sum())

    best = estimate_similarity(source, ARCFACE_TEMPLATE)
    for _ in range(50):
        a, b, tx, ty = rng.normal(scale=1e-3, size=4)
        step = np.array([[a, -b, tx], [b, a, ty]])
        assert error(best + step) >= error(best)


def test_estimate_similarity_rejects_coincident_points():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_estimate_similarity_never_reflects():
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    matrix = estimate_similarity(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


# --------------------------------------------------------------------------- face rules
def test_choose_face_rules():
    small_center = _face(140, 90, 40)
    large_corner = _face(0, 0, 100)
    shape = (220, 320, 3)
    assert choose_face([small_center, large_corner], "single", shape) == (None, "multiple_faces")
    assert choose_face([small_center], "single", shape) == (small_center, None)
    assert choose_face([small_center, large_corner], "largest", shape) == (large_corner, None)
    assert choose_face([large_corner, small_center], "center", shape) == (small_center, None)
    for rule in ("single", "largest", "center"):
        assert choose_face([], rule, shape) == (None, "no_face")
    with pytest.raises(ValueError, match="nearest"):
        choose_face([small_center], "nearest", shape)


def test_faces_from_retinaface_order():
    result = {
        "face_1": {
            "score": 0.99,
            "facial_area": [10, 20, 110, 140],
            "landmarks": {
                "right_eye": [40.0, 60.0], "left_eye": [80.0, 61.0], "nose": [60.0, 80.0],
                "mouth_right": [45.0, 105.0], "mouth_left": [75.0, 106.0],
            },
        }
    }
    (face,) = faces_from_retinaface(result)
    assert face.box.tolist() == [10, 20, 100, 120]
    assert face.landmarks.tolist() == [[40, 60], [80, 61], [60, 80], [45, 105], [75, 106]]
    assert face.score == pytest.approx(0.99)
    assert faces_from_retinaface(()) == []


# --------------------------------------------------------------------------- detectors
@requires_shared_faces
def test_yunet_landmarks_in_arcface_order(yunet):
    image = read_image(lfw_images("George_W_Bush", 1)[0]).bgr
    faces = yunet.detect(image)
    assert len(faces) == 1
    eye_a, eye_b, nose, mouth_a, mouth_b = faces[0].landmarks
    assert eye_a[0] < eye_b[0]
    assert mouth_a[0] < mouth_b[0]
    assert max(eye_a[1], eye_b[1]) < nose[1] < min(mouth_a[1], mouth_b[1])


@requires_shared_faces
def test_yunet_large_image_scaled_back(yunet):
    image = read_image(lfw_images("George_W_Bush", 1)[0]).bgr
    large = cv2.resize(image, (1000, 1000), interpolation=cv2.INTER_CUBIC)
    # The detector scales a 1000x1000 image down to 640x640 itself.
    from_large = yunet.detect(large)[0]
    from_640 = yunet.detect(cv2.resize(large, (640, 640), interpolation=cv2.INTER_AREA))[0]
    assert np.allclose(from_large.landmarks, from_640.landmarks * 1000 / 640, atol=0.01)
    assert np.allclose(from_large.box, from_640.box * 1000 / 640, atol=0.01)


@requires_shared_faces
def test_yunet_no_face_and_tiny(yunet):
    noise = np.random.default_rng(0).integers(0, 256, size=(250, 250, 3), dtype=np.uint8)
    assert yunet.detect(noise) == []
    assert yunet.detect(np.full((40, 40, 3), 90, dtype=np.uint8)) == []


@requires_shared_faces
def test_exif_rotated_face_upright(yunet, tmp_path):
    write_problem_images(tmp_path, lfw_images("George_W_Bush", 1)[0])
    upright = read_image(tmp_path / "exif_rotated.jpg").bgr
    eye_a, eye_b = yunet.detect(upright)[0].landmarks[:2]
    assert abs(eye_b[0] - eye_a[0]) > 3 * abs(eye_b[1] - eye_a[1])
    stored = cv2.imdecode(np.fromfile(tmp_path / "exif_rotated.jpg", np.uint8),
                          cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    # With IMREAD_IGNORE_ORIENTATION, OpenCV returns the rotated pixels as stored.
    assert np.abs(stored.astype(int) - upright).mean() > 10


@requires_shared_faces
def test_two_faces_rules_pick_person(yunet, arcface):
    image = two_face_image("George_W_Bush", "Colin_Powell")
    faces = yunet.detect(image)
    assert len(faces) == 2
    assert choose_face(faces, "single", image.shape) == (None, "multiple_faces")

    references = {}
    for person in ("George_W_Bush", "Colin_Powell"):
        photo = read_image(lfw_images(person)[1]).bgr
        references[person] = arcface.embed([align_face(photo, yunet.detect(photo)[0].landmarks)])[0]
    for rule, person in (("center", "George_W_Bush"), ("largest", "Colin_Powell")):
        face, _ = choose_face(faces, rule, image.shape)
        embedding = arcface.embed([align_face(image, face.landmarks)])[0]
        others = [p for p in references if p != person]
        assert embedding @ references[person] > embedding @ references[others[0]] + 0.2, rule


@requires_shared_faces
def test_align_face_lands_on_template(yunet):
    # A frontal face: its landmarks fit the template up to a few pixels.
    image = read_image(lfw_images("George_W_Bush", 1)[0]).bgr
    landmarks = yunet.detect(image)[0].landmarks
    aligned = align_face(image, landmarks)
    assert aligned.shape == (112, 112, 3)
    matrix = estimate_similarity(landmarks, ARCFACE_TEMPLATE)
    warped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.linalg.norm(warped - ARCFACE_TEMPLATE, axis=1).mean() < 4.0
    assert len(yunet.detect(aligned)) == 1


# --------------------------------------------------------------------------- retina-face
def test_retinaface_missing_weights_message(tmp_path):
    missing = tmp_path / "weights" / "retinaface.onnx"
    with pytest.raises(FileNotFoundError) as raised:
        RetinaFaceDetector(missing)
    message = str(raised.value)
    assert str(missing) in message
    assert "retinaface.onnx" in message
    assert "https://" in message
    assert "retinaface_weights" in message


def test_retinaface_import_keeps_keras():
    """Importing retina-face the project's way neither picks TensorFlow nor sets legacy Keras."""
    code = (
        "import json, os, sys\n"
        "from src.faces import import_retinaface\n"
        "import_retinaface()\n"
        "from retinaface.commons import backend_utils\n"
        "print(json.dumps({'engine': backend_utils.get_backend_engine(),"
        " 'legacy_keras': os.environ.get('TF_USE_LEGACY_KERAS'),"
        " 'tensorflow_imported': 'tensorflow' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DEEPFACE_BACKEND_ENGINE", "TF_USE_LEGACY_KERAS")}
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result == {"engine": "onnx", "legacy_keras": None, "tensorflow_imported": False}


def test_retinaface_other_engine_rejected():
    code = (
        "import os\n"
        "os.environ['DEEPFACE_BACKEND_ENGINE'] = 'tensorflow'\n"
        "from src.faces import import_retinaface\n"
        "try:\n"
        "    import_retinaface()\n"
        "except RuntimeError as error:\n"
        "    print('rejected:', error)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120, check=True).stdout
    assert "rejected:" in output
    assert "DEEPFACE_BACKEND_ENGINE" in output


# --------------------------------------------------------------------------- dataset
@requires_shared_faces
def test_align_dataset_single_rule(yunet, tmp_path):
    data = tmp_path / "data"
    for split, person in (("train", "George_W_Bush"), ("val", "Colin_Powell"), ("test", "Tony_Blair")):
        folder = data / split / "Person One"
        folder.mkdir(parents=True)
        # Tony_Blair_0001 shows a second face, so the files from the second one on are used.
        for path in lfw_images(person)[1:3]:
            (folder / path.name).write_bytes(path.read_bytes())
    train = data / "train" / "Person One"
    cv2.imwrite(str(train / "two_faces.png"), two_face_image())
    cv2.imwrite(str(train / "no_face.png"), np.random.default_rng(1).integers(0, 256, (250, 250, 3), dtype=np.uint8))
    write_problem_images(train, lfw_images("George_W_Bush")[5])

    summary = align_dataset(data, yunet, face_rule="single", dataset="test", progress=False)
    assert summary["identities"]["kept"] == 1
    assert summary["images"]["skipped"] == {
        "corrupt": 1, "multiple_faces": 1, "no_face": 1, "not_an_image": 1, "too_small": 1,
    }
    assert summary["images"]["converted"] == {
        "16_bit": 1, "alpha": 1, "cmyk": 1, "exif_orientation": 1, "grayscale": 1,
    }
    # Two plain images plus five converted ones in train, two in each of val and test.
    assert summary["images"]["kept"] == {"train": 7, "val": 2, "test": 2}
    assert summary["faces_detected_per_image"] == {"0": 1, "1": 11, "2": 1}
    aligned = sorted(os.listdir(data / "aligned" / "train" / "Person One"))
    assert "cmyk.png" in aligned
    assert "two_faces.png" not in aligned
    for name in aligned:
        image = cv2.imread(str(data / "aligned" / "train" / "Person One" / name))
        assert image.shape == (112, 112, 3), name

    rerun = align_dataset(data, yunet, face_rule="single", progress=False)
    assert rerun["identities"]["resumed_from_earlier_runs"] == 1
    assert rerun["images"]["skipped"] == summary["images"]["skipped"]

    # A changed split (here: one image fewer) makes the identity stale, so it is aligned again.
    (train / "no_face.png").unlink()
    changed = align_dataset(data, yunet, face_rule="single", progress=False)
    assert changed["identities"]["resumed_from_earlier_runs"] == 0
    assert "no_face" not in changed["images"]["skipped"]
