"""End-to-end tests of the command line ``python3 -m src.prepare_faces`` on real LFW images."""

from __future__ import annotations

import json
import logging
import os

import cv2
import numpy as np
import pytest
from conftest import (
    ARCFACE_MODEL,
    LFW_DIR,
    YUNET_MODEL,
    lfw_images,
    make_raw_identity,
    requires_shared_faces,
    two_face_image,
    write_problem_images,
)

from src.config import ConfigError
from src.feature_io import feature_path, list_identities, load_features
from src.prepare_faces import default_steps, main, parse_steps
from src.recordio import write_insightface_recordio

pytestmark = requires_shared_faces


def _write_config(tmp_path, datasets: dict, **preparation) -> str:
    """Write config/config.json under ``tmp_path`` with the shared models and ``preparation`` overrides."""
    config = {
        "datasets": datasets,
        "preparation": {
            "detector_model": str(YUNET_MODEL),
            "recognition_model": str(ARCFACE_MODEL),
            "input_mean": 127.5,
            "input_std": 127.5,
            "onnx_threads": 2,
            **preparation,
        },
    }
    path = tmp_path / "config" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_default_steps_per_dataset():
    assert default_steps({"source": "folders"}) == ["split", "align", "extract"]
    assert default_steps({"source": "recordio", "aligned": True}) == ["unpack", "split", "extract"]
    assert parse_steps("extract, split", {"source": "folders"}, "lfw") == ["split", "extract"]
    with pytest.raises(ConfigError, match="detect"):
        parse_steps("split,detect", {}, "lfw")
    with pytest.raises(ConfigError, match="already aligned"):
        parse_steps("align", {"aligned": True}, "ms1m")
    with pytest.raises(ConfigError, match="recordio"):
        parse_steps("unpack", {"source": "folders"}, "lfw")


def test_lfw_three_identities_default_settings(tmp_path):
    lfw_preparation = {"face_rule": "center", "recognition_model": str(ARCFACE_MODEL)}
    config = _write_config(tmp_path, {"lfw": {"raw_dir": str(LFW_DIR), "preparation": lfw_preparation}})
    status = main(["--config", config, "--dataset-name", "lfw", "--identities", "3", "--no-progress"])
    assert status == 0

    features = tmp_path / "features" / "lfw"
    identities = list_identities(features, "train")
    assert len(identities) == 3
    for identity in identities:
        for split, count in (("train", 20), ("val", 5), ("test", 5)):
            assert load_features(feature_path(features, split, identity), dim=512).shape == (count, 512)

    split_summary = _read(tmp_path / "data" / "lfw" / "split_summary.json")
    # The first identity in name order, Abdullah_Gul, has 19 images: 9 train images are real.
    assert split_summary["images"]["augmented"] == 11
    align_summary = _read(tmp_path / "data" / "lfw" / "align_summary.json")
    assert align_summary["images"]["kept_total"] == 90
    assert align_summary["this_run"]["detection_images_per_second"] > 0
    extract_summary = _read(features / "summary.json")
    assert extract_summary["images"]["kept"] == {"train": 60, "val": 15, "test": 15}

    rerun = main(["--config", config, "--dataset-name", "lfw", "--identities", "3", "--no-progress"])
    assert rerun == 0
    assert _read(features / "summary.json")["identities"]["resumed_from_earlier_runs"] == 3


