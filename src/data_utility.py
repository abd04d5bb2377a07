"""Data preparation, class distribution over submodels, and submodel training.

The three public steps, in the order an experiment calls them:

- ``prepare_data(config)`` loads the first ``n_classes`` identities into a ``PreparedData``;
- ``cluster_data(data, config)`` splits the classes into ``n_clusters`` parts (MMS: k-means on
  class centers; ISM: at random; Single: one part);
- ``train_submodels(data, parts, config, run_dir)`` trains one cosine classifier per part.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import numpy as np

from .config import Config, ConfigError
from .feature_io import SPLITS, list_identities, load_identity_split
from .feature_store import PackedSplit, open_packed

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data
@dataclass
class PreparedData:
    """Features of ``n_classes`` identities, with integer labels indexing ``identities``.

    With the packed feature store, ``x_train``, ``x_val`` and ``x_test`` are read-only memory
    maps, and ``train_store`` reads one part's training rows without touching the others.
    ``centers`` passes class centers computed elsewhere (the packed store keeps them);
    without it they are computed from ``x_train``.
    """

    identities: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_centers: np.ndarray = field(init=False)
    train_store: PackedSplit | None = field(default=None, repr=False)
    centers: InitVar[np.ndarray | None] = None

    def __post_init__(self, centers):
        if centers is None:
            centers = compute_class_centers(self.x_train, self.y_train, self.n_classes)
        self.class_centers = np.asarray(centers, dtype=np.float32)

    @property
    def n_classes(self) -> int:
        return len(self.identities)

    @property
    def dim(self) -> int:
        return self.x_train.shape[1]

    def training_rows(self, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the float32 training rows of the classes in ``part``, labelled 0..len(part)-1.

        ``part`` must be sorted, as ``cluster_data`` returns it. Only that part's rows are read.
        """
        part = np.asarray(part, dtype=np.int64)
        if self.train_store is None:
            local_label = np.full(self.n_classes, -1, dtype=np.int32)
            local_label[part] = np.arange(len(part), dtype=np.int32)
            mask = local_label[self.y_train] >= 0
            return np.asarray(self.x_train[mask], dtype=np.float32), local_label[self.y_train[mask]]
        x, labels = self.train_store.read_classes(part)
        counts = np.diff(self.train_store.offsets)[part]
        return x, np.repeat(np.arange(len(part), dtype=np.int32), counts)


