"""Prepare one dataset's face images and features: unpack, split, align, extract.

    python3 -m src.prepare_faces --config config/config.json --dataset-name lfw
    python3 -m src.prepare_faces --dataset-name lfw --steps split,align --identities 10

Steps and their output (``data`` and ``features`` are the config's data_dir and features_dir):

- ``unpack`` (RecordIO datasets only): ``<raw_dir>/train.rec`` to ``data/<dataset>/unpacked/<identity>/``.
- ``split``: identity folders to ``data/<dataset>/{train,val,test}/<identity>/``.
- ``align`` (datasets that are not already aligned): ``data/<dataset>/aligned/{train,val,test}/<identity>/``.
- ``extract``: ``features/<dataset>/{train,val,test}/<identity>.npz`` and ``features/<dataset>/summary.json``.

Every step skips identities finished by an earlier run unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys

from src.config import Config, ConfigError, config_from_args
from src.extraction import EmbeddingModel, ModelInputError, extract_dataset
from src.faces import RetinaFaceEngineError, align_dataset, create_detector
from src.images import SplitSettings, SplitSettingsError, split_identities
from src.recordio import UNPACKED_DIR, RecordIOError, unpack_recordio

logger = logging.getLogger(__name__)

STEPS = ("unpack", "split", "align", "extract")
# Errors whose message already names the value and the fix; main() logs them without a traceback.
USER_ERRORS = (ConfigError, FileNotFoundError, ModelInputError, RecordIOError, RetinaFaceEngineError, SplitSettingsError)


def default_steps(dataset: dict) -> list[str]:
    """Return the steps a dataset entry needs: unpack for RecordIO, align unless already aligned."""
    steps = ["unpack"] if dataset.get("source") == "recordio" else []
    steps.append("split")
    if not dataset.get("aligned"):
        steps.append("align")
    steps.append("extract")
    return steps


def parse_steps(text: str | None, dataset: dict, dataset_name: str) -> list[str]:
    """Return the steps named in ``--steps`` (comma-separated) in pipeline order; raise ConfigError on invalid ones."""
    if not text:
        return default_steps(dataset)
    requested = [step.strip() for step in text.split(",") if step.strip()]
    unknown = [step for step in requested if step not in STEPS]
    if unknown:
        raise ConfigError(f"invalid --steps value(s) {unknown}: expected names from {list(STEPS)}, comma-separated")
    if "unpack" in requested and dataset.get("source") != "recordio":
        raise ConfigError(f"dataset {dataset_name!r} has source {dataset.get('source')!r}; "
                          "the unpack step only applies to source 'recordio', drop it from --steps")
    if "align" in requested and dataset.get("aligned"):
        raise ConfigError(f"dataset {dataset_name!r} is already aligned (aligned: true); drop align from --steps")
    return [step for step in STEPS if step in requested]


def run_preparation(
    config: Config,
    steps: list[str],
    *,
    max_identities: int | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Run ``steps`` for ``config``'s dataset; return {step: summary}."""
    if config.dataset_name == "synthetic":
        raise ConfigError("dataset 'synthetic' has no images to prepare; pass --dataset-name with a dataset "
                          "defined under 'datasets' in the config (for example lfw)")
    dataset = config.dataset
    prep = config.dataset_preparation
    data_dir = config.dataset_data_dir
    summaries = {}

    if dataset.get("raw_dir") is None and ("unpack" in steps or "split" in steps):
        raise ConfigError(f"datasets.{config.dataset_name}.raw_dir is not set; set it to the folder of raw images")
    raw_dir = config.resolve(dataset["raw_dir"]) if dataset.get("raw_dir") else None

    if "unpack" in steps:
        summaries["unpack"] = unpack_recordio(
            raw_dir, data_dir / UNPACKED_DIR, dataset=config.dataset_name, overwrite=config.overwrite,
            max_identities=max_identities, progress=progress,
        )
    if "split" in steps:
        split_source = data_dir / UNPACKED_DIR if dataset.get("source") == "recordio" else raw_dir
        settings = SplitSettings(
            n_train=prep["n_train"], n_val=prep["n_val"], n_test=prep["n_test"],
            min_train_real=prep["min_train_real"], augmentations=tuple(prep["augmentations"]), seed=config.seed,
        )
        summaries["split"] = split_identities(
            split_source, data_dir, settings, dataset=config.dataset_name, overwrite=config.overwrite,
            max_identities=max_identities, progress=progress,
        )
    if "align" in steps:
        detector = create_detector(
            prep["detector"],
            detector_model=config.resolve(prep["detector_model"]),
            retinaface_weights=config.resolve(prep["retinaface_weights"]),
            min_face_score=prep["min_face_score"],
        )
        summaries["align"] = align_dataset(
            data_dir, detector, face_rule=prep["face_rule"], dataset=config.dataset_name,
            overwrite=config.overwrite, max_identities=max_identities, progress=progress,
        )
    if "extract" in steps:
        model = EmbeddingModel(
            config.resolve(prep["recognition_model"]),
            input_mean=prep["input_mean"], input_std=prep["input_std"],
            threads=prep["onnx_threads"] if threads is None else threads,
            batch_size=prep["embedding_batch_size"],
        )
        summaries["extract"] = extract_dataset(
            data_dir, config.dataset_features_dir, model, aligned_dataset=bool(dataset.get("aligned")),
            dataset=config.dataset_name, overwrite=config.overwrite, max_identities=max_identities,
            progress=progress,
        )
    return summaries


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python3 -m src.prepare_faces",
        description="Unpack, split, align and embed one dataset's face images into feature files.",
    )
    # Only the config flags that preparation uses; config_from_args treats the others as unset.
    parser.add_argument("--config", default="config/config.json", help="path of the JSON config file")
    parser.add_argument("--dataset-name", help="dataset to prepare, a name under 'datasets' in the config")
    parser.add_argument("--seed", type=int, help="seed of the random split and augmentations (default: the config's)")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="delete the earlier output of each step that runs and redo it")
    parser.add_argument("--steps", help=f"comma-separated steps to run, from {','.join(STEPS)} "
                                        "(default: all that apply to the dataset)")
    parser.add_argument("--identities", type=int, help="process at most this many identities (default: all)")
    parser.add_argument("--threads", type=int,
                        help="onnxruntime intra-op threads for embedding (default: preparation.onnx_threads, "
                             "0 = one per physical core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging level (default: INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success, 2 on invalid input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.identities is not None and args.identities < 1:
            raise ConfigError(f"invalid --identities {args.identities}: expected an integer >= 1")
        if args.threads is not None and args.threads < 0:
            raise ConfigError(f"invalid --threads {args.threads}: expected an integer >= 0")
        config = config_from_args(args)
        steps = parse_steps(args.steps, config.dataset, config.dataset_name)
        logger.info("preparing dataset %s: steps %s", config.dataset_name, ",".join(steps))
        run_preparation(config, steps, max_identities=args.identities, threads=args.threads,
                        progress=not args.no_progress)
    except USER_ERRORS as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