def test_problem_inputs_do_not_stop_run(tmp_path):
    raw = tmp_path / "raw"
    # Two plain and eight problem files: 7 readable images, fewer than the 8 a split needs, so
    # every file is read and every problem is counted.
    problems = make_raw_identity(raw, "Åsa Problem Files", "Colin_Powell", 2)
    expected = write_problem_images(problems, lfw_images("Colin_Powell")[5])
    (problems / "notes.txt").write_text("not an image\n")
    (problems / ".DS_Store").write_bytes(b"\x00\x01")
    two_faces = make_raw_identity(raw, "George Two Faces", "George_W_Bush", 6)
    cv2.imwrite(str(two_faces / "two_faces.jpg"), two_face_image("George_W_Bush", "Colin_Powell"))
    cv2.imwrite(str(two_faces / "no_face.jpg"),
                np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8))
    (raw / "Empty Person").mkdir()
    make_raw_identity(raw, "Too Few", "Laura_Bush", 3)
    make_raw_identity(raw, ".Hidden Person", "Laura_Bush", 8)
    config = _write_config(
        tmp_path, {"faces": {"raw_dir": str(raw)}},
        n_train=4, n_val=2, n_test=2, min_train_real=2, face_rule="center",
    )
    status = main(["--config", config, "--dataset-name", "faces", "--no-progress"])
    assert status == 0

    split = _read(tmp_path / "data" / "faces" / "split_summary.json")
    assert split["identities"]["kept"] == 2
    assert split["identities"]["skipped"] == {"no_images": 1, "too_few_images": 1}
    assert split["images"]["skipped"] == {"corrupt": 1, "not_an_image": 1, "too_small": 1}
    converted = sorted(kind for kind in expected.values() if kind not in ("corrupt", "not_an_image", "too_small"))
    assert sorted(split["images"]["converted"]) == converted
    assert split["images"]["ignored_non_image_files"] == 1

    align = _read(tmp_path / "data" / "faces" / "align_summary.json")
    assert align["images"]["skipped"] == {"no_face": 1}
    assert align["faces_detected_per_image"]["2"] >= 1
    assert sorted(align["images"]["converted"]) == converted

    extract = _read(tmp_path / "features" / "faces" / "summary.json")
    assert extract["identities"]["kept"] == 2
    assert extract["images"]["kept_total"] == 15
    assert sorted(list_identities(tmp_path / "features" / "faces", "test")) == ["George Two Faces", "Åsa Problem Files"]


def test_recordio_dataset_end_to_end(tmp_path):
    """An aligned RecordIO dataset: unpack, split with flip and brightness, extract without detection."""
    faces = tmp_path / "lfw_aligned"
    config = _write_config(tmp_path, {"lfw": {"raw_dir": str(LFW_DIR)}}, face_rule="center")
    assert main(["--config", config, "--dataset-name", "lfw", "--identities", "2", "--steps", "split,align",
                 "--no-progress"]) == 0
    identities = []
    for identity, count in zip(sorted(os.listdir(tmp_path / "data" / "lfw" / "aligned" / "train")), (8, 7)):
        folder = tmp_path / "data" / "lfw" / "aligned" / "train" / identity
        identities.append([(folder / name).read_bytes() for name in sorted(os.listdir(folder))[:count]])
    faces.mkdir()
    write_insightface_recordio(identities, faces / "train.rec", faces / "train.idx")

    datasets = {"rec": {"raw_dir": str(faces), "source": "recordio", "aligned": True,
                        "preparation": {"augmentations": ["flip", "brightness"]}}}
    config = _write_config(tmp_path, datasets, n_train=6, n_val=1, n_test=1, min_train_real=4)
    assert main(["--config", config, "--dataset-name", "rec", "--no-progress"]) == 0
    features = tmp_path / "features" / "rec"
    assert list_identities(features, "train") == ["000000", "000001"]
    assert load_features(feature_path(features, "train", "000001"), dim=512).shape == (6, 512)
    assert _read(tmp_path / "data" / "rec" / "unpack_summary.json")["images"]["kept_total"] == 15
    assert _read(tmp_path / "data" / "rec" / "split_summary.json")["images"]["augmented"] == 1
    assert not (tmp_path / "data" / "rec" / "aligned").exists()


def test_cli_errors_name_the_fix(tmp_path, caplog):
    missing_model = {"recognition_model": str(tmp_path / "missing.onnx")}
    datasets = {"lfw": {"raw_dir": str(LFW_DIR), "preparation": missing_model}, "ms1m": {"raw_dir": "raw", "aligned": True}}
    config = _write_config(tmp_path, datasets)
    caplog.set_level(logging.ERROR)
    assert main(["--config", config, "--dataset-name", "ms1m", "--steps", "align"]) == 2
    assert "drop align from --steps" in caplog.text
    assert main(["--config", config, "--dataset-name", "lfw", "--identities", "0"]) == 2
    assert "--identities 0" in caplog.text
    assert main(["--config", config, "--dataset-name", "lfw", "--steps", "extract"]) == 2
    assert "missing.onnx" in caplog.text
    assert main(["--config", config, "--dataset-name", "synthetic"]) == 2
    assert "no images to prepare" in caplog.text
