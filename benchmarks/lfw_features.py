"""Measure LFW feature extraction: run the full preparation and report counts and throughput.

    python3 benchmarks/lfw_features.py                        # fresh run, then print the report
    python3 benchmarks/lfw_features.py --write-doc docs/lfw.md
    python3 benchmarks/lfw_features.py --report-only          # report the last run, time detection and embedding

A fresh run deletes and rebuilds data/lfw and features/lfw with
``python3 -m src.prepare_faces --config <config> --dataset-name lfw --overwrite``. The report is
built from the JSON summaries that run writes: identities, images kept and skipped per reason,
detection and embedding throughput, and the machine it ran on. It adds detection and embedding
throughput measured alone, in several passes over images held in memory, because other processes
on a shared machine can slow down the single pass of the full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from src.config import load_config  # noqa: E402

SECTION_HEADING = "## Feature extraction"
# Throughput passes over images already in memory: images per pass and number of passes.
TIMING_IMAGES = 320
TIMING_PASSES = 3


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_preparation(config_path: str, dataset: str) -> dict:
    """Run the preparation command afresh; return its wall and CPU seconds and the load averages."""
    command = [sys.executable, "-m", "src.prepare_faces", "--config", config_path, "--dataset-name", dataset,
               "--overwrite", "--no-progress"]
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "load_before": load_before, "load_after": os.getloadavg()[0]}


def measure_throughput(config) -> dict:
    """Time detection and embedding alone on images in memory; return images/s per pass for each.

    Uses the first TIMING_IMAGES split images (for detection) and aligned faces (for embedding)
    of the prepared dataset, so run it after the preparation. Several passes are made because
    other processes on a shared machine slow single passes down.
    """
    from src.extraction import EmbeddingModel
    from src.faces import create_detector
    from src.images import list_image_files, read_image

    prep = config.dataset_preparation

    def first_images(root: Path) -> list:
        images = []
        for identity in sorted(os.listdir(root / "train")):
            for name in list_image_files(root / "train" / identity)[0]:
                images.append(read_image(root / "train" / identity / name).bgr)
                if len(images) == TIMING_IMAGES:
                    return images
        return images

    raw_images = first_images(config.dataset_data_dir)
    aligned_faces = first_images(config.dataset_data_dir / "aligned")
    detector = create_detector(prep["detector"], detector_model=config.resolve(prep["detector_model"]),
                               retinaface_weights=config.resolve(prep["retinaface_weights"]),
                               min_face_score=prep["min_face_score"])
    model = EmbeddingModel(config.resolve(prep["recognition_model"]), input_mean=prep["input_mean"],
                           input_std=prep["input_std"], threads=prep["onnx_threads"],
                           batch_size=prep["embedding_batch_size"])
    # Warm-up: onnxruntime's first run is slower than later ones.
    model.embed(aligned_faces[: model.batch_size])
    rates = {"detection": [], "embedding": []}
    for _ in range(TIMING_PASSES):
        start = time.perf_counter()
        for image in raw_images:
            detector.detect(image)
        rates["detection"].append(len(raw_images) / (time.perf_counter() - start))
        start = time.perf_counter()
        model.embed(aligned_faces)
        rates["embedding"].append(len(aligned_faces) / (time.perf_counter() - start))
    timing = {name: sorted(round(rate, 1) for rate in values) for name, values in rates.items()}
    timing["n_detection"] = len(raw_images)
    timing["n_embedding"] = len(aligned_faces)
    return timing


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"summary not found: {path}; run the preparation first (drop --report-only)")
    return json.loads(path.read_text(encoding="utf-8"))


def _reasons(counts: dict) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items())) or "none"


def build_report(config_path: str, dataset: str, run: dict | None, timing: dict | None = None) -> str:
    """Return the markdown section built from the three step summaries of ``dataset``."""
    import cv2
    import onnxruntime

    config = load_config(config_path, {"dataset_name": dataset})
    split = _read(config.dataset_data_dir / "split_summary.json")
    align = _read(config.dataset_data_dir / "align_summary.json")
    extract = _read(config.dataset_features_dir / "summary.json")
    prep = config.dataset_preparation

    resumed = [s["step"] for s in (split, align, extract) if s["identities"]["resumed_from_earlier_runs"]]
    faces = align.get("faces_detected_per_image", {})
    lines = [
        SECTION_HEADING,
        "",
        "Command (repository root):",
        "",
        "```",
        f"python3 -m src.prepare_faces --config {config_path} --dataset-name {dataset}",
        "```",
        "",
        ("Numbers below come from `python3 benchmarks/lfw_features.py`, which reruns that command with "
         "`--overwrite --no-progress` and reads the JSON summaries it writes"
         if run is not None else
         "Numbers below come from `python3 benchmarks/lfw_features.py --report-only`, which reads the JSON "
         "summaries that the last run of that command wrote")
        + f" (`data/{dataset}/split_summary.json`, `data/{dataset}/align_summary.json`, "
        f"`features/{dataset}/summary.json`). The rows marked \"alone\" time detection and embedding after "
        f"the run, in {TIMING_PASSES} passes over {TIMING_IMAGES} images already in memory (split images for "
        "detection, aligned faces for embedding).",
        "",
        f"Settings: {prep['n_train']}/{prep['n_val']}/{prep['n_test']} train/val/test images per identity, "
        f"at least {prep['min_train_real']} real train images, augmentations {', '.join(prep['augmentations'])}; "
        f"detector {prep['detector']} (score >= {prep['min_face_score']}), face rule `{prep['face_rule']}`, "
        f"5-point alignment to 112x112; model `{Path(prep['recognition_model']).name}` with input "
        f"(pixel - {prep['input_mean']}) / {prep['input_std']}, batches of up to {prep['embedding_batch_size']}; "
        f"seed {config.seed}.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| identity folders | {split.get('identity_folders', {}).get('total', 'n/a'):,} |",
        f"| identities kept | {extract['identities']['kept']:,} |",
        f"| identities skipped at split | {_reasons(split['identities']['skipped'])} |",
        f"| identities skipped at extraction | {_reasons(extract['identities']['skipped'])} |",
        f"| split images (train/val/test) | {split['images']['kept'].get('train', 0):,} / "
        f"{split['images']['kept'].get('val', 0):,} / {split['images']['kept'].get('test', 0):,} |",
        f"| of which augmented train images | {split['images']['augmented']:,} |",
        f"| images skipped at split | {_reasons(split['images']['skipped'])} |",
        f"| images converted on reading | {_reasons(split['images']['converted'])} |",
        f"| faces detected per image (0/1/2/3/4+) | "
        + " / ".join(f"{faces.get(k, 0):,}" for k in ("0", "1", "2", "3", "4+")) + " |",
        f"| images skipped at alignment | {_reasons(align['images']['skipped'])} |",
        f"| feature rows written (train/val/test) | {extract['images']['kept'].get('train', 0):,} / "
        f"{extract['images']['kept'].get('val', 0):,} / {extract['images']['kept'].get('test', 0):,} |",
        f"| detection, YuNet only | {align['this_run'].get('detection_images_per_second', 0):.0f} images/s |",
        f"| align step (read, detect, warp, write PNG) | {align['this_run'].get('total_images_per_second', 0):.0f} images/s |",
        f"| embedding, model only (preprocessing and onnxruntime) | "
        f"{extract['this_run'].get('embedding_images_per_second', 0):.0f} images/s |",
        f"| extract step (read, embed, write) | {extract['this_run'].get('total_images_per_second', 0):.0f} images/s |",
        f"| step times split / align / extract | {split['this_run']['seconds']:.0f} s / "
        f"{align['this_run']['seconds']:.0f} s / {extract['this_run']['seconds']:.0f} s |",
    ]
    if timing is not None:
        detection, embedding = timing["detection"], timing["embedding"]
        lines.append(f"| detection alone, {timing['n_detection']} images in memory, {TIMING_PASSES} passes "
                     f"(best / worst) | {detection[-1]:.0f} / {detection[0]:.0f} images/s |")
        lines.append(f"| embedding alone, {timing['n_embedding']} aligned faces in memory, batches of "
                     f"{config.dataset_preparation['embedding_batch_size']}, {TIMING_PASSES} passes (best / worst) | "
                     f"{embedding[-1]:.0f} / {embedding[0]:.0f} images/s |")
    if run is not None:
        lines.append(f"| whole command, wall clock | {run['wall_seconds']:.0f} s |")
        lines.append(f"| whole command, CPU time | {run['cpu_seconds']:.0f} s |")
    lines += [
        "",
        f"Machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores available to the process, "
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__} "
        f"(intra-op threads {prep['onnx_threads']}, 0 = onnxruntime's default), OpenCV {cv2.__version__} "
        f"({cv2.getNumThreads()} threads).",
    ]
    if run is not None:
        lines.append(
            f"1-minute load average before and after the run: {run['load_before']:.2f} and {run['load_after']:.2f} "
            "(the command itself adds about 2 on 2 cores; more means other processes competed for the CPU)."
        )
    if resumed:
        lines.append(f"NOTE: steps {', '.join(resumed)} resumed identities from an earlier run, so their "
                     "throughput covers only the images processed in the last run.")
    return "\n".join(lines) + "\n"


def write_section(doc_path: Path, section: str) -> None:
    """Replace the Feature extraction section of ``doc_path`` (or append it), leaving other sections alone."""
    text = doc_path.read_text(encoding="utf-8") if doc_path.exists() else "# LFW\n"
    pattern = re.compile(rf"^{re.escape(SECTION_HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.json", help="config file, relative to the repository root")
    parser.add_argument("--dataset-name", default="lfw", help="dataset entry to prepare (default: lfw)")
    parser.add_argument("--report-only", action="store_true", help="report the last run's summaries and time detection and embedding, without rerunning the preparation")
    parser.add_argument("--write-doc", type=Path, help="also write the report into this markdown file's "
                                                       f"'{SECTION_HEADING[3:]}' section")
    args = parser.parse_args(argv)
    os.chdir(REPO_ROOT)

    run = None if args.report_only else run_preparation(args.config, args.dataset_name)
    timing = measure_throughput(load_config(args.config, {"dataset_name": args.dataset_name}))
    report = build_report(args.config, args.dataset_name, run, timing)
    print(report)
    if args.write_doc:
        write_section(args.write_doc, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
