"""benchmarks/scale.py on a tiny synthetic dataset, so the script keeps working."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "scale.py"


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_spec(tmp_path, method, n_clusters):
    return {
        "n_classes": 30, "n_clusters": n_clusters, "epochs": 1, "batch_size": 64, "method": method,
        "results_dir": str(tmp_path / "results"), "features_dir": str(tmp_path / "features"),
        "synthetic": {"dim": 32}, "jit_compile": "auto", "feature_dtype": "float32", "feature_store": "packed",
    }


def test_configurations_filter_methods():
    scale = load_scale()
    grid = scale.configurations([100, 1000], [4, 200], 1, 64, "results", single_max=500, methods=("MMS", "Single"))
    assert [(s["method"], s["n_classes"], s["n_clusters"]) for s in grid] == [
        ("Single", 100, 1), ("MMS", 100, 4), ("MMS", 1000, 4), ("MMS", 1000, 200),
    ]


def test_training_flops_per_part():
    scale = load_scale()
    assert scale.training_flops([10, 20], 5, 8, 2) == 2 * 3 * 2 * 8 * (10 * 10 + 20 * 20) * 5


def test_worker_report_and_plot(tmp_path):
    scale = load_scale()
    records = [scale.run_worker(tiny_spec(tmp_path, method, k)) for method, k in (("NCC", 1), ("MMS", 3))]
    ncc, mms = records
    assert ncc["train_seconds"] == 0.0
    assert mms["xla_submodels"] == 0
    assert mms["rss_after_first_submodel_mib"] > 0
    assert 0.0 <= mms["top1_accuracy"] <= 1.0
    assert mms["queries_per_second"] > 0

    records.append({**tiny_spec(tmp_path, "ISM", 3), "error": "timed out after 1 s"})
    records.append({**mms, "feature_dtype": "float16"})
    for record in records:
        record.update(matmul_gflops=50.0, command="python3 benchmarks/scale.py --sizes 30", machine="test machine")
    doc = tmp_path / "scale.md"
    doc.write_text("# Notes\n\nhand-written before\n\n" + scale.BEGIN_MARK + "\nold\n" + scale.END_MARK
                   + "\n\nhand-written after\n")
    scale.write_report(records, doc)
    text = doc.read_text()
    assert "### 30 identities" in text
    assert "| MMS (dim 32) | 3 | 1 |" in text
    assert "failed: timed out" in text
    assert "| MMS (float16, dim 32) | 3 | 1 |" in text
    assert "python3 benchmarks/scale.py --sizes 30" in text
    assert "hand-written before" in text
    assert "hand-written after" in text
    assert "\nold\n" not in text
    scale.write_report(records, doc)
    assert doc.read_text() == text
    scale.plot(records, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_new_record_replaces_same_configuration(tmp_path):
    scale = load_scale()
    first = {**tiny_spec(tmp_path, "MMS", 3), "top1_accuracy": 0.5}
    other_k = {**tiny_spec(tmp_path, "MMS", 4), "top1_accuracy": 0.6}
    again = {**tiny_spec(tmp_path, "MMS", 3), "top1_accuracy": 0.7}
    records = scale.merge_record(scale.merge_record(scale.merge_record([], first), other_k), again)
    assert [(r["n_clusters"], r["top1_accuracy"]) for r in records] == [(4, 0.6), (3, 0.7)]
    path = tmp_path / "records.json"
    scale.save_records(path, records)
    assert scale.load_records(path) == records
    path.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a records file"):
        scale.load_records(path)


def test_targets_from_records():
    scale = load_scale()
    common = {"n_classes": 50000, "matmul_gflops": 100.0}
    single = {**common, "method": "Single", "n_clusters": 1, "train_seconds": 800.0, "peak_memory_mib": 7000.0,
              "top1_accuracy": 0.889, "queries_per_second": 3000.0, "train_gflops": 190.0}
    mms = {**common, "method": "MMS", "n_clusters": 10, "train_seconds": 100.0, "peak_memory_mib": 4000.0,
           "top1_accuracy": 0.886, "queries_per_second": 1500.0, "train_gflops": 40.0}
    ism = {**common, "method": "ISM", "n_clusters": 10, "train_seconds": 90.0, "peak_memory_mib": 2000.0,
           "top1_accuracy": 0.877, "queries_per_second": 2500.0, "train_gflops": 90.0}
    lines = scale.target_lines([single, mms, ism, {**mms, "n_clusters": 4}])
    rows = [line for line in lines if line.startswith("| 50,000")]
    assert rows == [
        "| 50,000 | 10 | 0.125 met | 0.571 missed | -0.300 met | 0.900 met | 0.500 met | 0.400 missed | 1.900 met |"
    ]


@pytest.mark.slow
def test_script_end_to_end(tmp_path):
    command = [
        sys.executable, str(SCRIPT), "--sizes", "30", "--ks", "3", "--epochs", "1", "--batch-size", "64",
        "--dim", "32", "--features-dir", str(tmp_path / "features"), "--results-dir", str(tmp_path / "results"),
        "--write-doc", str(tmp_path / "scale.md"), "--plot", str(tmp_path / "scale.png"),
        "--records", str(tmp_path / "scale.json"),
    ]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    records = json.loads((tmp_path / "scale.json").read_text())["records"]
    assert [r["method"] for r in records] == ["NCC", "Single", "ISM", "MMS"]
    assert not any("error" in r for r in records)
    assert (tmp_path / "scale.png").is_file()
    assert "### 30 identities" in (tmp_path / "scale.md").read_text()
