"""Resume checks on run folders left by earlier runs."""

import json

import numpy as np
import pytest

from src.config import save_config
from src.data_utility import save_parts
from src.run_folder import RunFolderError, check_resumable, is_finished_submodel, load_saved_parts

from conftest import toy_config


def test_new_folder_is_resumable(tmp_path):
    check_resumable(tmp_path / "absent", toy_config(tmp_path))


def test_same_settings_resumable(tmp_path):
    config = toy_config(tmp_path)
    save_config(config, tmp_path / "config.json")
    check_resumable(tmp_path, config)


def test_changed_epochs_rejected(tmp_path):
    save_config(toy_config(tmp_path, epochs=30), tmp_path / "config.json")
    with pytest.raises(RunFolderError) as error:
        check_resumable(tmp_path, toy_config(tmp_path, epochs=1, learning_rate=0.5))
    assert "epochs: folder 30, now 1" in str(error.value)
    assert "learning_rate: folder 0.01, now 0.5" in str(error.value)
    assert "--overwrite" in str(error.value)


def test_overwrite_skips_check(tmp_path):
    save_config(toy_config(tmp_path, epochs=30), tmp_path / "config.json")
    check_resumable(tmp_path, toy_config(tmp_path, epochs=1, overwrite=True))


def test_damaged_config_rejected(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        check_resumable(tmp_path, toy_config(tmp_path))


def test_parts_round_trip(tmp_path):
    parts = [np.array([0, 2]), np.array([1, 3, 4])]
    save_parts(parts, ["a", "b", "c", "d", "e"], tmp_path / "parts.json")
    loaded = load_saved_parts(tmp_path / "parts.json", 5)
    assert [p.tolist() for p in loaded] == [[0, 2], [1, 3, 4]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "damaged"),
        ('[{"part": 0}]', "damaged"),
        ('[{"classes": [0, 1]}, {"classes": [1, 2]}]', "exactly one part"),
        ('[{"classes": [0, 1, 2]}, {"classes": []}]', "empty part"),
        ('[{"classes": [0, 1]}]', "exactly one part"),
    ],
)
def test_bad_parts_rejected(tmp_path, content, message):
    path = tmp_path / "parts.json"
    path.write_text(content)
    with pytest.raises(RunFolderError, match=message):
        load_saved_parts(path, 3)


def test_submodel_states(tmp_path, caplog):
    model = tmp_path / "submodel_000.keras"
    assert not is_finished_submodel(model)
    model.write_bytes(b"truncated")
    assert not is_finished_submodel(model)
    assert "damaged" in caplog.text
    import zipfile

    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("config.json", "{}")
    assert not is_finished_submodel(model)
    model.with_suffix(".json").write_text(json.dumps({"train_seconds": 1.5}))
    assert is_finished_submodel(model)