def compute_class_centers(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the mean feature of each class, shape (n_classes, dim), summed in float64."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"classes {missing} have no training samples; every class needs at least one")
    # np.add.at is unbuffered and about 50x slower than a segmented sum over sorted rows.
    if len(labels) > 1 and (np.diff(labels) < 0).any():
        order = np.argsort(labels, kind="stable")
        features, labels = features[order], labels[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(features, starts, axis=0, dtype=np.float64)
    return (sums / counts[:, None]).astype(np.float32)


def available_identities(config: Config) -> list[str]:
    """Return the identities with a training feature file for the configured dataset, sorted."""
    return list_identities(config.dataset_features_dir, "train")


def prepare_data(config: Config) -> PreparedData:
    """Load the first ``config.n_classes`` identities (sorted by name) of the configured dataset.

    The synthetic dataset is generated on first use. Raises ConfigError when fewer identities
    are on disk than requested, and FeatureFileError naming the file for any invalid feature file.
    """
    if config.dataset_name == "synthetic":
        from .synthetic import ensure_synthetic

        ensure_synthetic(config)

    features_dir = config.dataset_features_dir
    identities = available_identities(config)
    if len(identities) < config.n_classes:
        raise ConfigError(
            f"invalid config value n_classes={config.n_classes}: only {len(identities)} identities have "
            f"features in {features_dir / 'train'}; lower n_classes or extract more identities with "
            f"python3 -m src.prepare_faces --dataset-name {config.dataset_name}"
        )
    identities = identities[: config.n_classes]

    started = time.perf_counter()
    if config.feature_store == "packed":
        data = _load_packed(features_dir, identities, config.feature_dtype)
    else:
        data = _load_files(features_dir, identities, config.feature_dtype)
    logger.info(
        "loaded %d identities (%d train, %d val, %d test vectors, dim %d, %s, %s store) from %s in %.1f s",
        data.n_classes, len(data.y_train), len(data.y_val), len(data.y_test), data.dim, config.feature_dtype,
        config.feature_store, features_dir, time.perf_counter() - started,
    )
    for split, limit in (("val", config.max_val_queries), ("test", config.max_test_queries)):
        if limit is not None and limit < len(getattr(data, f"y_{split}")):
            _sample_queries(data, split, limit, config.seed)
    return data


def _sample_queries(data: PreparedData, split: str, limit: int, seed: int) -> None:
    """Keep ``limit`` rows of the val or test split, drawn at random with ``seed``, in row order.

    Scoring costs n_queries x n_classes, so at hundreds of thousands of identities a random
    subset keeps threshold fitting and evaluation affordable. Top-1 accuracy stays an unbiased
    estimate; macro scores average over the classes the subset contains.
    """
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    rows = np.sort(np.random.default_rng([seed, SPLITS.index(split)]).choice(len(y), size=limit, replace=False))
    setattr(data, f"x_{split}", np.asarray(x[rows]))
    setattr(data, f"y_{split}", y[rows])
    logger.info("using %d of %d %s queries, drawn at random (max_%s_queries)", limit, len(y), split, split)


def _load_files(features_dir: Path, identities: list[str], dtype: str) -> PreparedData:
    """Read every feature file into memory (the ``files`` feature store)."""
    arrays = {split: ([], []) for split in SPLITS}
    dim = None
    for label, identity in enumerate(identities):
        for split in SPLITS:
            features = load_identity_split(features_dir, split, identity, dim=dim)
            dim = features.shape[1]
            arrays[split][0].append(features)
            arrays[split][1].append(np.full(len(features), label, dtype=np.int32))

    stacked = {split: (np.concatenate(xs), np.concatenate(ys)) for split, (xs, ys) in arrays.items()}
    del arrays
    # Centers come from the float32 features, so float16 storage only rounds the samples.
    centers = compute_class_centers(stacked["train"][0], stacked["train"][1], len(identities))
    cast = {split: x.astype(dtype, copy=False) for split, (x, _) in stacked.items()}
    return PreparedData(
        identities=identities,
        x_train=cast["train"], y_train=stacked["train"][1],
        x_val=cast["val"], y_val=stacked["val"][1],
        x_test=cast["test"], y_test=stacked["test"][1],
        centers=centers,
    )


def _load_packed(features_dir: Path, identities: list[str], dtype: str) -> PreparedData:
    """Map the packed store of ``identities``, packing the feature files first when needed."""
    splits, centers = open_packed(features_dir, identities, dtype)
    return PreparedData(
        identities=identities,
        x_train=splits["train"].open(), y_train=splits["train"].labels(),
        x_val=splits["val"].open(), y_val=splits["val"].labels(),
        x_test=splits["test"].open(), y_test=splits["test"].labels(),
        train_store=splits["train"],
        centers=centers,
    )


# --------------------------------------------------------------------------- distribution
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Return ``x`` with each row scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cluster_data(data: PreparedData, config: Config, path: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Split the classes of ``data`` into parts, one per submodel, and save them as JSON.

    MMS clusters the class centers with k-means (on L2-normalized centers for the cosine distance,
    an approximation of spherical k-means; on raw centers for euclidean), ISM assigns classes to
    parts at random with sizes differing by at most one, and Single puts all classes in one part.
    Returns the sorted class indices of each part; no part is empty.
    """
    n_parts = config.effective_n_clusters
    if n_parts > data.n_classes:
        raise ConfigError(f"invalid config value n_clusters={n_parts}: expected at most n_classes={data.n_classes}")

    if config.method == "Single" or n_parts == 1:
        parts = [np.arange(data.n_classes)]
    elif config.method == "ISM":
        order = np.random.default_rng(config.seed).permutation(data.n_classes)
        parts = [np.sort(chunk) for chunk in np.array_split(order, n_parts)]
    else:
        parts = _kmeans_parts(data.class_centers, n_parts, config.distance_measure, config.seed)

    sizes = [len(part) for part in parts]
    logger.info("%s distributed %d classes over %d parts (sizes %d to %d)",
                config.method, data.n_classes, len(parts), min(sizes), max(sizes))
    if path is not None:
        save_parts(parts, data.identities, path)
    return parts


def _kmeans_parts(centers: np.ndarray, n_clusters: int, distance: str, seed: int) -> list[np.ndarray]:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    points = l2_normalize(centers) if distance == "cosine" else centers
    # Lloyd's k-means costs O(n_classes * n_clusters * dim) per iteration; past ~50k classes the
    # mini-batch variant reaches a similar partition in a fraction of the time.
    if len(points) > 50_000:
        estimator = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096)
    else:
        estimator = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
    labels = estimator.fit_predict(points)

    # scikit-learn relocates empty clusters during fitting, but an assignment can still leave
    # one empty on degenerate data (duplicate centers); move the farthest point of the largest
    # part into each empty part so every submodel has at least one class.
    counts = np.bincount(labels, minlength=n_clusters)
    for empty in np.flatnonzero(counts == 0):
        largest = int(np.argmax(counts))
        members = np.flatnonzero(labels == largest)
        distances = np.linalg.norm(points[members] - estimator.cluster_centers_[largest], axis=1)
        moved = members[int(np.argmax(distances))]
        labels[moved] = empty
        counts[largest] -= 1
        counts[empty] += 1
    return [np.flatnonzero(labels == k) for k in range(n_clusters)]


def save_parts(parts: list[np.ndarray], identities: list[str], path: str | os.PathLike) -> None:
    """Write each part's class indices and identity names as JSON."""
    record = [
        {"part": k, "classes": part.tolist(), "identities": [identities[i] for i in part]}
        for k, part in enumerate(parts)
    ]
    Path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def load_parts(path: str | os.PathLike) -> list[np.ndarray]:
    """Read the class indices of each part written by ``save_parts``."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return [np.asarray(entry["classes"], dtype=np.int64) for entry in record]


# --------------------------------------------------------------------------- training
def submodel_path(run_dir: str | os.PathLike, part_index: int) -> Path:
    """Return the file of submodel ``part_index`` inside a run folder."""
    return Path(run_dir) / "submodels" / f"submodel_{part_index:03d}.keras"


def train_submodels(data: PreparedData, parts: list[np.ndarray], config: Config, run_dir) -> list[Path]:
    """Train one cosine classifier per part and save each as a ``.keras`` file.

    A submodel whose file already exists is kept unless ``config.overwrite`` is set, so a run
    interrupted during training resumes at the first unfinished submodel. Each file is written
    under a temporary name and renamed, so an interruption never leaves a half-written model.
    Returns the model paths in part order.
    """
    from .run_folder import is_finished_submodel
    from .training import train_submodel

    paths = []
    for index, part in enumerate(parts):
        path = submodel_path(run_dir, index)
        paths.append(path)
        if not config.overwrite and is_finished_submodel(path):
            logger.info("submodel %d/%d exists, skipping: %s", index + 1, len(parts), path)
            continue
        train_submodel(data, part, config, path, index=index, n_parts=len(parts))
    return paths
