"""Tests for ONNX embedding and the resumable feature extraction (src/extraction.py)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from conftest import ARCFACE_MODEL, YUNET_MODEL, make_raw_identity, requires_shared_faces
from onnx import TensorProto, helper

from src.extraction import EmbeddingModel, extract_dataset
from src.faces import YuNetDetector, align_dataset
from src.feature_io import feature_path, load_features
from src.images import SplitSettings, read_image, split_identities


def _write_model(path, input_shape, *, normalize_in_graph: bool, layout: str = "NHWC") -> np.ndarray:
    """Write a tiny ONNX model: (optional Sub 127.5, Mul 1/128), mean color, MatMul to 4-d; return the weights."""
    weights = np.array([[1.0, 0.0, 0.5, -1.0], [0.0, 1.0, 0.5, 2.0], [0.0, 0.0, 1.0, 0.3]], dtype=np.float32)
    spatial_axes = [1, 2] if layout == "NHWC" else [2, 3]
    weights = weights[: input_shape[3 if layout == "NHWC" else 1]]
    nodes, current = [], "data"
    initializers = [helper.make_tensor("weights", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist())]
    if normalize_in_graph:
        initializers += [
            helper.make_tensor("mean", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0 / 128.0]),
        ]
        nodes += [helper.make_node("Sub", ["data", "mean"], ["centered"]),
                  helper.make_node("Mul", ["centered", "scale"], ["scaled"])]
        current = "scaled"
    nodes += [helper.make_node("ReduceMean", [current], ["pooled"], axes=spatial_axes, keepdims=0),
              helper.make_node("MatMul", ["pooled", "weights"], ["fc1"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [input_shape[0], 4])], initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)
    return weights


def _solid(bgr, size=112) -> np.ndarray:
    return np.tile(np.array(bgr, dtype=np.uint8), (size, size, 1))


# --------------------------------------------------------------------------- model
def test_model_nhwc_fixed_batch(tmp_path):
    """An NHWC model with batch 1 that normalizes inside its graph, like arcfaceresnet100-8."""
    path = tmp_path / "tiny_nhwc.onnx"
    weights = _write_model(path, [1, 112, 112, 3], normalize_in_graph=True)
    model = EmbeddingModel(path, input_mean=0.0, input_std=1.0, batch_size=32)
    assert model.layout == "NHWC"
    assert model.input_size == (112, 112)
    assert model.batch_size == 1
    images = [_solid((255, 0, 0)), _solid((10, 200, 30)), _solid((0, 0, 255), size=50)]
    embeddings = model.embed(images)
    for image, row in zip(images, embeddings):
        rgb = image[0, 0, ::-1].astype(np.float32)
        expected = ((rgb - 127.5) / 128.0) @ weights
        assert np.allclose(row, expected / np.linalg.norm(expected), atol=1e-5)


def test_model_nchw_dynamic_batch_normalizes(tmp_path):
    path = tmp_path / "tiny_nchw.onnx"
    weights = _write_model(path, ["batch", 3, 112, 112], normalize_in_graph=False, layout="NCHW")
    model = EmbeddingModel(path, input_mean=127.5, input_std=127.5, batch_size=2)
    assert (model.layout, model.batch_size, model.input_name) == ("NCHW", 2, "data")
    batch = model.preprocess([_solid((255, 0, 0))])
    assert batch.shape == (1, 3, 112, 112)
    # BGR blue becomes the last (blue) channel in RGB order: (255 - 127.5) / 127.5 = 1.
    assert batch[0, :, 0, 0].tolist() == [-1.0, -1.0, 1.0]
    embeddings = model.embed([_solid((0, 0, 255))] * 5)
    expected = np.array([1.0, -1.0, -1.0], dtype=np.float32) @ weights
    assert np.allclose(embeddings, expected / np.linalg.norm(expected), atol=1e-5)


def test_model_zero_output_is_nan(tmp_path):
    path = tmp_path / "tiny.onnx"
    _write_model(path, ["batch", 112, 112, 3], normalize_in_graph=False)
    embeddings = EmbeddingModel(path).embed([_solid((0, 0, 0)), _solid((9, 9, 9))])
    assert np.isnan(embeddings[0]).all()
    assert np.isfinite(embeddings[1]).all()


def test_model_rejects_bad_input(tmp_path):
    path = tmp_path / "two_channels.onnx"
    _write_model(path, ["batch", 2, 112, 112], normalize_in_graph=False, layout="NCHW")
    with pytest.raises(ValueError, match="color channels"):
        EmbeddingModel(path)
    with pytest.raises(FileNotFoundError, match="recognition_model"):
        EmbeddingModel(tmp_path / "missing.onnx")


@requires_shared_faces
def test_w600k_reads_graph_input():
    model = EmbeddingModel(ARCFACE_MODEL, input_mean=127.5, input_std=127.5, threads=2)
    assert model.describe()["input_name"] == "input.1"
    assert (model.layout, model.input_size, model.batch_size) == ("NCHW", (112, 112), 32)


# --------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def aligned_data(tmp_path_factory):
    """Split and aligned data for three LFW identities, 4/2/2 images each."""
    if not (YUNET_MODEL.is_file() and ARCFACE_MODEL.is_file()):
        pytest.skip("needs the shared YuNet and w600k_mbf models")
    root = tmp_path_factory.mktemp("extraction")
    raw = root / "raw"
    for identity, person in (("Colin Powell", "Colin_Powell"), ("Gerhard Schröder", "Gerhard_Schroeder"),
                             ("Laura Bush", "Laura_Bush")):
        make_raw_identity(raw, identity, person, 8)
    data = root / "data"
    split_identities(raw, data, SplitSettings(n_train=4, n_val=2, n_test=2, min_train_real=2), progress=False)
    align_dataset(data, YuNetDetector(YUNET_MODEL), face_rule="center", progress=False)
    return data


@pytest.fixture(scope="module")
def arcface():
    return EmbeddingModel(ARCFACE_MODEL, input_mean=127.5, input_std=127.5, threads=2)


def _copy_data(aligned_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(aligned_data, data)
    return data


@requires_shared_faces
def test_extract_writes_normalized_features(aligned_data, arcface, tmp_path):
    features = tmp_path / "features"
    summary = extract_dataset(aligned_data, features, arcface, dataset="test", progress=False)
    assert summary["identities"]["kept"] == 3
    assert summary["images"]["kept"] == {"train": 12, "val": 6, "test": 6}
    assert summary["this_run"]["embedding_images_per_second"] > 0
    assert (features / "summary.json").is_file()

    train = {}
    for identity in ("Colin Powell", "Gerhard Schröder", "Laura Bush"):
        for split, count in (("train", 4), ("val", 2), ("test", 2)):
            rows = load_features(feature_path(features, split, identity), dim=512)
            assert rows.shape == (count, 512)
            assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
        train[identity] = load_features(feature_path(features, "train", identity))
        with np.load(feature_path(features, "val", identity)) as archive:
            sources = archive["sources"].tolist()
        assert all(source.startswith(f"val/{identity}/") and source.endswith(".jpg") for source in sources)

    colin_val = load_features(feature_path(features, "val", "Colin Powell"))
    same = (colin_val @ train["Colin Powell"].T).mean()
    for other in ("Gerhard Schröder", "Laura Bush"):
        assert same > (colin_val @ train[other].T).mean() + 0.3, other


@requires_shared_faces
def test_extract_resumes_after_interruption(aligned_data, arcface, tmp_path):
    features = tmp_path / "features"
    extract_dataset(aligned_data, features, arcface, progress=False)
    untouched = feature_path(features, "train", "Laura Bush")
    mtime = untouched.stat().st_mtime_ns
    feature_path(features, "val", "Colin Powell").unlink()
    feature_path(features, "train", "Gerhard Schröder").write_bytes(b"half-written")

    summary = extract_dataset(aligned_data, features, arcface, progress=False)
    assert summary["identities"]["resumed_from_earlier_runs"] == 1
    assert summary["identities"]["kept"] == 3
    assert summary["this_run"]["images_processed"] == 16
    assert summary["images"]["kept"] == {"train": 12, "val": 6, "test": 6}
    assert untouched.stat().st_mtime_ns == mtime
    assert load_features(feature_path(features, "train", "Gerhard Schröder")).shape == (4, 512)
    assert load_features(feature_path(features, "val", "Colin Powell")).shape == (2, 512)

    again = extract_dataset(aligned_data, features, arcface, overwrite=True, progress=False)
    assert again["identities"]["resumed_from_earlier_runs"] == 0
    assert untouched.stat().st_mtime_ns != mtime


@requires_shared_faces
def test_extract_redoes_identity_with_changed_images(aligned_data, arcface, tmp_path):
    data = _copy_data(aligned_data, tmp_path)
    features = tmp_path / "features"
    extract_dataset(data, features, arcface, progress=False)
    untouched = feature_path(features, "train", "Laura Bush")
    mtime = untouched.stat().st_mtime_ns
    sorted((data / "aligned" / "train" / "Colin Powell").iterdir())[0].unlink()

    summary = extract_dataset(data, features, arcface, progress=False)
    assert summary["identities"]["resumed_from_earlier_runs"] == 2
    assert load_features(feature_path(features, "train", "Colin Powell")).shape == (3, 512)
    assert untouched.stat().st_mtime_ns == mtime


@requires_shared_faces
def test_extract_skips_identity_without_test_faces(aligned_data, arcface, tmp_path):
    data = _copy_data(aligned_data, tmp_path)
    for path in (data / "aligned" / "test" / "Laura Bush").iterdir():
        path.unlink()
    features = tmp_path / "features"
    summary = extract_dataset(data, features, arcface, progress=False)
    assert summary["identities"]["kept"] == 2
    assert summary["identities"]["skipped"] == {"no_images_in_test": 1}
    assert summary["images"]["skipped"] == {"identity_skipped": 6}
    for split in ("train", "val", "test"):
        assert not feature_path(features, split, "Laura Bush").exists()
    rerun = extract_dataset(data, features, arcface, progress=False)
    assert rerun["identities"]["resumed_from_earlier_runs"] == 3
    assert rerun["identities"]["skipped"] == {"no_images_in_test": 1}


@requires_shared_faces
def test_extract_already_aligned_dataset(aligned_data, arcface, tmp_path):
    """Datasets marked aligned are embedded straight from their split folders."""
    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        shutil.copytree(aligned_data / "aligned" / split, data / split)
    some_png = sorted((data / "val" / "Colin Powell").iterdir())[0]
    (data / "val" / "Colin Powell" / "truncated.png").write_bytes(some_png.read_bytes()[:300])
    features = tmp_path / "features"
    summary = extract_dataset(data, features, arcface, aligned_dataset=True, progress=False)
    assert summary["identities"]["kept"] == 3
    assert summary["images"]["skipped"] == {"corrupt": 1}
    with np.load(feature_path(features, "train", "Laura Bush")) as archive:
        assert all(s.startswith("train/Laura Bush/") and s.endswith(".png") for s in archive["sources"])
    assert sorted(os.listdir(features / "train")) == ["Colin Powell.npz", "Gerhard Schröder.npz", "Laura Bush.npz"]


@requires_shared_faces
def test_extract_matches_direct_embedding(aligned_data, arcface, tmp_path):
    features = tmp_path / "features"
    extract_dataset(aligned_data, features, arcface, max_identities=1, progress=False)
    assert os.listdir(features / "test") == ["Colin Powell.npz"]
    folder = aligned_data / "aligned" / "test" / "Colin Powell"
    direct = arcface.embed([read_image(folder / name).bgr for name in sorted(os.listdir(folder))])
    assert np.allclose(load_features(feature_path(features, "test", "Colin Powell")), direct, atol=1e-6)
