"""Tests of the synthetic feature generator and the synthetic dataset folder."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from src.config import ConfigError, config_from_dict
from src.feature_io import SPLITS, feature_path, list_identities, load_features
from src.synthetic import (
    CHUNK_SIZE,
    GENERATOR_FILE,
    LFW_ARCFACE_STATISTICS,
    GeneratorMismatchError,
    SyntheticParams,
    ensure_synthetic,
    generate_chunk,
    generate_identities,
    identity_name,
    nearest_center_accuracy,
    similarity_statistics,
)

# Small vectors keep the tests of determinism and of the folder fast; the calibration tests use
# the default parameters.
SMALL = {"dim": 32, "nuisance_dim": 8}


def small_params(**values) -> SyntheticParams:
    return SyntheticParams.from_dict({**SMALL, **values})


def synthetic_config(tmp_path, n_classes=30, overwrite=False, **synthetic):
    return config_from_dict(
        {
            "n_classes": n_classes,
            "n_clusters": 3,
            "overwrite": overwrite,
            "features_dir": str(tmp_path / "features"),
            "synthetic": {**SMALL, **synthetic},
        },
        base_dir=tmp_path,
    )


@pytest.fixture(scope="module")
def default_chunks():
    """The first two chunks (2,000 identities) of the default parameters, seed 0."""
    params = SyntheticParams.from_dict({})
    return params, [generate_chunk(params, 0, index) for index in range(2)]


# --------------------------------------------------------------------------- generation
def test_generate_same_seed_same_data():
    params = small_params()
    first = generate_identities(params, 0, 50, seed=3)
    second = generate_identities(params, 0, 50, seed=3)
    for split in SPLITS:
        np.testing.assert_array_equal(first[split], second[split])


def test_generate_prefix_stable():
    params = small_params()
    large = generate_identities(params, 0, 2500, seed=0)
    small = generate_identities(params, 0, 700, seed=0)
    window = generate_identities(params, 900, 2100, seed=0)
    for split in SPLITS:
        np.testing.assert_array_equal(small[split], large[split][:700])
        np.testing.assert_array_equal(window[split], large[split][900:2100])


def test_generate_other_seed_other_data():
    params = small_params()
    first = generate_identities(params, 0, 20, seed=0)["train"]
    second = generate_identities(params, 0, 20, seed=1)["train"]
    assert not np.allclose(first, second)
    assert np.abs(first - second).mean() > 0.05


def test_generate_shapes_dtype_norms():
    params = SyntheticParams.from_dict({})
    data = generate_identities(params, 10, 60, seed=0)
    expected = {"train": params.n_train, "val": params.n_val, "test": params.n_test}
    assert set(data) == set(SPLITS)
    for split, count in expected.items():
        assert data[split].shape == (50, count, 512)
        assert data[split].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(data[split], axis=-1), 1.0, atol=1e-5)


def test_generate_rejects_empty_range():
    with pytest.raises(ValueError, match="identity range"):
        generate_identities(small_params(), 5, 5, seed=0)


# --------------------------------------------------------------------------- parameters
def test_params_from_config_ignore_seed(tmp_path):
    config = synthetic_config(tmp_path, seed=7, n_groups=64)
    params = SyntheticParams.from_config(config)
    assert params.n_groups == 64
    assert params.dim == 32
    assert "seed" not in params.to_dict()


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"poor_cosine_max": 1.5}, "synthetic.poor_cosine_max"),
        ({"poor_cosine_min": 0.5, "poor_cosine_max": 0.4}, "synthetic.poor_cosine_max"),
        ({"nuisance_dim": 64, "dim": 32}, "synthetic.nuisance_dim"),
        ({"dim": 2, "nuisance_dim": 1}, "synthetic.dim"),
        ({"n_groups": 0}, "synthetic.n_groups"),
        ({"n_groups": 2.5}, "synthetic.n_groups"),
        ({"group_weight": "high"}, "synthetic.group_weight"),
        ({"seed": -1}, "synthetic.seed"),
    ],
)
def test_config_rejects_invalid_synthetic_value(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"synthetic": values})


# --------------------------------------------------------------------------- folder on disk
def test_ensure_writes_all_splits(tmp_path):
    config = synthetic_config(tmp_path, n_classes=12)
    folder = ensure_synthetic(config)
    assert folder == tmp_path / "features" / "synthetic"

    names = [identity_name(index) for index in range(12)]
    assert names[10] == "id_000010"
    params = SyntheticParams.from_config(config)
    expected = generate_identities(params, 0, 12, seed=0)
    for split in SPLITS:
        assert list_identities(folder, split) == names
        for index in (0, 11):
            stored = load_features(feature_path(folder, split, names[index]))
            np.testing.assert_array_equal(stored, expected[split][index])

    record = json.loads((folder / GENERATOR_FILE).read_text())
    assert record["seed"] == 0
    assert record["chunk_size"] == CHUNK_SIZE
    assert record["params"] == params.to_dict()


def test_ensure_resume_rewrites_only_missing(tmp_path):
    config = synthetic_config(tmp_path, n_classes=10)
    folder = ensure_synthetic(config)
    deleted = feature_path(folder, "val", identity_name(4))
    original = load_features(deleted)
    others = [feature_path(folder, split, identity_name(index)) for split in SPLITS for index in range(10)]
    others.remove(deleted)
    before = {path: os.stat(path).st_ino for path in others}
    deleted.unlink()

    ensure_synthetic(config)

    np.testing.assert_array_equal(load_features(deleted), original)
    assert {path: os.stat(path).st_ino for path in others} == before


def test_ensure_extends_prefix(tmp_path):
    folder = ensure_synthetic(synthetic_config(tmp_path, n_classes=10))
    first = feature_path(folder, "train", identity_name(3))
    inode = os.stat(first).st_ino

    ensure_synthetic(synthetic_config(tmp_path, n_classes=25))

    assert os.stat(first).st_ino == inode
    assert len(list_identities(folder, "test")) == 25
    expected = generate_identities(small_params(), 24, 25, seed=0)["test"][0]
    np.testing.assert_array_equal(load_features(feature_path(folder, "test", identity_name(24))), expected)


@pytest.mark.parametrize("changed", [{"seed": 1}, {"n_groups": 64}])
def test_ensure_mismatched_generator_raises(tmp_path, changed):
    ensure_synthetic(synthetic_config(tmp_path, n_classes=5))
    with pytest.raises(GeneratorMismatchError) as raised:
        ensure_synthetic(synthetic_config(tmp_path, n_classes=5, **changed))
    message = str(raised.value)
    assert next(iter(changed)) in message
    assert "delete" in message


def test_ensure_overwrite_keeps_dataset(tmp_path):
    folder = ensure_synthetic(synthetic_config(tmp_path, n_classes=5))
    with pytest.raises(GeneratorMismatchError):
        ensure_synthetic(synthetic_config(tmp_path, n_classes=5, overwrite=True, seed=1))
    expected = generate_identities(small_params(), 0, 5, seed=0)["train"]
    for index in range(5):
        np.testing.assert_array_equal(load_features(feature_path(folder, "train", identity_name(index))), expected[index])
    assert json.loads((folder / GENERATOR_FILE).read_text())["seed"] == 0


def test_ensure_rejects_too_large_request(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConfigError, match="GiB are free"):
        ensure_synthetic(synthetic_config(tmp_path, n_classes=5))


def test_ensure_unknown_files_raise(tmp_path):
    folder = tmp_path / "features" / "synthetic"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "id_000000.npz").write_bytes(b"not written by the generator")
    with pytest.raises(GeneratorMismatchError, match="no generator.json"):
        ensure_synthetic(synthetic_config(tmp_path, n_classes=5))


def test_ensure_rejects_other_dataset(tmp_path):
    config = config_from_dict(
        {"dataset_name": "lfw", "datasets": {"lfw": {"features_dir": str(tmp_path / "lfw")}}, "n_classes": 5, "n_clusters": 2},
        base_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="dataset_name"):
        ensure_synthetic(config)


# --------------------------------------------------------------------------- calibration
def test_statistics_near_lfw(default_chunks):
    """The first 96 identities look like real ArcFace features on LFW (figures in LFW_ARCFACE_STATISTICS)."""
    _, chunks = default_chunks
    vectors, poor = chunks[0].vectors[:96], chunks[0].poor[:96]
    real = LFW_ARCFACE_STATISTICS
    every = similarity_statistics(vectors)
    good = similarity_statistics(vectors, include=~poor)

    # Samples of normal quality match LFW closely.
    assert abs(good["same"]["mean"] - real["same"]["mean"]) < 0.03
    assert abs(good["same"]["std"] - real["same"]["std"]) < 0.03
    assert abs(good["sample_to_mean"]["mean"] - real["sample_to_mean"]["mean"]) < 0.03
    # Poor samples widen the same-identity figures, within loose bands.
    assert abs(every["same"]["mean"] - real["same"]["mean"]) < 0.12
    assert every["same"]["std"] < 0.2
    assert abs(every["sample_to_mean"]["mean"] - real["sample_to_mean"]["mean"]) < 0.08
    # Different identities and identity means, with all samples.
    assert abs(every["different"]["mean"] - real["different"]["mean"]) < 0.01
    assert abs(every["different"]["std"] - real["different"]["std"]) < 0.015
    assert abs(every["different"]["p99.9"] - real["different"]["p99.9"]) < 0.06
    assert abs(every["between_means"]["mean"] - real["between_means"]["mean"]) < 0.01
    assert abs(every["between_means"]["std"] - real["between_means"]["std"]) < 0.015


def test_poor_samples_far_from_identity_mean(default_chunks):
    _, chunks = default_chunks
    vectors, poor = chunks[0].vectors[:200], chunks[0].poor[:200]
    others_mean = vectors.sum(axis=1, keepdims=True) - vectors
    others_mean /= np.linalg.norm(others_mean, axis=-1, keepdims=True)
    to_mean = np.einsum("nsd,nsd->ns", vectors, others_mean)
    assert 0.05 < poor.mean() < 0.25
    assert 0.25 < np.median(to_mean[poor]) < 0.5
    assert np.median(to_mean[~poor]) > 0.7


def test_accuracy_falls_with_identities(default_chunks):
    params, chunks = default_chunks
    vectors = np.concatenate([chunk.vectors for chunk in chunks])
    low, high = params.split_bounds()["test"]
    centers = vectors[:, : params.n_train].mean(axis=1)

    accuracy = {}
    for count in (100, 2000):
        queries = vectors[:count, low:high].reshape(-1, params.dim)
        labels = np.repeat(np.arange(count), high - low)
        accuracy[count] = nearest_center_accuracy(centers[:count], queries, labels)
    assert accuracy[100] >= 0.97
    assert accuracy[2000] < accuracy[100]
    assert accuracy[2000] < 0.97


def test_near_duplicates_copy_earlier_identity(default_chunks):
    params, chunks = default_chunks
    chunk = chunks[0]
    duplicates = np.flatnonzero(chunk.parents >= 0)
    assert 2 <= len(duplicates) <= 30
    assert (chunk.parents[duplicates] < duplicates).all()
    cosines = np.einsum("nd,nd->n", chunk.centers[duplicates], chunk.centers[chunk.parents[duplicates]])
    np.testing.assert_allclose(cosines, params.duplicate_cosine, atol=1e-4)


def test_kmeans_finds_supergroups(default_chunks):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    params, chunks = default_chunks
    centers = chunks[0].vectors[:, : params.n_train].mean(axis=1)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = chunks[0].supergroups
    found = KMeans(n_clusters=params.n_supergroups, n_init=1, random_state=0).fit_predict(centers)
    assert adjusted_rand_score(truth, found) > 0.5
