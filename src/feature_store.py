"""Packed, memory-mapped copy of a dataset's per-identity feature files.

Loading one ``.npz`` file per identity and split costs about 1 ms each (300,000 files at 100,000
identities), and holding every split in memory makes peak memory grow with the whole dataset.
The packed store writes each split once as one raw row-major array, identities in sorted name
order, under ``<dataset features>/packed/<dtype>/``:

- ``<split>.<dtype>.bin``: the feature rows of every packed identity, in ``dtype``;
- ``<split>.offsets.npy``: int64 row offsets, identity i owns rows offsets[i]:offsets[i + 1];
- ``train.centers.npy``: the float32 mean training feature of each identity, computed in
  float64 from the original float32 files, so float16 storage does not change class centers;
- ``index.json``: identities, dim, dtype, and the modification time of each split folder.

Identities are appended in order, so a store built for the first N identities serves every
n_classes <= N and grows in place when more are requested. A store whose split folders changed
since packing is rebuilt. Readers map the files read-only and copy out only the rows they need,
so resident memory follows what is read, not the file size.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .feature_io import SPLITS, FeatureFileError, load_identity_split

logger = logging.getLogger(__name__)

STORE_DTYPES = ("float32", "float16")
INDEX_NAME = "index.json"
FORMAT_VERSION = 1


def store_dir(features_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Return the packed store folder of a dataset's feature folder for one storage dtype."""
    return Path(features_dir) / "packed" / dtype


def _split_mtimes(features_dir: Path) -> dict[str, int]:
    return {split: (features_dir / split).stat().st_mtime_ns for split in SPLITS}


