"""Load and validate the experiment configuration (``config/config.json``).

Every key has a default here, so a config file only needs the keys it changes. Unknown keys,
invalid values and missing paths raise ConfigError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

METHODS = ("MMS", "ISM", "Single")
DISTANCES = ("cosine", "euclidean")
SOURCES = ("folders", "recordio")
FACE_RULES = ("single", "largest", "center")
DETECTORS = ("yunet", "retinaface")
AUGMENTATIONS = ("flip", "rotate", "crop", "brightness")
FEATURE_STORES = ("packed", "files")
FEATURE_DTYPES = ("float32", "float16")

# Keys of one entry under "datasets". raw_dir is where images (or a RecordIO pair) live before
# preparation; features default to <features_dir>/<dataset>, images to <data_dir>/<dataset>.
DATASET_KEYS = {
    "raw_dir": None,
    "source": "folders",
    "aligned": False,
    "max_classes": None,
    "features_dir": None,
    "data_dir": None,
    "preparation": {},
}

# Datasets known without a config entry; a config's "datasets" entry of the same name replaces
# the keys it sets. max_classes is the number of identities the dataset provides.
DEFAULT_DATASETS = {
    "synthetic": {"max_classes": 400000},
    "lfw": {
        "raw_dir": "../shared/faces/lfw",
        "max_classes": 5749,
        "preparation": {
            "recognition_model": "../shared/models/w600k_mbf.onnx",
            "input_mean": 127.5,
            "input_std": 127.5,
            "face_rule": "center",
        },
    },
    "vggface2": {"raw_dir": "raw/vggface2/train", "max_classes": 8900},
    "ms1m": {"raw_dir": "raw/faces_emore", "source": "recordio", "aligned": True, "max_classes": 100000,
             "preparation": {"augmentations": ["flip", "brightness"]}},
    "glint360k": {"raw_dir": "raw/glint360k", "source": "recordio", "aligned": True, "max_classes": 360000,
                  "preparation": {"augmentations": ["flip", "brightness"]}},
}

# Parameters of the synthetic ArcFace-like feature generator. docs/synthetic.md explains each one
# and the calibration behind the defaults. "seed" is the dataset's seed, separate from the
# experiment's "seed" so that runs with seeds seed, seed + 1, ... share one dataset.
SYNTHETIC_DEFAULTS = {
    "seed": 0,
    "dim": 512,
    "n_train": 20,
    "n_val": 5,
    "n_test": 5,
    "spectrum_decay": 0.6,
    "mean_weight": 0.11,
    "n_supergroups": 16,
    "supergroup_weight": 0.3,
    "n_groups": 1024,
    "group_weight": 0.35,
    "duplicate_fraction": 0.01,
    "duplicate_cosine": 0.7,
    "angle_mean": 39.0,
    "identity_angle_std": 3.0,
    "sample_angle_std": 5.0,
    "poor_fraction": 0.13,
    "identity_poor_logit_std": 0.5,
    "poor_cosine_min": 0.15,
    "poor_cosine_max": 0.45,
    "poor_group_drift": 0.45,
    "nuisance_dim": 16,
    "nuisance_weight": 0.4,
    "poor_nuisance_weight": 0.8,
}

# Image preparation and feature extraction; a dataset's "preparation" entry overrides these.
PREPARATION_DEFAULTS = {
    "n_train": 20,
    "n_val": 5,
    "n_test": 5,
    "min_train_real": 5,
    "augmentations": list(AUGMENTATIONS),
    "detector": "yunet",
    "detector_model": "../shared/models/face_detection_yunet_2023mar_int8bq.onnx",
    "retinaface_weights": "~/.deepface/weights/retinaface.onnx",
    "face_rule": "single",
    "min_face_score": 0.7,
    "recognition_model": "models/arcfaceresnet100-8.onnx",
    "input_mean": 0.0,
    "input_std": 1.0,
    "embedding_batch_size": 32,
    "onnx_threads": 0,
}


MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """An invalid configuration value."""


@dataclass
class Config:
    """One experiment's settings; see the README for each key."""

    experiment_name: str = "default"
    dataset_name: str = "synthetic"
    method: str = "MMS"
    n_classes: int = 1000
    n_clusters: int = 10
    distance_measure: str = "cosine"
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 0.01
    arcface_margin: float = 0.5
    arcface_scale: float = 64.0
    seed: int = 0
    n_runs: int = 1
    overwrite: bool = False
    features_dir: str = "features"
    data_dir: str = "data"
    results_dir: str = "results"
    feature_store: str = "packed"
    feature_dtype: str = "float32"
    jit_compile: str | bool = "auto"
    max_val_queries: int | None = None
    max_test_queries: int | None = None
    datasets: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_DATASETS))
    synthetic: dict = field(default_factory=lambda: dict(SYNTHETIC_DEFAULTS))
    preparation: dict = field(default_factory=lambda: copy.deepcopy(PREPARATION_DEFAULTS))
    # Folder that relative paths in the file are resolved against (the repository root).
    base_dir: str = "."

    # ----------------------------------------------------------------- derived values
    def resolve(self, path: str | os.PathLike) -> Path:
        """Resolve a configured path: ``~`` expands, relative paths start at ``base_dir``."""
        path = Path(os.path.expanduser(str(path)))
        return path if path.is_absolute() else Path(self.base_dir) / path

    @property
    def dataset(self) -> dict:
        """The selected dataset's entry, with defaults filled in."""
        entry = dict(DATASET_KEYS)
        entry.update(self.datasets.get(self.dataset_name, {}))
        return entry

    @property
    def dataset_features_dir(self) -> Path:
        """Folder holding ``<split>/<identity>.npz`` for the selected dataset."""
        custom = self.dataset.get("features_dir")
        return self.resolve(custom) if custom else self.resolve(self.features_dir) / self.dataset_name

    @property
    def dataset_data_dir(self) -> Path:
        """Folder holding ``<split>/<identity>/`` images for the selected dataset."""
        custom = self.dataset.get("data_dir")
        return self.resolve(custom) if custom else self.resolve(self.data_dir) / self.dataset_name

    @property
    def dataset_preparation(self) -> dict:
        """Preparation settings for the selected dataset: the defaults, then its overrides."""
        settings = copy.deepcopy(self.preparation)
        settings.update(self.dataset.get("preparation") or {})
        return settings

    @property
    def effective_n_clusters(self) -> int:
        """Number of submodels: 1 for Single, ``n_clusters`` otherwise."""
        return 1 if self.method == "Single" else self.n_clusters

    @property
    def run_name(self) -> str:
        """Folder name of this experiment's output, stable across reruns so training can resume."""
        return (
            f"{self.experiment_name}_{self.method.lower()}_{self.dataset_name}"
            f"_n{self.n_classes}_k{self.effective_n_clusters}_{self.distance_measure}_seed{self.seed}"
        )

    def to_dict(self) -> dict:
        """Return the settings as they would be written to a config file."""
        data = asdict(self)
        data.pop("base_dir")
        return data


