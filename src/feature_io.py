"""Read and write the per-identity feature files under ``features/``.

Layout: ``features/<dataset>/<split>/<identity>.npz``, one file per identity and split, holding
``features``, a float32 array of shape (n_samples, dim) with L2-normalized rows, and optionally
``sources``, a unicode array naming the image behind each row. Files are written atomically and
read with ``allow_pickle=False``, so a file holding Python objects is rejected, never unpickled.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
FEATURE_SUFFIX = ".npz"


class FeatureFileError(ValueError):
    """A feature file that is unreadable or contains invalid data."""


def feature_path(features_dir: str | os.PathLike, split: str, identity: str) -> Path:
    """Return the path of one identity's feature file for ``split``."""
    if split not in SPLITS:
        raise ValueError(f"invalid split {split!r}: expected one of {SPLITS}")
    return Path(features_dir) / split / f"{identity}{FEATURE_SUFFIX}"


def save_features(path: str | os.PathLike, features: np.ndarray, sources=None) -> None:
    """Write one feature file atomically: a crash leaves the old file or none, never half a file."""
    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features for {path} must be 2-D (n_samples, dim), got shape {features.shape}")
    arrays = {"features": features}
    if sources is not None:
        sources = np.asarray([str(s) for s in sources], dtype=np.str_)
        if len(sources) != len(features):
            raise ValueError(f"{path}: {len(sources)} sources for {len(features)} feature rows")
        arrays["sources"] = sources
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.savez appends ".npz" to names lacking it, so the temporary name keeps that suffix.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{FEATURE_SUFFIX}")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        # Reached with the temporary file still present only when writing failed or was interrupted.
        tmp.unlink(missing_ok=True)


def load_identity_split(features_dir: str | os.PathLike, split: str, identity: str, dim: int | None = None) -> np.ndarray:
    """Load one identity's features for ``split``; a missing file raises FeatureFileError."""
    path = feature_path(features_dir, split, identity)
    if not path.is_file():
        raise FeatureFileError(f"{path}: missing; every identity needs train, val and test feature files")
    return load_features(path, dim=dim)


def load_features(path: str | os.PathLike, dim: int | None = None, min_samples: int = 1) -> np.ndarray:
    """Load and validate the ``features`` array of one file.

    Raises FeatureFileError naming the file when it cannot be read, contains pickled objects, lacks
    the ``features`` array, has the wrong dimension, too few rows, or NaN or infinite values.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise FeatureFileError(f"{path}: a plain .npy array, not an .npz archive; write it with save_features()")
        with loaded as archive:
            if "features" not in archive.files:
                raise FeatureFileError(
                    f"{path}: no 'features' array (found {archive.files}); write it with save_features()"
                )
            features = archive["features"]
    except FeatureFileError:
        raise
    except ValueError as error:
        # numpy raises ValueError for object arrays when allow_pickle is False.
        raise FeatureFileError(f"{path}: rejected because it contains pickled objects ({error})") from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise FeatureFileError(f"{path}: unreadable feature file ({error}); delete it and extract again") from error

    if features.ndim != 2:
        raise FeatureFileError(f"{path}: features must be 2-D (n_samples, dim), got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise FeatureFileError(f"{path}: features must be floating point, got dtype {features.dtype}")
    if dim is not None and features.shape[1] != dim:
        raise FeatureFileError(f"{path}: feature dimension is {features.shape[1]}, expected {dim}")
    if features.shape[0] < min_samples:
        raise FeatureFileError(f"{path}: {features.shape[0]} feature vectors, at least {min_samples} required")
    if not np.isfinite(features).all():
        n_bad = int((~np.isfinite(features)).any(axis=1).sum())
        raise FeatureFileError(f"{path}: {n_bad} feature vectors contain NaN or infinite values")
    norms = np.linalg.norm(features, axis=1)
    if (norms < 1e-6).any():
        raise FeatureFileError(
            f"{path}: {int((norms < 1e-6).sum())} feature vectors are all zeros and have no direction; "
            "extract them again or drop them"
        )
    return features.astype(np.float32, copy=False)


def list_identities(features_dir: str | os.PathLike, split: str = "train") -> list[str]:
    """Return the identities that have a feature file for ``split``, sorted."""
    split_dir = Path(features_dir) / split
    if not split_dir.is_dir():
        return []
    return sorted(
        entry.name[: -len(FEATURE_SUFFIX)]
        for entry in os.scandir(split_dir)
        if entry.name.endswith(FEATURE_SUFFIX) and not entry.name.startswith(".")
    )
