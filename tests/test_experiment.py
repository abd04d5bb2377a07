"""Experiments end to end on toy features: outputs, determinism and resume."""

import csv
import json

import numpy as np
import pytest

import src.training
from src.experiment import RESULT_COLUMNS, format_table, main, run_experiment

from conftest import toy_config


@pytest.mark.parametrize("method", ["MMS", "ISM", "Single"])
def test_run_writes_outputs(tmp_path, method):
    config = toy_config(tmp_path, method=method)
    [result] = run_experiment(config)
    run_dir = result.run_dir
    for name in ("config.json", "parts.json", "metrics.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    n_parts = 1 if method == "Single" else 3
    assert len(list((run_dir / "submodels").glob("submodel_*.keras"))) == n_parts
    assert result.method.top1_accuracy > 0.8
    assert result.nearest_center.top1_accuracy > 0.8

    with open(tmp_path / "results" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert list(rows[0]) == RESULT_COLUMNS
    assert rows[0]["method"] == method
    assert float(rows[0]["top1_accuracy"]) == pytest.approx(result.method.top1_accuracy, abs=1e-6)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sum(metrics["part_sizes"]) == 12
    if method == "MMS":
        assert rows[0]["confidence_threshold"] != ""
        assert metrics["mixing_factor"] is not None
    else:
        assert rows[0]["confidence_threshold"] == ""
    assert method in format_table([result])


def test_same_seed_same_results(tmp_path):
    first = run_experiment(toy_config(tmp_path / "a", method="MMS"))[0]
    second = run_experiment(toy_config(tmp_path / "b", method="MMS"))[0]
    assert first.method == second.method
    assert first.maxmax == second.maxmax
    assert (first.run_dir / "parts.json").read_text() == (second.run_dir / "parts.json").read_text()


def test_n_runs_use_successive_seeds(tmp_path):
    results = run_experiment(toy_config(tmp_path, method="ISM", n_runs=2))
    assert [r.config.seed for r in results] == [0, 1]
    assert results[0].run_dir != results[1].run_dir
    assert "+-" in format_table(results)


def test_resume_after_interrupted_training(tmp_path, monkeypatch):
    config = toy_config(tmp_path, method="ISM")
    original = src.training.train_submodel
    calls = []

    def fail_on_second(data, part, cfg, path, index=0, n_parts=1):
        calls.append(index)
        if index == 1:
            raise KeyboardInterrupt("simulated interruption")
        return original(data, part, cfg, path, index=index, n_parts=n_parts)

    monkeypatch.setattr(src.training, "train_submodel", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config)
    run_dir = tmp_path / "results" / config.run_name
    first_model = run_dir / "submodels" / "submodel_000.keras"
    assert first_model.is_file()
    assert not (run_dir / "submodels" / "submodel_001.keras").exists()
    assert not list((run_dir / "submodels").glob(".*tmp*"))
    stamp = first_model.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(src.training, "train_submodel", lambda *a, **k: (calls.append(k["index"]), original(*a, **k))[1])
    [result] = run_experiment(config)
    assert calls == [1, 2]
    assert first_model.stat().st_mtime_ns == stamp
    assert result.method.top1_accuracy > 0.8


def test_overwrite_retrains(tmp_path):
    config = toy_config(tmp_path, method="Single")
    run_experiment(config)
    model = tmp_path / "results" / config.run_name / "submodels" / "submodel_000.keras"
    stamp = model.stat().st_mtime_ns
    run_experiment(toy_config(tmp_path, method="Single", overwrite=True))
    assert model.stat().st_mtime_ns != stamp


def test_main_reports_config_error(tmp_path, capsys, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"n_classes": 5, "n_clusters": 9}))
    assert main(method="MMS", argv=["--config", str(path)]) == 2
    assert "n_clusters=9" in caplog.text


def test_main_runs_with_flags(tmp_path, capsys):
    config = toy_config(tmp_path)
    path = tmp_path / "config.json"
    data = config.to_dict()
    path.write_text(json.dumps(data))
    assert main(method="ISM", argv=["--config", str(path), "--n-classes", "6", "--n-clusters", "2"]) == 0
    output = capsys.readouterr().out
    assert "ISM" in output
    assert "6 classes, 2 submodel(s)" in output


def test_resume_rejects_changed_settings(tmp_path, caplog):
    config = toy_config(tmp_path, method="ISM")
    run_experiment(config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config.to_dict(), "epochs": 5}))
    assert main(method="ISM", argv=["--config", str(path)]) == 2
    assert "epochs: folder 2, now 5" in caplog.text


def test_resume_retrains_submodel_without_record(tmp_path):
    config = toy_config(tmp_path, method="ISM")
    run_experiment(config)
    record = tmp_path / "results" / config.run_name / "submodels" / "submodel_001.json"
    record.unlink()
    [result] = run_experiment(config)
    assert record.is_file()
    assert result.method.top1_accuracy > 0.8


def test_metrics_json_is_strict(tmp_path):
    [result] = run_experiment(toy_config(tmp_path, method="MMS"))
    text = (result.run_dir / "metrics.json").read_text()
    assert "Infinity" not in text
    assert "NaN" not in text
    json.loads(text)
