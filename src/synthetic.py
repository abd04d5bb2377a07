"""Generate the default dataset: synthetic features that behave like ArcFace face embeddings.

Every identity has a unit center ``c``, and every sample is ``x = rho * c + sqrt(1 - rho**2) * u``.
The quality ``rho`` (the sample's cosine to the center) and the unit deviation ``u`` (orthogonal
to ``c``) are drawn per sample, so every vector has unit L2 norm. Centers come from an
anisotropic distribution with a shared mean direction, groups of similar identities and a few
near-duplicate identities. A fraction of samples is poor: low ``rho`` and a deviation that drifts
toward the identity's group center, so poor samples keep coarse attributes but lose identity
detail. docs/synthetic.md gives the formulas and the calibration against real ArcFace features.

Identities are generated in chunks of ``CHUNK_SIZE``, each from its own random stream, so
identity ``i`` is the same whether 1,000 or 100,000 identities are generated.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .config import SYNTHETIC_DEFAULTS, ConfigError
from .feature_io import SPLITS, FEATURE_SUFFIX, feature_path, save_features

if TYPE_CHECKING:
    from .config import Config

logger = logging.getLogger(__name__)

# Bump when a change to the model changes the vectors for the same parameters and seed, so that
# ensure_synthetic rejects folders written by the old model.
GENERATOR_VERSION = 1
# Identities per random stream. Changing it changes every vector, like GENERATOR_VERSION.
CHUNK_SIZE = 1000
GENERATOR_FILE = "generator.json"
IDENTITY_DIGITS = 6
MAX_IDENTITIES = 10**IDENTITY_DIGITS
IDENTITY_PATTERN = re.compile(rf"^id_\d{{{IDENTITY_DIGITS}}}{re.escape(FEATURE_SUFFIX)}$")
# Fewer missing identities than this are written without a progress bar.
PROGRESS_MIN_IDENTITIES = 2000
# Largest angle between a normal sample and its identity's center.
MAX_ANGLE_DEGREES = 85.0


class GeneratorMismatchError(ConfigError):
    """A synthetic features folder written with other generator parameters or another seed."""


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic feature generator, one field per ``synthetic`` config key.

    docs/synthetic.md explains each one. ``seed`` is not a field: it is passed separately, so the
    same parameters can generate several datasets.
    """

    dim: int
    n_train: int
    n_val: int
    n_test: int
    spectrum_decay: float
    mean_weight: float
    n_supergroups: int
    supergroup_weight: float
    n_groups: int
    group_weight: float
    duplicate_fraction: float
    duplicate_cosine: float
    angle_mean: float
    identity_angle_std: float
    sample_angle_std: float
    poor_fraction: float
    identity_poor_logit_std: float
    poor_cosine_min: float
    poor_cosine_max: float
    poor_group_drift: float
    nuisance_dim: int
    nuisance_weight: float
    poor_nuisance_weight: float

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"invalid config value synthetic.{field.name}={value!r}: expected a number")
            if field.type == "int" and not isinstance(value, int):
                raise ValueError(f"invalid config value synthetic.{field.name}={value!r}: expected an integer")
        for name in ("n_train", "n_val", "n_test", "n_supergroups", "n_groups", "nuisance_dim"):
            _require(name, getattr(self, name), 1, None)
        # A deviation needs a direction orthogonal to both the center and the group direction.
        _require("dim", self.dim, 3, None)
        _require("nuisance_dim", self.nuisance_dim, 1, self.dim)
        _require("spectrum_decay", self.spectrum_decay, 0.0, 4.0)
        _require("mean_weight", self.mean_weight, 0.0, 10.0)
        _require("supergroup_weight", self.supergroup_weight, 0.0, 0.95)
        _require("group_weight", self.group_weight, 0.0, 0.95)
        _require("duplicate_fraction", self.duplicate_fraction, 0.0, 1.0)
        _require("duplicate_cosine", self.duplicate_cosine, 0.0, 0.99)
        _require("angle_mean", self.angle_mean, 0.0, MAX_ANGLE_DEGREES)
        _require("identity_angle_std", self.identity_angle_std, 0.0, 45.0)
        _require("sample_angle_std", self.sample_angle_std, 0.0, 45.0)
        _require("poor_fraction", self.poor_fraction, 0.0, 0.99)
        _require("identity_poor_logit_std", self.identity_poor_logit_std, 0.0, 10.0)
        _require("poor_cosine_min", self.poor_cosine_min, 0.0, 1.0)
        _require("poor_cosine_max", self.poor_cosine_max, self.poor_cosine_min, 1.0)
        _require("poor_group_drift", self.poor_group_drift, 0.0, 1.0)
        _require("nuisance_weight", self.nuisance_weight, 0.0, 1.0)
        _require("poor_nuisance_weight", self.poor_nuisance_weight, 0.0, 1.0)

    @classmethod
    def from_dict(cls, values: dict) -> SyntheticParams:
        """Build parameters from ``synthetic`` config values, with defaults for missing keys.

        The ``seed`` key, if present, is ignored. Raises ValueError naming an unknown key or an
        invalid value.
        """
        merged = dict(SYNTHETIC_DEFAULTS)
        merged.update(values)
        merged.pop("seed", None)
        names = {field.name for field in fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"unknown synthetic parameter(s) {unknown}; known parameters are {sorted(names)}")
        return cls(**merged)

    @classmethod
    def from_config(cls, config: Config) -> SyntheticParams:
        """Build parameters from ``config.synthetic``."""
        return cls.from_dict(config.synthetic)

    @property
    def n_samples(self) -> int:
        """Samples per identity over all splits."""
        return self.n_train + self.n_val + self.n_test

    def split_bounds(self) -> dict[str, tuple[int, int]]:
        """Return the range of sample positions of each split: train first, then val, then test."""
        return {
            "train": (0, self.n_train),
            "val": (self.n_train, self.n_train + self.n_val),
            "test": (self.n_train + self.n_val, self.n_samples),
        }

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-ready dict (without the seed)."""
        return asdict(self)


def _require(name: str, value, minimum, maximum) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"invalid config value synthetic.{name}={value!r}: expected a value {allowed}")


def synthetic_seed(config: Config) -> int:
    """Return the dataset seed, ``config.synthetic["seed"]``.

    It is separate from ``config.seed`` because runs with seeds seed, seed + 1, ... must share one
    dataset.
    """
    return config.synthetic["seed"]


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class _SharedStructure:
    """Directions shared by all identities of one (parameters, seed) pair."""

    spectrum_sqrt: np.ndarray  # (dim,): square roots of the center covariance's eigenvalues
    rotation: np.ndarray  # (dim, dim): orthogonal, row k is the eigenvector of eigenvalue k
    mean_direction: np.ndarray  # (dim,)
    supergroups: np.ndarray  # (n_groups,): the supergroup of each group
    group_centers: np.ndarray  # (n_groups, dim)
    nuisance_basis: np.ndarray  # (nuisance_dim, dim): orthonormal rows


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _anisotropic_directions(rng: np.random.Generator, count: int, shared: _SharedStructure) -> np.ndarray:
    """Draw ``count`` unit vectors from N(0, R^T diag(lambda) R), normalized."""
    gauss = rng.standard_normal((count, len(shared.spectrum_sqrt)), dtype=np.float32)
    return _normalize((gauss * shared.spectrum_sqrt) @ shared.rotation)


@lru_cache(maxsize=8)
def _shared_structure(params: SyntheticParams, seed: int) -> _SharedStructure:
    rng = np.random.default_rng([seed, 0])
    dim = params.dim

    # QR of a Gaussian matrix, with the signs fixed, gives a uniformly random orthogonal matrix.
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    rotation = (q * np.sign(np.diag(r))).T.astype(np.float32)
    eigenvalues = np.arange(1, dim + 1, dtype=np.float64) ** -params.spectrum_decay
    eigenvalues /= eigenvalues.sum()
    mean_direction = _normalize(rng.standard_normal(dim)).astype(np.float32)
    nuisance, _ = np.linalg.qr(rng.standard_normal((dim, params.nuisance_dim)))

    shared = _SharedStructure(
        spectrum_sqrt=np.sqrt(eigenvalues).astype(np.float32),
        rotation=rotation,
        mean_direction=mean_direction,
        supergroups=rng.integers(params.n_supergroups, size=params.n_groups),
        group_centers=np.empty((0, dim), dtype=np.float32),
        nuisance_basis=nuisance.T.astype(np.float32),
    )
    supergroup_centers = _anisotropic_directions(rng, params.n_supergroups, shared)
    own = _anisotropic_directions(rng, params.n_groups, shared)
    weight = params.supergroup_weight
    group_centers = _normalize(math.sqrt(weight) * supergroup_centers[shared.supergroups] + math.sqrt(1 - weight) * own)
    return replace(shared, group_centers=group_centers)


@dataclass
class SyntheticChunk:
    """The ``CHUNK_SIZE`` identities of one chunk, with the latent values that generated them.

    Samples are ordered train, val, test (see ``SyntheticParams.split_bounds``).
    """

    vectors: np.ndarray  # (CHUNK_SIZE, n_samples, dim) float32 with unit rows
    centers: np.ndarray  # (CHUNK_SIZE, dim): identity centers c
    groups: np.ndarray  # (CHUNK_SIZE,): group index of each identity
    supergroups: np.ndarray  # (CHUNK_SIZE,): supergroup index of each identity
    parents: np.ndarray  # (CHUNK_SIZE,): chunk-local index of the duplicated identity, -1 if none
    quality: np.ndarray  # (CHUNK_SIZE, n_samples): cosine rho of each sample to its center
    poor: np.ndarray  # (CHUNK_SIZE, n_samples): True for poor samples


def _chunk_centers(params: SyntheticParams, shared: _SharedStructure, rng: np.random.Generator):
    count = CHUNK_SIZE
    groups = rng.integers(params.n_groups, size=count)
    own = _anisotropic_directions(rng, count, shared)
    weight = params.group_weight
    centers = _normalize(math.sqrt(weight) * shared.group_centers[groups] + math.sqrt(1 - weight) * own)
    centers = _normalize(centers + params.mean_weight * shared.mean_direction)

    # A near-duplicate identity copies an earlier identity of the same chunk (its parent) at
    # cosine duplicate_cosine and joins the parent's group. Drawing parents inside the chunk
    # keeps chunks independent, and "earlier" keeps every parent inside any prefix.
    is_duplicate = rng.random(count) < params.duplicate_fraction
    is_duplicate[0] = False
    parents = np.floor(rng.random(count) * np.arange(count)).astype(np.int64)
    parents[~is_duplicate] = -1
    cosine = params.duplicate_cosine
    for index in np.flatnonzero(is_duplicate):
        parent = centers[parents[index]]
        orthogonal = centers[index] - (centers[index] @ parent) * parent
        centers[index] = cosine * parent + math.sqrt(1 - cosine**2) * orthogonal / np.linalg.norm(orthogonal)
        groups[index] = groups[parents[index]]
    return centers, groups, parents


def _chunk_quality(params: SyntheticParams, rng: np.random.Generator):
    count, n_samples = CHUNK_SIZE, params.n_samples
    hardness = rng.standard_normal(count)

    logit = math.log(params.poor_fraction / (1 - params.poor_fraction)) if params.poor_fraction > 0 else -np.inf
    poor_rate = 1 / (1 + np.exp(-(logit + params.identity_poor_logit_std * hardness)))
    poor = rng.random((count, n_samples)) < poor_rate[:, None]

    angle = (
        params.angle_mean
        + params.identity_angle_std * hardness[:, None]
        + params.sample_angle_std * rng.standard_normal((count, n_samples))
    )
    normal_quality = np.cos(np.radians(np.clip(angle, 0.0, MAX_ANGLE_DEGREES)))
    # The square root of a uniform number has a linearly rising density: very poor samples are
    # rarer than moderately poor ones.
    span = params.poor_cosine_max - params.poor_cosine_min
    poor_quality = params.poor_cosine_min + span * np.sqrt(rng.random((count, n_samples)))
    quality = np.where(poor, poor_quality, normal_quality).astype(np.float32)
    return quality, poor


def _chunk_deviations(params, shared, rng, centers, groups, poor) -> np.ndarray:
    """Draw the unit deviation u of every sample, orthogonal to its identity's center."""
    count, n_samples, dim, rank = CHUNK_SIZE, params.n_samples, params.dim, params.nuisance_dim

    # Nuisance (pose, illumination) in a subspace shared by all identities, plus isotropic noise.
    nuisance_weight = np.where(poor, params.poor_nuisance_weight, params.nuisance_weight).astype(np.float32)
    coefficients = rng.standard_normal((count, n_samples, rank), dtype=np.float32)
    deviations = rng.standard_normal((count, n_samples, dim), dtype=np.float32)
    deviations *= np.sqrt((1 - nuisance_weight) / dim)[..., None]
    deviations += np.sqrt(nuisance_weight / rank)[..., None] * (coefficients @ shared.nuisance_basis)

    # The group direction is the part of the group center orthogonal to the identity's center.
    group_direction = shared.group_centers[groups]
    group_direction = _normalize(group_direction - np.sum(group_direction * centers, axis=1, keepdims=True) * centers)
    for basis in (centers, group_direction):
        deviations -= np.einsum("nsd,nd->ns", deviations, basis)[..., None] * basis[:, None, :]
    deviations = _normalize(deviations)

    drift = np.where(poor, params.poor_group_drift, 0.0).astype(np.float32)[..., None]
    return drift * group_direction[:, None, :] + np.sqrt(1 - drift**2) * deviations


