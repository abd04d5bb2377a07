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
    doc = tmp_path / "scale.md"
    scale.write_report(records, 50.0, "python3 benchmarks/scale.py --sizes 30", doc)
    text = doc.read_text()
    assert "## 30 identities" in text
    assert "| MMS | 3 |" in text
    assert "failed: timed out" in text
    scale.plot(records, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 0


@pytest.mark.slow
def test_script_end_to_end(tmp_path):
    command = [
        sys.executable, str(SCRIPT), "--sizes", "30", "--ks", "3", "--epochs", "1", "--batch-size", "64",
        "--dim", "32", "--features-dir", str(tmp_path / "features"), "--results-dir", str(tmp_path / "results"),
        "--write-doc", str(tmp_path / "scale.md"), "--plot", str(tmp_path / "scale.png"),
        "--json", str(tmp_path / "scale.json"),
    ]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    records = json.loads((tmp_path / "scale.json").read_text())["records"]
    assert [r["method"] for r in records] == ["NCC", "Single", "ISM", "MMS"]
    assert not any("error" in r for r in records)
    assert (tmp_path / "scale.png").is_file()