# --------------------------------------------------------------------------- validation
def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"invalid config value {key}={value!r}: {allowed}")


def _check_keys(section: dict, allowed: dict | set, where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} in {where}; allowed keys are {sorted(allowed)}"
        )


def _check_int(key: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, f"expected an integer >= {minimum}")


def _check_float(key: str, value, minimum: float, inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, value, "expected a finite number")
    if value < minimum or (not inclusive and value == minimum):
        _fail(key, value, f"expected a number {'>=' if inclusive else '>'} {minimum}")


def validate(config: Config) -> Config:
    """Check every value of ``config``; raise ConfigError on the first invalid one."""
    if config.method not in METHODS:
        _fail("method", config.method, f"expected one of {list(METHODS)}")
    if config.distance_measure not in DISTANCES:
        _fail("distance_measure", config.distance_measure, f"expected one of {list(DISTANCES)}")
    for key in ("experiment_name", "dataset_name", "features_dir", "data_dir", "results_dir"):
        value = getattr(config, key)
        if not isinstance(value, str) or not value:
            _fail(key, value, "expected a non-empty string")
    if config.dataset_name != "synthetic" and config.dataset_name not in config.datasets:
        _fail(
            "dataset_name",
            config.dataset_name,
            f"expected 'synthetic' or a dataset defined under 'datasets': {sorted(config.datasets)}",
        )
    if not isinstance(config.experiment_name, str) or not config.experiment_name.replace("-", "").replace("_", "").isalnum():
        _fail("experiment_name", config.experiment_name, "expected letters, digits, '-' and '_' only")

    for key in ("n_classes", "epochs", "batch_size", "n_runs"):
        _check_int(key, getattr(config, key), 1)
    _check_int("n_clusters", config.n_clusters, 1)
    _check_int("seed", config.seed, 0)
    if config.seed + config.n_runs - 1 > MAX_SEED:
        _fail("seed", config.seed, f"expected seed + n_runs - 1 <= {MAX_SEED} (numpy and scikit-learn take 32-bit seeds)")
    # Single trains one submodel whatever n_clusters is set to, so its value is not checked against n_classes.
    if config.method != "Single" and config.n_clusters > config.n_classes:
        _fail("n_clusters", config.n_clusters, f"expected at most n_classes={config.n_classes}")
    _check_float("learning_rate", config.learning_rate, 0.0, inclusive=False)
    _check_float("arcface_scale", config.arcface_scale, 0.0, inclusive=False)
    _check_float("arcface_margin", config.arcface_margin, 0.0)
    if config.arcface_margin >= 3.14159:
        _fail("arcface_margin", config.arcface_margin, "expected an angle in radians below pi")
    if not isinstance(config.overwrite, bool):
        _fail("overwrite", config.overwrite, "expected true or false")
    if config.feature_store not in FEATURE_STORES:
        _fail("feature_store", config.feature_store, f"expected one of {list(FEATURE_STORES)}")
    if config.feature_dtype not in FEATURE_DTYPES:
        _fail("feature_dtype", config.feature_dtype, f"expected one of {list(FEATURE_DTYPES)}")
    if not isinstance(config.jit_compile, bool) and config.jit_compile != "auto":
        _fail("jit_compile", config.jit_compile, "expected \"auto\", true or false")
    for key in ("max_val_queries", "max_test_queries"):
        value = getattr(config, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            _fail(key, value, "expected null (every query of the split) or an integer >= 1")

    for name, entry in config.datasets.items():
        if not isinstance(entry, dict):
            _fail(f"datasets.{name}", entry, "expected an object")
        _check_keys(entry, DATASET_KEYS, f"datasets.{name}")
        if entry.get("source", "folders") not in SOURCES:
            _fail(f"datasets.{name}.source", entry.get("source"), f"expected one of {list(SOURCES)}")
        if entry.get("max_classes") is not None:
            _check_int(f"datasets.{name}.max_classes", entry["max_classes"], 1)
        _check_keys(entry.get("preparation") or {}, PREPARATION_DEFAULTS, f"datasets.{name}.preparation")

    max_classes = config.dataset.get("max_classes")
    if max_classes is not None and config.n_classes > max_classes:
        _fail("n_classes", config.n_classes, f"dataset {config.dataset_name!r} has at most {max_classes} identities")

    _check_keys(config.synthetic, SYNTHETIC_DEFAULTS, "synthetic")
    _check_int("synthetic.seed", config.synthetic["seed"], 0)
    # Imported here because src.synthetic imports this module.
    from .synthetic import SyntheticParams

    try:
        SyntheticParams.from_dict(config.synthetic)
    except ValueError as error:
        raise ConfigError(str(error)) from error

    _check_keys(config.preparation, PREPARATION_DEFAULTS, "preparation")
    _validate_preparation(config.dataset_preparation, f"datasets.{config.dataset_name}.preparation")
    return config


def _validate_preparation(prep: dict, where: str) -> None:
    for key in ("n_train", "n_val", "n_test", "min_train_real", "embedding_batch_size"):
        _check_int(f"{where}.{key}", prep[key], 1)
    _check_int(f"{where}.onnx_threads", prep["onnx_threads"], 0)
    if prep["min_train_real"] > prep["n_train"]:
        _fail(f"{where}.min_train_real", prep["min_train_real"], f"expected at most n_train={prep['n_train']}")
    if not isinstance(prep["augmentations"], list):
        _fail(f"{where}.augmentations", prep["augmentations"], f"expected a list of names from {list(AUGMENTATIONS)}")
    bad = [name for name in prep["augmentations"] if name not in AUGMENTATIONS]
    if bad:
        _fail(f"{where}.augmentations", bad, f"expected names from {list(AUGMENTATIONS)}")
    if len(set(prep["augmentations"])) != len(prep["augmentations"]):
        _fail(f"{where}.augmentations", prep["augmentations"], "expected each name at most once")
    for key in ("detector_model", "retinaface_weights", "recognition_model"):
        if not isinstance(prep[key], str) or not prep[key]:
            _fail(f"{where}.{key}", prep[key], "expected a file path")
    _check_float(f"{where}.input_mean", prep["input_mean"], float("-inf"))
    if prep["detector"] not in DETECTORS:
        _fail(f"{where}.detector", prep["detector"], f"expected one of {list(DETECTORS)}")
    if prep["face_rule"] not in FACE_RULES:
        _fail(f"{where}.face_rule", prep["face_rule"], f"expected one of {list(FACE_RULES)}")
    _check_float(f"{where}.input_std", prep["input_std"], 0.0, inclusive=False)
    _check_float(f"{where}.min_face_score", prep["min_face_score"], 0.0)
    if prep["min_face_score"] > 1.0:
        _fail(f"{where}.min_face_score", prep["min_face_score"], "expected a detector score between 0 and 1")


# --------------------------------------------------------------------------- loading
def config_from_dict(data: dict, base_dir: str | os.PathLike = ".") -> Config:
    """Build and validate a Config from a parsed config file."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    known = {f for f in Config.__dataclass_fields__ if f != "base_dir"}
    _check_keys(data, known, "the config file")
    values = copy.deepcopy(data)
    for section, defaults in (("synthetic", SYNTHETIC_DEFAULTS), ("preparation", PREPARATION_DEFAULTS)):
        merged = copy.deepcopy(defaults)
        section_values = values.get(section, {})
        if not isinstance(section_values, dict):
            _fail(section, section_values, "expected an object")
        merged.update(section_values)
        values[section] = merged
    datasets = values.get("datasets", {})
    if not isinstance(datasets, dict):
        _fail("datasets", datasets, "expected an object mapping dataset names to their settings")
    merged_datasets = copy.deepcopy(DEFAULT_DATASETS)
    for name, entry in datasets.items():
        if not isinstance(entry, dict):
            _fail(f"datasets.{name}", entry, "expected an object")
        target = merged_datasets.setdefault(name, {})
        preparation = {**target.get("preparation", {}), **(entry.get("preparation") or {})}
        target.update(entry)
        if preparation:
            target["preparation"] = preparation
    values["datasets"] = merged_datasets
    return validate(Config(**values, base_dir=str(base_dir)))


def load_config(path: str | os.PathLike = "config/config.json", overrides: dict | None = None) -> Config:
    """Load a config file, apply ``overrides`` (key -> value) and validate the result.

    Relative paths inside the file are resolved against the folder above ``config/`` when the
    file lives in a ``config`` folder, and against the file's own folder otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass --config with the path of a JSON config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    folder = path.resolve().parent
    base_dir = folder.parent if folder.name == "config" else folder
    return config_from_dict(data, base_dir=base_dir)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write ``config`` as JSON."""
    Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- command line
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per top-level scalar key (``--n-classes 500``)."""
    parser.add_argument("--config", default="config/config.json", help="path of the JSON config file")
    parser.add_argument("--experiment-name", help="name of the experiment and its output folder")
    parser.add_argument("--dataset-name", help="dataset to use: 'synthetic' or a name under 'datasets'")
    parser.add_argument("--n-classes", type=int, help="number of identities to use")
    parser.add_argument("--n-clusters", type=int, help="number of submodels (ignored by Single)")
    parser.add_argument("--distance-measure", choices=DISTANCES, help="distance for clustering and similarity")
    parser.add_argument("--epochs", type=int, help="training epochs per submodel")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--learning-rate", type=float, help="optimizer learning rate")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--n-runs", type=int, help="repetitions with seeds seed, seed+1, ...")
    parser.add_argument("--overwrite", action="store_true", default=None, help="retrain finished submodels")


def config_from_args(args: argparse.Namespace, **forced) -> Config:
    """Load ``args.config`` with the flags given on the command line and ``forced`` values applied."""
    keys = ("experiment_name", "dataset_name", "n_classes", "n_clusters", "distance_measure", "epochs",
            "batch_size", "learning_rate", "seed", "n_runs", "overwrite")
    overrides = {key: getattr(args, key, None) for key in keys}
    overrides.update(forced)
    return load_config(args.config, overrides)
