"""Config loading: defaults, overrides and one clear error per invalid value."""

import json

import pytest

from src.config import ConfigError, config_from_dict, load_config
from src.data_utility import prepare_data

from conftest import REPO_ROOT, toy_config


def test_repository_config_loads():
    config = load_config(REPO_ROOT / "config" / "config.json")
    assert config.dataset_name == "synthetic"
    assert config.method in ("MMS", "ISM", "Single")
    assert config.base_dir == str(REPO_ROOT)
    assert config.dataset_features_dir == REPO_ROOT / "features" / "synthetic"


def test_overrides_replace_file_values(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"n_classes": 50, "n_clusters": 5}))
    config = load_config(path, {"n_classes": 20, "n_clusters": None})
    assert config.n_classes == 20
    assert config.n_clusters == 5


def test_single_uses_one_submodel():
    config = config_from_dict({"method": "Single", "n_clusters": 10})
    assert config.effective_n_clusters == 1
    assert "_k1_" in config.run_name


@pytest.mark.parametrize(
    "values, words",
    [
        ({"n_clasess": 10}, ["unknown config key", "n_clasess", "n_classes"]),
        ({"method": "MaxMax"}, ["method='MaxMax'", "MMS", "ISM", "Single"]),
        ({"dataset_name": "casia"}, ["dataset_name='casia'", "lfw", "vggface2"]),
        ({"n_clusters": 0}, ["n_clusters=0", ">= 1"]),
        ({"n_classes": 10, "n_clusters": 11}, ["n_clusters=11", "at most n_classes=10"]),
        ({"distance_measure": "manhattan"}, ["distance_measure='manhattan'", "cosine", "euclidean"]),
        ({"epochs": 0}, ["epochs=0"]),
        ({"learning_rate": -1}, ["learning_rate=-1"]),
        ({"dataset_name": "vggface2", "n_classes": 9000}, ["n_classes=9000", "at most 8900"]),
        ({"synthetic": {"dims": 3}}, ["unknown config key", "dims", "synthetic"]),
        ({"preparation": {"detector": "mtcnn"}}, ["detector='mtcnn'", "yunet", "retinaface"]),
        ({"datasets": {"mine": {"source": "tfrecord"}}}, ["datasets.mine.source='tfrecord'", "recordio"]),
        ({"learning_rate": float("nan")}, ["learning_rate=nan", "finite"]),
        ({"arcface_scale": float("inf")}, ["arcface_scale=inf", "finite"]),
        ({"dataset_name": ["synthetic"]}, ["dataset_name=['synthetic']", "non-empty string"]),
        ({"results_dir": None}, ["results_dir=None", "non-empty string"]),
        ({"seed": 2**32}, ["seed=4294967296", "32-bit"]),
        ({"n_classes": 500000}, ["n_classes=500000", "at most 400000"]),
        ({"max_test_queries": 0}, ["max_test_queries=0", "null", ">= 1"]),
        ({"max_val_queries": 2.5}, ["max_val_queries=2.5", "null"]),
    ],
)
def test_invalid_value_names_key_and_fix(values, words):
    base = json.loads((REPO_ROOT / "config" / "config.json").read_text())
    base.update(values)
    with pytest.raises(ConfigError) as error:
        config_from_dict(base)
    for word in words:
        assert word in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")


def test_invalid_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{'method': 'MMS'}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)


def test_more_classes_than_on_disk(tmp_path):
    config = toy_config(tmp_path, n_classes=13, toy={"n_classes": 12})
    with pytest.raises(ConfigError) as error:
        prepare_data(config)
    assert "n_classes=13" in str(error.value)
    assert "only 12 identities" in str(error.value)


def test_missing_features_folder(tmp_path):
    config = config_from_dict(
        {"dataset_name": "mine", "datasets": {"mine": {"features_dir": str(tmp_path / "absent")}}, "n_classes": 2,
         "n_clusters": 1}
    )
    with pytest.raises(ConfigError, match="only 0 identities"):
        prepare_data(config)


def test_dataset_entry_merges_preparation():
    config = config_from_dict({"dataset_name": "lfw", "n_classes": 50, "datasets": {"lfw": {"preparation": {"face_rule": "single"}}}})
    preparation = config.dataset_preparation
    assert preparation["face_rule"] == "single"
    assert preparation["recognition_model"].endswith("w600k_mbf.onnx")
    assert preparation["input_mean"] == 127.5


def test_single_ignores_n_clusters():
    config = config_from_dict({"method": "Single", "n_classes": 3, "n_clusters": 10})
    assert config.effective_n_clusters == 1


def test_top_level_list_rejected(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object, got list"):
        load_config(path, {"n_classes": 5})
