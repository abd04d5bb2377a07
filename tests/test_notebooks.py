"""Execute the data preparation notebooks headless on small real data, so they cannot rot."""

from __future__ import annotations

import pytest
from conftest import (
    ARCFACE_MODEL,
    LFW_DIR,
    REPO_ROOT,
    YUNET_MODEL,
    make_raw_identity,
    requires_shared_faces,
)

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = requires_shared_faces
NOTEBOOKS = REPO_ROOT / "notebooks"


def _execute(name: str, monkeypatch, **env) -> nbformat.NotebookNode:
    """Run notebook ``name`` from the notebooks folder with ``env`` set; return the executed notebook."""
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return notebook


def _outputs_text(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def _has_image(notebook) -> bool:
    return any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_vgg_notebook_runs_on_lfw_sample(tmp_path, monkeypatch):
    notebook = _execute(
        "vgg_data_preparation.ipynb", monkeypatch,
        MIXMAXSIM_RAW_DIR=LFW_DIR, MIXMAXSIM_OUTPUT_DIR=tmp_path, MIXMAXSIM_N_IDENTITIES=2,
        MIXMAXSIM_DETECTOR_MODEL=YUNET_MODEL, MIXMAXSIM_RECOGNITION_MODEL=ARCFACE_MODEL,
    )
    assert _has_image(notebook)
    assert len(list((tmp_path / "features" / "vggface2" / "test").glob("*.npz"))) == 2
    assert str(tmp_path) in _outputs_text(notebook)


@pytest.mark.parametrize("name", ["ms1m", "glint360k"])
def test_recordio_notebook_runs(name, tmp_path, monkeypatch):
    from src.faces import YuNetDetector, align_dataset
    from src.images import SplitSettings, split_identities
    from src.recordio import write_insightface_recordio

    # An InsightFace-style RecordIO pair holding aligned LFW faces of two people.
    raw = tmp_path / "raw"
    make_raw_identity(raw, "Colin_Powell", "Colin_Powell", 15)
    make_raw_identity(raw, "Laura_Bush", "Laura_Bush", 15)
    split_identities(raw, tmp_path / "lfw", SplitSettings(n_train=5, n_val=5, n_test=5), progress=False)
    align_dataset(tmp_path / "lfw", YuNetDetector(YUNET_MODEL), face_rule="center", progress=False)
    identities = []
    for person in ("Colin_Powell", "Laura_Bush"):
        images = sorted((tmp_path / "lfw" / "aligned").glob(f"*/{person}/*.png"))
        identities.append([path.read_bytes() for path in images])
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    write_insightface_recordio(identities, rec_dir / "train.rec", rec_dir / "train.idx")

    output = tmp_path / "output"
    notebook = _execute(
        f"{name}_data_preparation.ipynb", monkeypatch,
        MIXMAXSIM_RAW_DIR=rec_dir, MIXMAXSIM_OUTPUT_DIR=output, MIXMAXSIM_N_IDENTITIES=2,
        MIXMAXSIM_RECOGNITION_MODEL=ARCFACE_MODEL, MIXMAXSIM_INPUT_MEAN=127.5, MIXMAXSIM_INPUT_STD=127.5,
    )
    assert _has_image(notebook)
    assert "2 identities" in _outputs_text(notebook)
    assert len(list((output / "features" / name / "train").glob("*.npz"))) == 2
