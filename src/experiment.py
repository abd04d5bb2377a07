"""One experiment end to end: load, distribute, train, combine, evaluate and record.

``python3 -m src.experiment`` runs the method named in the config; ``main_mms.py``,
``main_ism.py`` and ``main_single.py`` run their own method.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .config import Config, ConfigError, add_config_arguments, config_from_args, save_config
from .data_utility import PreparedData, cluster_data, prepare_data, submodel_path, train_submodels
from .evaluation import Metrics, evaluate
from .feature_io import FeatureFileError
from .run_folder import RunFolderError, check_resumable, load_saved_parts
from .post_process import MMSCombiner, SubmodelBank, compute_scores, max_max, nearest_centers, nearest_class_center

logger = logging.getLogger(__name__)

LOG_LEVEL_VARIABLE = "MIXMAXSIM_LOG_LEVEL"
RESULT_COLUMNS = [
    "timestamp", "experiment_name", "dataset", "method", "n_classes", "n_clusters", "distance", "epochs",
    "seed", "confidence_threshold", "mixing_factor",
    "top1_accuracy", "macro_precision", "macro_recall", "macro_f1",
    "maxmax_top1_accuracy", "maxmax_macro_precision", "maxmax_macro_recall", "maxmax_macro_f1",
    "ncc_top1_accuracy", "ncc_macro_precision", "ncc_macro_recall", "ncc_macro_f1",
    "train_seconds", "predict_seconds", "peak_memory_mib", "run_dir",
]


@dataclass
class RunResult:
    """Metrics and costs of one run of one method."""

    config: Config
    run_dir: Path
    method: Metrics
    maxmax: Metrics
    nearest_center: Metrics
    confidence_threshold: float | None
    mixing_factor: float | None
    train_seconds: float
    predict_seconds: float
    peak_memory_mib: float

    def row(self) -> dict:
        """Return this run as a row of ``results.csv``."""
        config = self.config
        row = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "experiment_name": config.experiment_name,
            "dataset": config.dataset_name,
            "method": config.method,
            "n_classes": config.n_classes,
            "n_clusters": config.effective_n_clusters,
            "distance": config.distance_measure,
            "epochs": config.epochs,
            "seed": config.seed,
            "confidence_threshold": "" if self.confidence_threshold is None else f"{self.confidence_threshold:.6f}",
            "mixing_factor": "" if self.mixing_factor is None else f"{self.mixing_factor:.6g}",
            "train_seconds": f"{self.train_seconds:.2f}",
            "predict_seconds": f"{self.predict_seconds:.3f}",
            "peak_memory_mib": f"{self.peak_memory_mib:.1f}",
            "run_dir": str(self.run_dir),
        }
        for prefix, metrics in (("", self.method), ("maxmax_", self.maxmax), ("ncc_", self.nearest_center)):
            row.update({key: f"{value:.6f}" for key, value in metrics.to_dict(prefix).items()})
        return row


def peak_memory_mib() -> float:
    """Return this process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_once(config: Config, data: PreparedData) -> RunResult:
    """Run one seed of ``config.method`` on loaded data and write its run folder."""
    run_dir = config.resolve(config.results_dir) / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        return _run_in_folder(config, data, run_dir)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _run_in_folder(config: Config, data: PreparedData, run_dir: Path) -> RunResult:
    logger.info("run %s: %s on %s, %d classes, %d submodels, seed %d", run_dir, config.method,
                config.dataset_name, config.n_classes, config.effective_n_clusters, config.seed)
    check_resumable(run_dir, config)
    save_config(config, run_dir / "config.json")

    # Reuse the saved parts when resuming, so finished submodels keep matching their classes.
    parts_file = run_dir / "parts.json"
    resuming = parts_file.is_file() and not config.overwrite and submodel_path(run_dir, 0).is_file()
    if resuming:
        parts = load_saved_parts(parts_file, data.n_classes)
        logger.info("resuming with the %d parts saved in %s", len(parts), parts_file)
    else:
        parts = cluster_data(data, config, parts_file)

    paths = train_submodels(data, parts, config, run_dir)
    records = [json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) for path in paths]
    train_seconds = float(sum(record["train_seconds"] for record in records))

    bank = SubmodelBank.load(paths, parts)
    combiner = None
    if config.method == "MMS":
        val_scores = compute_scores(bank, data.class_centers, data.x_val, config.distance_measure)
        combiner = MMSCombiner().fit(val_scores, data.y_val)
        logger.info("MMS thresholds: confidence %.4f, mixing factor %.4g (validation accuracy %.4f)",
                    combiner.confidence_threshold_, combiner.mixing_factor_, combiner.validation_accuracy_)

    # Only MMS needs the class centers to answer; ISM and Single answer by max-max alone, so
    # their timed prediction skips the center search and the nearest-center answers reported
    # next to them are computed afterwards, outside the timing.
    started = time.perf_counter()
    centers = data.class_centers if combiner else None
    test_scores = compute_scores(bank, centers, data.x_test, config.distance_measure)
    predictions = combiner.predict(test_scores) if combiner else max_max(test_scores)
    predict_seconds = time.perf_counter() - started
    if combiner:
        center_predictions = nearest_class_center(test_scores)
    else:
        center_predictions = nearest_centers(data.class_centers, data.x_test, config.distance_measure)

    result = RunResult(
        config=config,
        run_dir=run_dir,
        method=evaluate(data.y_test, predictions),
        maxmax=evaluate(data.y_test, max_max(test_scores)),
        nearest_center=evaluate(data.y_test, center_predictions),
        confidence_threshold=combiner.confidence_threshold_ if combiner else None,
        mixing_factor=combiner.mixing_factor_ if combiner else None,
        train_seconds=train_seconds,
        predict_seconds=predict_seconds,
        peak_memory_mib=peak_memory_mib(),
    )
    metrics = {
        "method": result.method.to_dict(),
        "maxmax": result.maxmax.to_dict(),
        "nearest_center": result.nearest_center.to_dict(),
        "confidence_threshold": result.confidence_threshold,
        # JSON has no infinity, so an "always take the similarity answer" factor is written as "inf".
        "mixing_factor": "inf" if result.mixing_factor == math.inf else result.mixing_factor,
        "part_sizes": [len(part) for part in parts],
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "peak_memory_mib": result.peak_memory_mib,
        "n_val_queries": int(len(data.y_val)),
        "n_test_queries": int(len(data.y_test)),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return result


def append_result(path: Path, row: dict) -> None:
    """Append one row to the results CSV, writing the header when the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size > 0:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        if header != RESULT_COLUMNS:
            raise ValueError(
                f"{path} has other columns than this version writes; move it aside "
                f"(for example to {path.with_name('results-old.csv')}) and run again"
            )
        write_header = False
    else:
        write_header = True
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        if write_header:
            writer.writeheader()
        writer.writerow(row)


def run_experiment(config: Config) -> list[RunResult]:
    """Run ``config.n_runs`` seeds (seed, seed + 1, ...) and record each in ``results.csv``."""
    data = prepare_data(config)
    results = []
    for offset in range(config.n_runs):
        run_config = replace(config, seed=config.seed + offset)
        result = run_once(run_config, data)
        append_result(config.resolve(config.results_dir) / "results.csv", result.row())
        results.append(result)
    return results


def format_table(results: list[RunResult]) -> str:
    """Return a text table of test metrics: mean, and standard deviation over several runs."""
    method = results[0].config.method
    lines = [f"{'answer':<22} {'top-1':>15} {'precision':>15} {'recall':>15} {'macro F1':>15}"]
    for label, attribute in ((method, "method"), ("max-max", "maxmax"), ("nearest center", "nearest_center")):
        cells = []
        for key in ("top1_accuracy", "macro_precision", "macro_recall", "macro_f1"):
            values = np.array([getattr(getattr(r, attribute), key) for r in results])
            cell = f"{values.mean():.4f}" + (f" +- {values.std(ddof=1):.4f}" if len(values) > 1 else "")
            cells.append(f"{cell:>15}")
        lines.append(f"{label:<22} " + " ".join(cells))
    first = results[0]
    lines.append(
        f"{len(results)} run(s), {first.config.n_classes} classes, {first.config.effective_n_clusters} submodel(s), "
        f"train {np.mean([r.train_seconds for r in results]):.1f} s, "
        f"predict {np.mean([r.predict_seconds for r in results]):.2f} s, "
        f"peak memory {max(r.peak_memory_mib for r in results):.0f} MiB"
    )
    if first.confidence_threshold is not None:
        lines.append(f"MMS confidence threshold {first.confidence_threshold:.4f}, mixing factor {first.mixing_factor:.4g}")
    lines.append(f"results: {first.run_dir}")
    return "\n".join(lines)


def setup_logging() -> None:
    """Log to stderr at the level named by MIXMAXSIM_LOG_LEVEL (default INFO)."""
    level = os.environ.get(LOG_LEVEL_VARIABLE, "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(f"invalid {LOG_LEVEL_VARIABLE}={level!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL; using INFO",
              file=sys.stderr)
        level = "INFO"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(method: str | None = None, argv: list[str] | None = None) -> int:
    """Command-line entry point; ``method`` fixes the method (the main_*.py scripts)."""
    description = f"Train and evaluate {method or 'the configured method'} on the configured dataset."
    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser)
    if method is None:
        parser.add_argument("--method", choices=("MMS", "ISM", "Single"), help="combination method")
    args = parser.parse_args(argv)
    setup_logging()

    forced = {"method": method} if method else {"method": args.method}
    try:
        config = config_from_args(args, **forced)
        results = run_experiment(config)
    except (ConfigError, FeatureFileError, RunFolderError) as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; run the same command again to resume at the first unfinished submodel")
        return 130
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