@contextmanager
def _locked(folder: Path):
    """Hold an exclusive lock on ``folder`` so two processes never pack it at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_index(folder: Path) -> dict | None:
    path = folder / INDEX_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _reusable_count(index: dict | None, identities: list[str], dtype: str, mtimes: dict[str, int]) -> int:
    """Return how many leading identities of an existing store can be kept (0: rebuild)."""
    if index is None or index.get("version") != FORMAT_VERSION or index.get("dtype") != dtype:
        return 0
    if index.get("split_mtimes") != mtimes:
        return 0
    packed = index["identities"]
    if packed != identities[: len(packed)]:
        return 0
    return len(packed)


def ensure_packed(features_dir: str | os.PathLike, identities: list[str], dtype: str = "float32") -> Path:
    """Pack the feature files of ``identities`` (a sorted list) unless already packed; return the folder.

    Identities beyond those already packed are appended; a store of another identity order or
    older feature files is rebuilt. Each dtype has its own folder. Raises FeatureFileError for a
    missing or invalid feature file, naming it.
    """
    folder = store_dir(features_dir, _checked_dtype(dtype))
    with _locked(folder):
        _ensure_locked(Path(features_dir), folder, identities, dtype)
    return folder


def open_packed(features_dir: str | os.PathLike, identities: list[str],
                dtype: str = "float32") -> tuple[dict[str, "PackedSplit"], np.ndarray]:
    """Pack ``identities`` when needed, then return each split's reader and the class centers.

    Packing and reading the index happen under one lock, so a process that opens the store while
    another one extends it waits for the extension instead of finding the index missing. Rows
    already packed never move, so readers keep working while a later process appends.
    """
    folder = store_dir(features_dir, _checked_dtype(dtype))
    with _locked(folder):
        _ensure_locked(Path(features_dir), folder, identities, dtype)
        splits = {split: PackedSplit(folder, split, len(identities)) for split in SPLITS}
        centers = load_centers(folder, len(identities))
    return splits, centers


def _checked_dtype(dtype: str) -> str:
    if dtype not in STORE_DTYPES:
        raise ValueError(f"invalid store dtype {dtype!r}: expected one of {list(STORE_DTYPES)}")
    return dtype


def _ensure_locked(features_dir: Path, folder: Path, identities: list[str], dtype: str) -> None:
    mtimes = _split_mtimes(features_dir)
    index = _read_index(folder)
    kept = _reusable_count(index, identities, dtype, mtimes)
    if kept >= len(identities):
        return
    if kept == 0:
        index = {"version": FORMAT_VERSION, "dtype": dtype, "dim": None, "identities": [], "split_mtimes": mtimes}
    _append(features_dir, folder, index, identities[kept:], dtype, fresh=kept == 0)


def _append(features_dir: Path, folder: Path, index: dict, new_identities: list[str], dtype: str, fresh: bool) -> None:
    started = time.perf_counter()
    dim = index["dim"]
    n_old = len(index["identities"])
    # The index is removed first and written last, so an interrupted append leaves no index
    # and the next call rebuilds instead of trusting half-written files.
    (folder / INDEX_NAME).unlink(missing_ok=True)

    offsets = {}
    centers = []
    for split in SPLITS:
        offsets_path = folder / f"{split}.offsets.npy"
        offsets[split] = [np.load(offsets_path)] if not fresh else [np.zeros(1, dtype=np.int64)]
    if fresh:
        # Unlink instead of truncating: another process may still map the old files, and
        # truncating a mapped file makes its reads fail with SIGBUS.
        for old_file in folder.glob("*.bin"):
            old_file.unlink()
    handles = {split: open(folder / f"{split}.{dtype}.bin", "wb" if fresh else "r+b") for split in SPLITS}
    try:
        for split in SPLITS:
            # Drop any bytes past the rows the kept offsets describe before appending.
            rows = int(offsets[split][0][-1])
            handles[split].truncate(rows * (dim or 0) * np.dtype(dtype).itemsize)
            handles[split].seek(0, os.SEEK_END)
        ends = {split: int(offsets[split][0][-1]) for split in SPLITS}
        new_offsets = {split: [] for split in SPLITS}
        for identity in new_identities:
            for split in SPLITS:
                features = load_identity_split(features_dir, split, identity, dim=dim)
                dim = features.shape[1]
                if split == "train":
                    centers.append(features.mean(axis=0, dtype=np.float64).astype(np.float32))
                handles[split].write(np.ascontiguousarray(features, dtype=dtype).tobytes())
                ends[split] += len(features)
                new_offsets[split].append(ends[split])
    finally:
        for handle in handles.values():
            handle.close()

    for split in SPLITS:
        combined = np.concatenate([offsets[split][0], np.asarray(new_offsets[split], dtype=np.int64)])
        np.save(folder / f"{split}.offsets.npy", combined)
    centers_path = folder / "train.centers.npy"
    old_centers = [np.load(centers_path)] if not fresh and n_old else []
    np.save(centers_path, np.concatenate(old_centers + [np.stack(centers)]).astype(np.float32))

    index["dim"] = dim
    index["identities"] = index["identities"] + list(new_identities)
    tmp = folder / f".{INDEX_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(index) + "\n", encoding="utf-8")
    os.replace(tmp, folder / INDEX_NAME)
    logger.info("packed %d identities (%d already packed) into %s as %s in %.1f s",
                len(new_identities), n_old, folder, dtype, time.perf_counter() - started)


class PackedSplit:
    """Read access to the first ``n_classes`` identities of one packed split."""

    def __init__(self, folder: str | os.PathLike, split: str, n_classes: int):
        self.folder = Path(folder)
        self.split = split
        index = _read_index(self.folder)
        if index is None or len(index["identities"]) < n_classes:
            raise FeatureFileError(
                f"{self.folder}: packed store missing or smaller than {n_classes} identities; "
                "pack it first with ensure_packed (prepare_data does)"
            )
        self.dtype = np.dtype(index["dtype"])
        self.dim = int(index["dim"])
        self.offsets = np.load(self.folder / f"{split}.offsets.npy")[: n_classes + 1]
        self.path = self.folder / f"{split}.{index['dtype']}.bin"
        self.n_classes = n_classes

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def labels(self) -> np.ndarray:
        """Return the int32 class label of every row, in row order."""
        return np.repeat(np.arange(self.n_classes, dtype=np.int32), np.diff(self.offsets))

    def open(self) -> np.ndarray:
        """Map every row read-only; pages become resident only when read."""
        if self.n_rows == 0:
            return np.empty((0, self.dim), dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_rows, self.dim))

    def class_rows(self, classes: np.ndarray) -> np.ndarray:
        """Return the row indices of ``classes``, class by class in the given order."""
        classes = np.asarray(classes, dtype=np.int64)
        starts = self.offsets[classes]
        counts = self.offsets[classes + 1] - starts
        # Row r of class c is starts[c] + (r - first output row of c): one vectorized arange.
        first = np.cumsum(counts) - counts
        return np.repeat(starts - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)

    def read_classes(self, classes: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Copy the rows of ``classes`` into memory as ``dtype``; returns rows and their class labels.

        The mapping is closed before returning, so the pages read stop counting towards this
        process's resident memory once the caller drops the returned copy.
        """
        classes = np.asarray(classes, dtype=np.int64)
        rows = self.class_rows(classes)
        mapped = self.open()
        try:
            features = np.asarray(mapped[rows], dtype=dtype)
        finally:
            del mapped
        labels = np.repeat(classes.astype(np.int32), np.diff(self.offsets)[classes])
        return features, labels


def load_centers(folder: str | os.PathLike, n_classes: int) -> np.ndarray:
    """Return the float32 class centers of the first ``n_classes`` packed identities."""
    return np.load(Path(folder) / "train.centers.npy", mmap_mode="r")[:n_classes].copy()
