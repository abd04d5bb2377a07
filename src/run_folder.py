"""Checks that let a run resume safely in a folder that an earlier run left behind."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from .config import Config
from .data_utility import load_parts

logger = logging.getLogger(__name__)

# Settings that change what a submodel learns; a finished submodel is reused only when all match.
TRAINING_KEYS = (
    "dataset_name", "method", "n_classes", "n_clusters", "distance_measure", "epochs", "batch_size",
    "learning_rate", "arcface_margin", "arcface_scale", "seed", "synthetic", "feature_dtype",
)


class RunFolderError(ValueError):
    """A run folder whose content cannot be reused as it is."""


def check_resumable(run_dir: Path, config: Config) -> None:
    """Raise RunFolderError when ``run_dir`` contains submodels trained with other settings.

    A folder without ``config.json`` is new and passes. With ``config.overwrite`` set, everything
    is retrained, so nothing is checked.
    """
    path = Path(run_dir) / "config.json"
    if config.overwrite or not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); rerun with --overwrite to retrain") from error
    current = config.to_dict()
    differences = [
        f"{key}: folder {saved.get(key)!r}, now {current.get(key)!r}"
        for key in TRAINING_KEYS
        if key in saved and saved.get(key) != current.get(key)
    ]
    if differences:
        raise RunFolderError(
            f"{run_dir} contains submodels trained with other settings ({'; '.join(differences)}); "
            "rerun with --overwrite to retrain them, or choose another --experiment-name"
        )


def load_saved_parts(path: Path, n_classes: int) -> list[np.ndarray]:
    """Read ``parts.json`` and check that it assigns each of ``n_classes`` classes exactly once."""
    path = Path(path)
    fix = "delete the run folder or rerun with --overwrite"
    try:
        parts = load_parts(path)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise RunFolderError(f"{path} is damaged ({error}); {fix}") from error
    assigned = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(assigned) != n_classes or not np.array_equal(np.sort(assigned), np.arange(n_classes)):
        raise RunFolderError(f"{path} does not assign each of {n_classes} classes to exactly one part; {fix}")
    if any(len(part) == 0 for part in parts):
        raise RunFolderError(f"{path} has an empty part; {fix}")
    return parts


def is_finished_submodel(path: Path) -> bool:
    """Return True when a submodel file and its training record both exist and look intact.

    A damaged or incomplete pair is logged and reported as unfinished, so the caller retrains it.
    """
    path = Path(path)
    record = path.with_suffix(".json")
    if not path.is_file():
        return False
    if not zipfile.is_zipfile(path):
        logger.warning("submodel file %s is damaged (not a .keras archive); training it again", path)
        return False
    try:
        json.loads(record.read_text(encoding="utf-8"))["train_seconds"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        logger.warning("training record %s is missing or damaged (%s); training the submodel again", record, error)
        return False
    return True