def generate_chunk(params: SyntheticParams, seed: int, chunk_index: int) -> SyntheticChunk:
    """Generate identities ``chunk_index * CHUNK_SIZE`` to ``(chunk_index + 1) * CHUNK_SIZE - 1``."""
    shared = _shared_structure(params, seed)
    rng = np.random.default_rng([seed, 1, chunk_index])
    centers, groups, parents = _chunk_centers(params, shared, rng)
    quality, poor = _chunk_quality(params, rng)
    deviations = _chunk_deviations(params, shared, rng, centers, groups, poor)
    vectors = quality[..., None] * centers[:, None, :] + np.sqrt(1 - quality**2)[..., None] * deviations
    return SyntheticChunk(
        vectors=_normalize(vectors).astype(np.float32),
        centers=centers,
        groups=groups,
        supergroups=shared.supergroups[groups],
        parents=parents,
        quality=quality,
        poor=poor,
    )


def iter_chunks(params: SyntheticParams, seed: int, start: int, stop: int) -> Iterator[tuple[int, SyntheticChunk]]:
    """Yield (index of the chunk's first identity, chunk) for every chunk overlapping [start, stop)."""
    for chunk_index in range(start // CHUNK_SIZE, (stop - 1) // CHUNK_SIZE + 1):
        yield chunk_index * CHUNK_SIZE, generate_chunk(params, seed, chunk_index)


def generate_identities(params: SyntheticParams, start: int, stop: int, seed: int) -> dict[str, np.ndarray]:
    """Generate identities ``start`` to ``stop - 1``: {split: float32 array (n_identities, n_split, dim)}.

    Rows have unit L2 norm. The result depends only on (params, seed, identity index): it is the
    same slice of the same chunks whatever range is asked for.
    """
    if not 0 <= start < stop:
        raise ValueError(f"invalid identity range [{start}, {stop}): expected 0 <= start < stop")
    parts = []
    for first, chunk in iter_chunks(params, seed, start, stop):
        parts.append(chunk.vectors[max(start - first, 0) : min(stop - first, CHUNK_SIZE)])
    vectors = np.concatenate(parts)
    return {split: vectors[:, low:high] for split, (low, high) in params.split_bounds().items()}


# --------------------------------------------------------------------------- the folder on disk
def identity_name(index: int) -> str:
    """Return the file stem of identity ``index``, zero-padded so that sorted order is numeric order."""
    return f"id_{index:0{IDENTITY_DIGITS}d}"


def _generator_record(params: SyntheticParams, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "chunk_size": CHUNK_SIZE, "seed": seed, "params": params.to_dict()}


def _differences(found: dict, expected: dict) -> list[str]:
    differences = []
    for key in sorted(set(found) | set(expected)):
        if key == "params":
            continue
        if found.get(key) != expected.get(key):
            differences.append(f"{key}: folder {found.get(key)!r}, config {expected.get(key)!r}")
    found_params = found.get("params") if isinstance(found.get("params"), dict) else {}
    expected_params = expected["params"]
    for key in sorted(set(found_params) | set(expected_params)):
        if found_params.get(key) != expected_params.get(key):
            differences.append(f"{key}: folder {found_params.get(key)!r}, config {expected_params.get(key)!r}")
    return differences


def _identity_files(features_dir: Path) -> list[Path]:
    files = []
    for split in SPLITS:
        split_dir = features_dir / split
        if split_dir.is_dir():
            files.extend(split_dir / entry.name for entry in os.scandir(split_dir) if IDENTITY_PATTERN.match(entry.name))
    return files


def _check_generator_file(features_dir: Path, record: dict) -> bool:
    """Return True when generator.json matches ``record``, False when the folder contains no identities.

    Raises GeneratorMismatchError for any other folder. Nothing is deleted here, because the
    config's ``overwrite`` key is about retraining submodels, not about discarding a dataset.
    """
    path = features_dir / GENERATOR_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            found = {"invalid JSON": str(error)}
        if not isinstance(found, dict):
            found = {"invalid content": found}
        differences = _differences(found, record)
        problem = f"{path} does not match the config ({'; '.join(differences)})"
    else:
        differences = ["no generator.json"] if _identity_files(features_dir) else []
        problem = f"{features_dir} contains identity files but no {GENERATOR_FILE}, so their generator is unknown"
    if not differences:
        return path.is_file()
    raise GeneratorMismatchError(
        f"{problem}; restore the synthetic settings the folder was written with, delete {features_dir} "
        "to regenerate it, or give this dataset another features_dir"
    )


def _write_generator_file(features_dir: Path, record: dict) -> None:
    path = features_dir / GENERATOR_FILE
    features_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _missing_files(features_dir: Path, n_identities: int) -> dict[int, list[str]]:
    """Return {identity index: splits whose file is missing} for the first ``n_identities``."""
    present = {}
    for split in SPLITS:
        split_dir = features_dir / split
        present[split] = {entry.name for entry in os.scandir(split_dir)} if split_dir.is_dir() else set()
    missing = {}
    for index in range(n_identities):
        file_name = identity_name(index) + FEATURE_SUFFIX
        splits = [split for split in SPLITS if file_name not in present[split]]
        if splits:
            missing[index] = splits
    return missing


def ensure_synthetic(config: Config) -> Path:
    """Write the first ``config.n_classes`` synthetic identities unless on disk, and return their folder.

    The folder is ``config.dataset_features_dir``, containing ``<split>/id_XXXXXX.npz`` and
    generator.json (generator version, chunk size, seed, parameters). Only missing files are
    written, so an interrupted run resumes. Raises GeneratorMismatchError when the folder was
    written with other parameters or another seed, and ConfigError when the disk has too little
    free space for the missing files.
    """
    if config.dataset_name != "synthetic":
        raise ValueError(f"ensure_synthetic needs dataset_name 'synthetic', got {config.dataset_name!r}")
    n_identities = config.n_classes
    if n_identities > MAX_IDENTITIES:
        raise ConfigError(
            f"invalid config value n_classes={n_identities}: synthetic identity names have "
            f"{IDENTITY_DIGITS} digits, so at most {MAX_IDENTITIES} identities"
        )
    params = SyntheticParams.from_config(config)
    seed = synthetic_seed(config)
    features_dir = config.dataset_features_dir
    record = _generator_record(params, seed)

    # generator.json is written before any identity, so an interrupted run is checked on resume.
    if not _check_generator_file(features_dir, record):
        _write_generator_file(features_dir, record)
    missing = _missing_files(features_dir, n_identities)
    if not missing:
        logger.debug("all %d synthetic identities are present in %s", n_identities, features_dir)
        return features_dir

    n_files = sum(len(splits) for splits in missing.values())
    _check_free_space(features_dir, len(missing), params)
    logger.info("generating %d synthetic identities (%d files) in %s", len(missing), n_files, features_dir)
    started = time.perf_counter()
    _write_missing(params, seed, features_dir, missing)
    logger.info("wrote %d synthetic feature files in %.1f s", n_files, time.perf_counter() - started)
    return features_dir


def _check_free_space(features_dir: Path, n_identities: int, params: SyntheticParams) -> None:
    """Raise ConfigError when ``n_identities`` more identities would not fit on the disk."""
    # float32 rows plus about 1 KiB of zip and npy headers per file, an estimate.
    needed = n_identities * (params.n_samples * params.dim * 4 + len(SPLITS) * 1024)
    free = shutil.disk_usage(features_dir).free
    if needed > 1 << 30:
        logger.info("the missing synthetic identities need about %.1f GiB; %.1f GiB are free", needed / 2**30, free / 2**30)
    if needed > free:
        raise ConfigError(
            f"invalid config value n_classes: {n_identities} more synthetic identities need about "
            f"{needed / 2**30:.1f} GiB in {features_dir}, but only {free / 2**30:.1f} GiB are free; "
            "lower n_classes or free disk space"
        )


def _write_missing(params: SyntheticParams, seed: int, features_dir: Path, missing: dict[int, list[str]]) -> None:
    from tqdm import tqdm

    bounds = params.split_bounds()
    by_chunk: dict[int, list[int]] = {}
    for index in missing:
        by_chunk.setdefault(index // CHUNK_SIZE, []).append(index)

    with tqdm(total=len(missing), unit="identity", desc="synthetic features",
              disable=len(missing) < PROGRESS_MIN_IDENTITIES) as progress:
        for chunk_index, indices in sorted(by_chunk.items()):
            vectors = generate_chunk(params, seed, chunk_index).vectors
            for index in indices:
                for split in missing[index]:
                    low, high = bounds[split]
                    path = feature_path(features_dir, split, identity_name(index))
                    save_features(path, vectors[index - chunk_index * CHUNK_SIZE, low:high])
            progress.update(len(indices))


# --------------------------------------------------------------------------- measurements
# Real ArcFace features for comparison: LFW, the 96 identities with at least 15 images (3,595
# images), YuNet detection, 5-point alignment, InsightFace's w600k_mbf MobileFaceNet, outputs
# L2-normalized. Keys as in similarity_statistics.
# NOTE: the script that measured these figures is not in this repository.
LFW_ARCFACE_STATISTICS = {
    "same": {"mean": 0.602, "std": 0.086, "p5": 0.459},
    "different": {"mean": 0.012, "std": 0.068, "p99.9": 0.243},
    "sample_to_mean": {"mean": 0.759, "std": 0.078},
    "between_means": {"mean": 0.015, "std": 0.075, "max": 0.381},
}


def similarity_statistics(vectors: np.ndarray, include: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Measure the cosine statistics of ``vectors`` (n_identities, n_per_identity, dim), unit rows.

    ``include`` (n_identities, n_per_identity), if given, marks the samples to use. Keys:
    ``same`` (two samples of one identity), ``different`` (two samples of two identities),
    ``sample_to_mean`` (a sample to the mean of its identity's other samples) and
    ``between_means`` (the means of two identities). Each maps to mean, std and one tail
    figure: ``p5`` (5th percentile), ``p99.9`` (99.9th percentile) or ``max``. Memory grows with
    the square of the sample count: 96 identities x 30 samples need about 50 MB.
    """
    if include is None:
        include = np.ones(vectors.shape[:2], dtype=bool)
    counts = include.sum(axis=1)
    if (counts >= 2).sum() < 2:
        raise ValueError("similarity_statistics needs at least 2 identities with 2 or more included samples")
    flat = vectors[include].astype(np.float32)
    labels = np.nonzero(include)[0]

    gram = flat @ flat.T
    upper = np.triu(np.ones(gram.shape, dtype=bool), 1)
    same_identity = labels[:, None] == labels[None, :]
    same = gram[upper & same_identity].astype(np.float64)
    different = gram[upper & ~same_identity].astype(np.float64)
    del gram, upper, same_identity

    totals = np.einsum("ns,nsd->nd", include.astype(np.float64), vectors.astype(np.float64))
    has_others = counts[labels] >= 2
    leave_one_out = _normalize(totals[labels] - flat)[has_others]
    sample_to_mean = np.einsum("id,id->i", flat[has_others], leave_one_out)

    means = _normalize(totals[counts > 0])
    between = (means @ means.T)[np.triu_indices(len(means), 1)]
    return {
        "same": {"mean": float(same.mean()), "std": float(same.std()), "p5": float(np.percentile(same, 5))},
        "different": {
            "mean": float(different.mean()),
            "std": float(different.std()),
            "p99.9": float(np.percentile(different, 99.9)),
        },
        "sample_to_mean": {
            "mean": float(sample_to_mean.mean()),
            "std": float(sample_to_mean.std()),
            "p5": float(np.percentile(sample_to_mean, 5)),
        },
        "between_means": {"mean": float(between.mean()), "std": float(between.std()), "max": float(between.max())},
    }


def nearest_center_accuracy(centers: np.ndarray, queries: np.ndarray, labels: np.ndarray, block_size: int = 1024) -> float:
    """Return the top-1 accuracy of assigning each query to the center of highest cosine.

    ``centers`` (n_classes, dim) need not be normalized; queries are compared in blocks of
    ``block_size`` rows, so memory stays at block_size x n_classes scores.
    """
    centers = _normalize(np.asarray(centers, dtype=np.float32))
    queries = _normalize(np.asarray(queries, dtype=np.float32))
    labels = np.asarray(labels)
    correct = 0
    for low in range(0, len(queries), block_size):
        scores = queries[low : low + block_size] @ centers.T
        correct += int((scores.argmax(axis=1) == labels[low : low + block_size]).sum())
    return correct / len(queries)
