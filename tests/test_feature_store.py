"""Packed feature store, per-part training rows, float16 storage and XLA selection."""

import json
import threading

import numpy as np
import pytest

from src.config import ConfigError
from src.data_utility import cluster_data, compute_class_centers, prepare_data
from src.feature_io import save_features
from src.feature_store import PackedSplit, _locked, ensure_packed, open_packed, store_dir
from src.post_process import SubmodelBank, compute_scores

from conftest import toy_config


def test_packed_matches_files(tmp_path):
    packed = prepare_data(toy_config(tmp_path, feature_store="packed"))
    files = prepare_data(toy_config(tmp_path, feature_store="files"))
    assert packed.identities == files.identities
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(np.asarray(getattr(packed, name)), getattr(files, name), err_msg=name)
    np.testing.assert_allclose(packed.class_centers, files.class_centers, atol=1e-6)


def test_packed_store_grows_by_prefix(tmp_path):
    small = prepare_data(toy_config(tmp_path, n_classes=5))
    index = json.loads((store_dir(tmp_path / "features" / "toy", "float32") / "index.json").read_text())
    assert len(index["identities"]) == 5
    large = prepare_data(toy_config(tmp_path, n_classes=12))
    np.testing.assert_array_equal(np.asarray(large.x_train[: len(small.y_train)]), np.asarray(small.x_train))
    index = json.loads((store_dir(tmp_path / "features" / "toy", "float32") / "index.json").read_text())
    assert len(index["identities"]) == 12
    expected = compute_class_centers(np.asarray(large.x_train), large.y_train, 12)
    np.testing.assert_allclose(large.class_centers, expected, atol=1e-6)


def test_packed_store_rebuilt_after_change(tmp_path):
    config = toy_config(tmp_path, n_classes=4)
    prepare_data(config)
    features_dir = tmp_path / "features" / "toy"
    changed = np.zeros((8, 16), dtype=np.float32)
    changed[:, 0] = 1.0
    save_features(features_dir / "train" / "id_0000.npz", changed)
    data = prepare_data(config)
    np.testing.assert_array_equal(np.asarray(data.x_train[:8]), changed)
    np.testing.assert_allclose(data.class_centers[0], changed[0])


def test_training_rows_read_one_part(tmp_path):
    config = toy_config(tmp_path, method="ISM", n_clusters=3)
    packed = prepare_data(config)
    files = prepare_data(toy_config(tmp_path, method="ISM", n_clusters=3, feature_store="files"))
    for part in cluster_data(packed, config):
        x, y = packed.training_rows(part)
        x_files, y_files = files.training_rows(part)
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, x_files)
        np.testing.assert_array_equal(y, y_files)
        np.testing.assert_array_equal(np.bincount(y), [8] * len(part))


def test_open_waits_while_another_process_extends(tmp_path):
    features_dir = tmp_path / "features" / "toy"
    toy_config(tmp_path)
    identities = [f"id_{i:04d}" for i in range(12)]
    folder = ensure_packed(features_dir, identities[:5])
    index = (folder / "index.json").read_text()
    opened = []
    # An extending writer holds the lock and has removed the index until its rows are written.
    with _locked(folder):
        (folder / "index.json").unlink()
        reader = threading.Thread(target=lambda: opened.append(open_packed(features_dir, identities[:5])))
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive()
        assert not opened
        (folder / "index.json").write_text(index)
    reader.join(timeout=30)
    splits, centers = opened[0]
    assert splits["train"].n_classes == 5
    assert centers.shape == (5, 16)


def test_class_rows_in_class_order(tmp_path):
    features_dir = tmp_path / "features" / "toy"
    toy_config(tmp_path)
    identities = [f"id_{i:04d}" for i in range(12)]
    split = PackedSplit(ensure_packed(features_dir, identities), "train", 12)
    rows = split.class_rows(np.array([3, 0]))
    np.testing.assert_array_equal(rows, np.r_[24:32, 0:8])


def test_float16_storage_halves_bytes(tmp_path):
    half = prepare_data(toy_config(tmp_path, feature_dtype="float16"))
    full = prepare_data(toy_config(tmp_path, feature_dtype="float32"))
    assert half.x_train.dtype == np.float16
    assert half.x_train.nbytes * 2 == full.x_train.nbytes
    np.testing.assert_allclose(np.asarray(half.x_test, dtype=np.float32), full.x_test, atol=1e-3)
    # Class centers come from the float32 files in both cases.
    np.testing.assert_allclose(half.class_centers, full.class_centers, atol=1e-6)
    x, _ = half.training_rows(np.arange(3))
    assert x.dtype == np.float32


def test_float16_files_store(tmp_path):
    data = prepare_data(toy_config(tmp_path, feature_dtype="float16", feature_store="files"))
    assert data.x_val.dtype == np.float16


@pytest.mark.parametrize("key, value", [("feature_store", "disk"), ("feature_dtype", "int8"), ("jit_compile", "yes")])
def test_invalid_store_settings(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        toy_config(tmp_path, **{key: value})


def test_scores_without_centers_match(tmp_path):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 4)]
    weights = [w / np.linalg.norm(w, axis=1, keepdims=True) for w in weights]
    bank = SubmodelBank(weights=weights, parts=[np.array([0, 2, 4]), np.array([1, 3, 5, 6])])
    queries = rng.normal(size=(20, 8)).astype(np.float16)
    full = compute_scores(bank, rng.normal(size=(7, 8)), queries, block_size=6)
    alone = compute_scores(bank, None, queries, block_size=6)
    np.testing.assert_array_equal(full.maxmax_class, alone.maxmax_class)
    np.testing.assert_array_equal(full.maxmax_score, alone.maxmax_score)
    assert alone.similarity_class is None


def test_xla_choice():
    from src.training import training_flop, use_xla

    assert training_flop(512, 10, 100, 2) == 6 * 512 * 10 * 100 * 2
    assert use_xla(True, 512, 10)
    assert not use_xla(False, 512, 100_000)
    assert use_xla("auto", 512, 10_000)
    assert not use_xla("auto", 512, 5_000)


def test_submodel_records_memory(tmp_path):
    from src.experiment import run_experiment

    [result] = run_experiment(toy_config(tmp_path, method="ISM", n_clusters=4, jit_compile=True, epochs=1))
    records = [json.loads(p.read_text()) for p in sorted((result.run_dir / "submodels").glob("*.json"))]
    assert len(records) == 4
    assert all(record["jit_compile"] is True for record in records)
    assert all(record["rss_mib_after"] > 0 for record in records)
    assert result.method.top1_accuracy > 0.8

