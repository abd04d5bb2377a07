"""Feature files: round trip, atomic writes and one clear error per kind of bad file."""

import numpy as np
import pytest

from src.data_utility import prepare_data
from src.feature_io import FeatureFileError, list_identities, load_features, save_features

from conftest import toy_config


def test_round_trip_with_sources(tmp_path):
    features = np.eye(3, 8, dtype=np.float32)
    save_features(tmp_path / "train" / "a b é.npz", features, sources=["x.jpg", "y.jpg", "z.jpg"])
    assert list_identities(tmp_path, "train") == ["a b é"]
    np.testing.assert_array_equal(load_features(tmp_path / "train" / "a b é.npz", dim=8), features)
    assert not list((tmp_path / "train").glob(".*"))


@pytest.mark.parametrize(
    "content, message",
    [
        (np.ones((3, 7), np.float32), "dimension is 7, expected 8"),
        (np.full((3, 8), np.nan, np.float32), "NaN or infinite"),
        (np.array([[np.inf] * 8] * 2, np.float32), "NaN or infinite"),
        (np.ones((0, 8), np.float32), "0 feature vectors"),
        (np.ones(8, np.float32), "must be 2-D"),
        (np.ones((2, 8), np.int64), "floating point"),
        (np.zeros((2, 8), np.float32), "all zeros"),
    ],
)
def test_invalid_features_rejected(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    np.savez(path, features=content)
    with pytest.raises(FeatureFileError) as error:
        load_features(path, dim=8)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_pickled_content_rejected(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, features=np.array([{"evil": 1}, None], dtype=object))
    with pytest.raises(FeatureFileError, match="pickled objects"):
        load_features(path)


def test_unreadable_file_rejected(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(FeatureFileError, match="unreadable"):
        load_features(path)


def test_missing_features_array(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, embeddings=np.ones((2, 8), np.float32))
    with pytest.raises(FeatureFileError, match="no 'features' array"):
        load_features(path)


def test_prepare_data_names_bad_file(tmp_path):
    config = toy_config(tmp_path)
    bad = tmp_path / "features" / "toy" / "val" / "id_0005.npz"
    np.savez(bad, features=np.full((3, 16), np.nan, np.float32))
    with pytest.raises(FeatureFileError) as error:
        prepare_data(config)
    assert "id_0005.npz" in str(error.value)


def test_prepare_data_missing_split_file(tmp_path):
    config = toy_config(tmp_path)
    (tmp_path / "features" / "toy" / "test" / "id_0003.npz").unlink()
    with pytest.raises(FeatureFileError, match="id_0003.npz: missing"):
        prepare_data(config)


def test_prepare_data_mixed_dimensions(tmp_path):
    config = toy_config(tmp_path)
    save_features(tmp_path / "features" / "toy" / "train" / "id_0007.npz", np.ones((8, 32), np.float32))
    with pytest.raises(FeatureFileError, match="dimension is 32, expected 16"):
        prepare_data(config)


def test_plain_npy_rejected(tmp_path):
    path = tmp_path / "plain.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.ones((2, 8), np.float32))
    with pytest.raises(FeatureFileError, match="plain .npy array"):
        load_features(path)


def test_interrupted_write_leaves_no_temporary(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        open(args[0], "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_features(tmp_path / "train" / "a.npz", np.eye(2, 8))
    assert list((tmp_path / "train").iterdir()) == []
