"""Time ``main_mms.py``, ``main_ism.py`` and ``main_single.py`` on one config and tabulate them.

Each script runs in its own process, as a user would start it, under the experiment name
``<experiment>-timing`` so that the user's own runs are not touched, and with ``--overwrite``
so every submodel is trained again. Missing synthetic features are generated first; that time
is reported on its own line. Prints a Markdown section and, with ``--write-doc``, writes it to
a file, replacing only the section of the same heading when the file exists.

    python3 benchmarks/methods.py --write-doc docs/default_run.md
    python3 benchmarks/methods.py --config config/lfw.json --write-doc docs/lfw.md --heading Identification
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from src.config import load_config  # noqa: E402


def run(command: list[str]) -> float:
    """Run a command in the repository root and return its wall-clock seconds."""
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def last_row(results_csv: Path, experiment: str, method: str) -> dict:
    with results_csv.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle)
                if row["experiment_name"] == experiment and row["method"] == method]
    return rows[-1]


def replace_section(text: str, heading: str, section: str) -> str:
    """Replace the ``## heading`` section of a Markdown text (up to the next ``## ``), or append it."""
    lines = text.splitlines()
    marker = f"## {heading}"
    if marker not in lines:
        return text.rstrip("\n") + "\n\n" + section
    start = lines.index(marker)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[:start]) + "\n" + section + ("\n" + "\n".join(lines[end:]) if end < len(lines) else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "config" / "config.json"), help="config file to time")
    parser.add_argument("--write-doc", type=Path, help="also write the Markdown record to this file")
    parser.add_argument("--heading", help="write a '## HEADING' section into --write-doc instead of a whole page")
    args = parser.parse_args()

    config = load_config(args.config)
    python = sys.executable
    generate_seconds = None
    if config.dataset_name == "synthetic":
        from src.synthetic import ensure_synthetic

        started = time.perf_counter()
        ensure_synthetic(config)
        generate_seconds = time.perf_counter() - started

    experiment = f"{config.experiment_name}-timing"
    load_before = os.getloadavg()[0]
    rows = []
    for script, method in (("main_mms.py", "MMS"), ("main_ism.py", "ISM"), ("main_single.py", "Single")):
        seconds = run([python, script, "--config", args.config, "--experiment-name", experiment, "--overwrite"])
        row = last_row(config.resolve(config.results_dir) / "results.csv", experiment, method)
        rows.append((script, seconds, row))
        print(f"{script}: {seconds:.1f} s", file=sys.stderr)

    command = "python3 benchmarks/methods.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {args.heading}" if args.heading else f"# {config.dataset_name}: time and accuracy of each method",
        "",
        f"Command: `{command}`, on "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}. Config: `{Path(args.config).name}` with dataset "
        f"`{config.dataset_name}`, {config.n_classes} identities, K = {config.n_clusters}, "
        f"{config.epochs} epochs, batch size {config.batch_size}, {config.distance_measure} distance, "
        f"seed {config.seed}. Top-1 accuracy and macro F1 are on the test split.",
        "",
    ]
    if generate_seconds is not None:
        lines += [f"Generating the missing synthetic features took {generate_seconds:.1f} s "
                  "(0 when they already existed).", ""]
    lines += [
        "| script | wall time (s) | training (s) | prediction (s) | peak memory (MiB) | top-1 | macro F1 "
        "| max-max top-1 | max-max macro F1 | nearest center top-1 | nearest center macro F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for script, seconds, row in rows:
        lines.append(
            f"| `{script}` | {seconds:.1f} | {float(row['train_seconds']):.1f} | {float(row['predict_seconds']):.2f} "
            f"| {float(row['peak_memory_mib']):.0f} | {float(row['top1_accuracy']):.4f} "
            f"| {float(row['macro_f1']):.4f} | {float(row['maxmax_top1_accuracy']):.4f} "
            f"| {float(row['maxmax_macro_f1']):.4f} | {float(row['ncc_top1_accuracy']):.4f} "
            f"| {float(row['ncc_macro_f1']):.4f} |"
        )
    accuracies = {row[key] for _, _, row in rows for key in ("top1_accuracy", "maxmax_top1_accuracy", "ncc_top1_accuracy")}
    if len(accuracies) == 1:
        lines += ["", "Every answer reaches the same top-1 accuracy here: at this number of identities the "
                  "features separate the classes so well that the test split cannot tell the methods apart."]
    lines += [
        "",
        f"1-minute load average before and after: {load_before:.2f} and {os.getloadavg()[0]:.2f} "
        f"(these runs add about 2 on 2 cores; more means other processes competed for the CPU).",
        "",
        "Wall time includes Python and TensorFlow start-up and loading the feature files.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_doc and args.heading and args.write_doc.is_file():
        text = replace_section(args.write_doc.read_text(encoding="utf-8"), args.heading, text)
    if args.write_doc:
        args.write_doc.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
