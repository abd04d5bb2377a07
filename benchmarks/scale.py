"""Compare Single, ISM and MMS with nearest class center as n_classes grows.

Every configuration runs in its own process, so the peak resident set size it reports is its
own. Each records training seconds, peak memory, prediction throughput over the test split,
top-1 accuracy, macro F1 and achieved training GFLOP/s, next to the GFLOP/s of a plain float32
matrix product measured in the same run. Results go to a Markdown file and a PNG plot.

    python3 benchmarks/scale.py --records docs/benchmarks.json \
        --write-doc docs/benchmarks.md --plot docs/benchmarks.png     # the full grid, hours on 2 cores
    python3 benchmarks/scale.py --quick                               # 1,000 classes, < 1 min
    python3 benchmarks/scale.py --records docs/benchmarks.json --report-only \
        --write-doc docs/benchmarks.md --plot docs/benchmarks.png     # redraw the page from records

Records of several invocations (other sizes, other K) accumulate in the --records file; the page
shows every record with the command and matrix-product rate of its own invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


# --------------------------------------------------------------------------- worker
def training_flops(parts_sizes: list[int], samples_per_class: int, dim: int, epochs: int) -> float:
    """Return the floating-point operations of training's matrix products (forward and backward).

    Each sample costs one (dim x n_classes_k) product forward and two backward, 2 * dim *
    n_classes_k operations each. Normalization, softmax and optimizer updates are not counted.
    """
    return float(epochs * sum(3 * 2 * dim * size * size * samples_per_class for size in parts_sizes))


def run_worker(spec: dict) -> dict:
    """Run one configuration in this process and return its measurements."""
    from src.config import config_from_dict
    from src.data_utility import prepare_data
    from src.evaluation import evaluate
    from src.experiment import peak_memory_mib, run_once
    from src.post_process import nearest_centers

    method = spec["method"]
    values = {
        "experiment_name": "scale",
        "dataset_name": "synthetic",
        "method": "Single" if method == "NCC" else method,
        "n_classes": spec["n_classes"],
        "n_clusters": spec["n_clusters"],
        "epochs": spec["epochs"],
        "batch_size": spec["batch_size"],
        "overwrite": True,
        "results_dir": spec["results_dir"],
    }
    for key in ("features_dir", "feature_store", "feature_dtype", "jit_compile", "synthetic", "max_val_queries",
                "max_test_queries"):
        if spec.get(key) is not None:
            values[key] = spec[key]
    config = config_from_dict(values, base_dir=REPO_ROOT)
    started = time.perf_counter()
    data = prepare_data(config)
    load_seconds = time.perf_counter() - started

    record = {**spec, "load_seconds": load_seconds}
    if method == "NCC":
        started = time.perf_counter()
        predictions = nearest_centers(data.class_centers, data.x_test, config.distance_measure)
        predict_seconds = time.perf_counter() - started
        metrics = evaluate(data.y_test, predictions)
        record.update(train_seconds=0.0, predict_seconds=predict_seconds, peak_memory_mib=peak_memory_mib(),
                      top1_accuracy=metrics.top1_accuracy, macro_f1=metrics.macro_f1, train_gflops=None)
    else:
        result = run_once(config, data)
        sizes = json.loads((result.run_dir / "metrics.json").read_text())["part_sizes"]
        samples_per_class = len(data.y_train) // data.n_classes
        flops = training_flops(sizes, samples_per_class, data.dim, config.epochs)
        submodels = [json.loads(path.read_text()) for path in sorted((result.run_dir / "submodels").glob("*.json"))]
        rss_after = [s["rss_mib_after"] for s in submodels]
        record.update(
            train_seconds=result.train_seconds,
            predict_seconds=result.predict_seconds,
            peak_memory_mib=result.peak_memory_mib,
            top1_accuracy=result.method.top1_accuracy,
            macro_f1=result.method.macro_f1,
            maxmax_top1_accuracy=result.maxmax.top1_accuracy,
            train_gflops=flops / max(result.train_seconds, 1e-9) / 1e9,
            largest_part=max(sizes),
            ncc_top1_accuracy=result.nearest_center.top1_accuracy,
            xla_submodels=sum(bool(s["jit_compile"]) for s in submodels),
            rss_after_first_submodel_mib=rss_after[0],
            rss_after_last_submodel_mib=rss_after[-1],
        )
    record["n_val_queries"], record["n_test_queries"] = len(data.y_val), len(data.y_test)
    record["queries_per_second"] = len(data.y_test) / max(record["predict_seconds"], 1e-9)
    return record


# --------------------------------------------------------------------------- driver
def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Return the float32 GFLOP/s of a square numpy matrix product on this machine."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


METHODS = ("NCC", "Single", "ISM", "MMS")


def configurations(sizes, ks, epochs, batch_size, results_dir, single_max: int,
                   methods=METHODS, **settings) -> list[dict]:
    """Return the grid of runs: NCC, Single (up to single_max classes), ISM and MMS per K.

    ``methods`` keeps only the named methods; ``settings`` (config keys such as jit_compile or
    feature_dtype) are passed to every run.
    """
    grid = []
    for n_classes in sizes:
        common = {"n_classes": n_classes, "epochs": epochs, "batch_size": batch_size, "results_dir": results_dir,
                  **settings}
        grid.append({**common, "method": "NCC", "n_clusters": 1})
        if n_classes <= single_max:
            grid.append({**common, "method": "Single", "n_clusters": 1})
        for k in ks:
            if k < n_classes:
                grid.append({**common, "method": "ISM", "n_clusters": k})
                grid.append({**common, "method": "MMS", "n_clusters": k})
    return [spec for spec in grid if spec["method"] in methods]


def run_in_subprocess(spec: dict, timeout: float) -> dict:
    """Run one configuration in a fresh Python process and parse its JSON result line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = completed.stderr.strip().splitlines()[-3:]
        return {**spec, "error": f"exit code {completed.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def format_cell(value, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def machine_description() -> str:
    """Return the CPU count and library versions of this machine, as recorded with each run."""
    from importlib.metadata import version

    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), Python "
            f"{platform.python_version()}, numpy {np.__version__}, TensorFlow {version('tensorflow')}, "
            f"scikit-learn {version('scikit-learn')}")


# Records with equal values of these keys measure the same configuration; a new one replaces the old.
RECORD_KEY = ("n_classes", "method", "n_clusters", "epochs", "batch_size", "feature_dtype", "feature_store",
              "jit_compile", "max_val_queries", "max_test_queries", "synthetic")


def record_key(record: dict) -> str:
    return json.dumps([record.get(key) for key in RECORD_KEY])


def load_records(path: Path | None) -> list[dict]:
    """Return the records saved at ``path`` (none when it does not exist yet)."""
    if path is None or not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["records"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"{path} is not a records file of this script ({error}); move it aside or pass another "
                         "--records path")
    return records


def save_records(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"records": records}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def merge_record(records: list[dict], record: dict) -> list[dict]:
    """Return ``records`` with ``record`` in place of any earlier record of the same configuration."""
    key = record_key(record)
    others = [r for r in records if record_key(r) != key]
    return others + [record]


TARGETS = (
    # label, requirement, function of (MMS, Single, ISM), passes
    ("training time MMS / Single", "<= 0.25",
     lambda m, s, i: m["train_seconds"] / s["train_seconds"], lambda v: v <= 0.25),
    ("peak memory MMS / Single", "<= 0.50",
     lambda m, s, i: m["peak_memory_mib"] / s["peak_memory_mib"], lambda v: v <= 0.5),
    ("top-1 MMS - Single (points)", ">= -0.50",
     lambda m, s, i: 100 * (m["top1_accuracy"] - s["top1_accuracy"]), lambda v: v >= -0.5),
    ("top-1 MMS - ISM (points)", ">= 0",
     lambda m, s, i: 100 * (m["top1_accuracy"] - i["top1_accuracy"]), lambda v: v >= 0),
    ("queries/s MMS / Single", ">= 0.40",
     lambda m, s, i: m["queries_per_second"] / s["queries_per_second"], lambda v: v >= 0.4),
    ("training GFLOP/s MMS / matrix product", ">= 0.50",
     lambda m, s, i: m["train_gflops"] / m["matmul_gflops"], lambda v: v >= 0.5),
    ("training GFLOP/s Single / matrix product", ">= 0.50",
     lambda m, s, i: s["train_gflops"] / s["matmul_gflops"], lambda v: v >= 0.5),
)


def setting_notes(record: dict) -> list[str]:
    """Return the settings in which ``record`` differs from the grid's defaults, as short labels."""
    notes = []
    if record.get("feature_dtype", "float32") != "float32":
        notes.append(record["feature_dtype"])
    if record.get("feature_store", "packed") != "packed":
        notes.append(f"{record['feature_store']} store")
    if record.get("jit_compile", "auto") != "auto":
        notes.append("XLA " + ("on" if record["jit_compile"] else "off"))
    notes += [f"{key} {value}" for key, value in (record.get("synthetic") or {}).items()]
    return notes


def with_setting_notes(name: str, record: dict) -> str:
    """Return ``name`` followed by the record's non-default settings in brackets, if it has any."""
    notes = setting_notes(record)
    return f"{name} ({', '.join(notes)})" if notes else name


def target_lines(records: list[dict]) -> list[str]:
    """Return a table of the targets for every scale and K where MMS, ISM and Single all ran."""
    # Only runs with the default settings and every query count toward the targets.
    good = [r for r in records if "error" not in r and not setting_notes(r)
            and r.get("max_val_queries") is None and r.get("max_test_queries") is None]
    by_configuration = {(r["method"], r["n_classes"], r["n_clusters"]): r for r in good}
    rows = []
    for (method, n_classes, k), mms in sorted(by_configuration.items(), key=lambda item: (item[0][1], item[0][2])):
        single = by_configuration.get(("Single", n_classes, 1))
        ism = by_configuration.get(("ISM", n_classes, k))
        if method != "MMS" or single is None or ism is None:
            continue
        cells = []
        for _, _, measure, passes in TARGETS:
            try:
                value = measure(mms, single, ism)
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("")
                continue
            cells.append(f"{value:.3f} {'met' if passes(value) else 'missed'}")
        rows.append(f"| {n_classes:,} | {k} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    header = " | ".join(f"{label} ({requirement})" for label, requirement, _, _ in TARGETS)
    return [
        "### Targets",
        "",
        "Ratios from one run of each method on the same data; a scale and K appear where MMS, ISM and Single "
        "all ran.",
        "",
        f"| identities | K | {header} |",
        "|---|---|" + "---|" * len(TARGETS),
        *rows,
        "",
    ]


def report_block(records: list[dict]) -> str:
    """Return the generated part of the benchmark page: machine, targets, one table per scale, commands."""
    machines = sorted({r["machine"] for r in records if r.get("machine")})
    lines = [
        BEGIN_MARK,
        "",
        "## Results per scale",
        "",
        "Machine: " + "; ".join(machines) + ".",
        "",
        "Training GFLOP/s counts the matrix products of forward and backward passes only "
        "(3 x 2 x dim x classes per sample and submodel). The matmul column is the float32 "
        "matrix-product rate (numpy, 2048 x 2048) measured at the start of the same invocation. Queries/s is the test "
        "queries answered per second by the method's whole answer (every submodel, plus the similarity "
        "search for MMS). NCC is the nearest class center alone, without training.",
        "",
        *target_lines(records),
    ]
    for n_classes in sorted({r["n_classes"] for r in records}):
        lines += [
            f"### {n_classes:,} identities",
            "",
            "| method | K | epochs | load (s) | train (s) | peak memory (MiB) | test queries | queries/s | top-1 "
            "| macro F1 | max-max top-1 | train GFLOP/s | matmul GFLOP/s | XLA submodels "
            "| RSS after 1st / last submodel (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = sorted((r for r in records if r["n_classes"] == n_classes),
                      key=lambda r: (METHODS.index(r["method"]), r["n_clusters"], setting_notes(r)))
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | {r['n_clusters']} | {r['epochs']} | failed: {r['error']} "
                             "| | | | | | | | | | | |")
                continue
            rss = ""
            if r.get("rss_after_first_submodel_mib") is not None:
                rss = f"{r['rss_after_first_submodel_mib']:,.0f} / {r['rss_after_last_submodel_mib']:,.0f}"
            queries = r.get("n_test_queries")
            method = with_setting_notes(r["method"], r)
            lines.append(
                f"| {method} | {r['n_clusters']} | {r['epochs']} | {format_cell(r.get('load_seconds'), 1)} "
                f"| {format_cell(r['train_seconds'], 1)} | {format_cell(r['peak_memory_mib'], 0)} "
                f"| {'' if queries is None else f'{queries:,}'} | {format_cell(r['queries_per_second'], 0)} "
                f"| {r['top1_accuracy']:.4f} | {r['macro_f1']:.4f} | {format_cell(r.get('maxmax_top1_accuracy'), 4)} "
                f"| {format_cell(r.get('train_gflops'), 1)} | {format_cell(r.get('matmul_gflops'), 1)} "
                f"| {r.get('xla_submodels', '')} | {rss} |"
            )
        lines.append("")
    commands = list(dict.fromkeys(r["command"] for r in records if r.get("command")))
    if commands:
        lines += ["### Commands", "", "Each row above comes from one of these invocations:", "", "```bash",
                  *commands, "```", ""]
    lines += ["![training time, peak memory and top-1 accuracy against identities](benchmarks.png)", "", END_MARK]
    return "\n".join(lines)


BEGIN_MARK = "<!-- generated by benchmarks/scale.py --write-doc: begin -->"
END_MARK = "<!-- generated by benchmarks/scale.py --write-doc: end -->"


def write_report(records: list[dict], path: Path) -> None:
    """Write the generated block into ``path``, keeping any text outside its begin and end marks.

    A new file gets a title and the block; a file without the marks gets the block appended.
    """
    block = report_block(records)
    if not path.is_file():
        path.write_text(f"# Scale benchmark\n\n{block}\n", encoding="utf-8")
        return
    text = path.read_text(encoding="utf-8")
    if BEGIN_MARK in text and END_MARK in text:
        before, rest = text.split(BEGIN_MARK, 1)
        after = rest.split(END_MARK, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def plot(records: list[dict], path: Path) -> None:
    """Plot training time, peak memory and top-1 accuracy against n_classes per method and K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in records if "error" not in r]

    def series_label(record: dict) -> str:
        method = record["method"]
        return with_setting_notes(method if method in ("NCC", "Single") else f"{method} K={record['n_clusters']}",
                                  record)

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for index, label in enumerate(sorted({series_label(r) for r in good})):
        rows = sorted((r for r in good if series_label(r) == label), key=lambda r: r["n_classes"])
        method = rows[0]["method"]
        # One color per series in all three panels, though NCC has no training time to plot.
        style = {"marker": "o", "label": label, "color": f"C{index % 10}"}
        x = [r["n_classes"] for r in rows]
        if method != "NCC":
            axes[0].plot(x, [r["train_seconds"] for r in rows], **style)
        axes[1].plot(x, [r["peak_memory_mib"] for r in rows], **style)
        axes[2].plot(x, [r["top1_accuracy"] for r in rows], **style)
    for axis, title in zip(axes, ("training time (s)", "peak memory (MiB)", "top-1 accuracy")):
        axis.set_xscale("log")
        axis.set_xlabel("identities")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1000,10000,50000,100000", help="comma-separated n_classes values")
    parser.add_argument("--ks", default="4,10,25", help="comma-separated numbers of submodels for ISM and MMS")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs, the same for every method")
    parser.add_argument("--batch-size", type=int, default=512, help="training batch size")
    parser.add_argument("--single-max", type=int, default=50000, help="largest n_classes at which Single runs")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one configuration may take")
    parser.add_argument("--quick", action="store_true", help="1,000 classes, K=4, 2 epochs: under a minute")
    parser.add_argument("--results-dir", default="results/benchmarks", help="run folders of the benchmark")
    parser.add_argument("--records", type=Path,
                        help="JSON file of records: read first, each new record replaces the one of the same "
                             "configuration, written after every run (for example docs/benchmarks.json)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; write --write-doc and --plot from the --records file")
    parser.add_argument("--write-doc", type=Path,
                        help="write the tables here, between the generated-block marks of an existing page")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to run")
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                        help="XLA for training: auto (large submodels only), true or false")
    parser.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32",
                        help="dtype of features in memory")
    parser.add_argument("--feature-store", choices=("packed", "files"), default="packed",
                        help="packed: memory-mapped store, one part read at a time; files: every .npz in memory")
    parser.add_argument("--features-dir", help="feature folder (default: the config's, features/)")
    parser.add_argument("--dim", type=int, help="feature dimension of the synthetic data (default 512)")
    parser.add_argument("--max-val-queries", type=int, help="validation queries drawn at random for MMS thresholds")
    parser.add_argument("--max-test-queries", type=int, help="test queries drawn at random for evaluation")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0

    records = load_records(args.records)
    if args.report_only:
        if not records:
            parser.error("--report-only needs a --records file with records in it")
    else:
        records = run_grid(parser, args, records, argv)
    if args.write_doc:
        write_report(records, args.write_doc)
    if args.plot:
        plot(records, args.plot)
    failed = [r for r in records if "error" in r]
    return 1 if failed and args.quick else 0


def run_grid(parser: argparse.ArgumentParser, args: argparse.Namespace, records: list[dict],
             argv: list[str] | None) -> list[dict]:
    """Run every configuration of the grid the arguments describe; return ``records`` updated."""
    if args.quick:
        args.sizes, args.ks, args.epochs = "1000", "4", 2
    sizes = [int(value) for value in args.sizes.split(",")]
    ks = [int(value) for value in args.ks.split(",")]
    methods = [value for value in args.methods.split(",") if value]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"invalid --methods {unknown}: expected names from {list(METHODS)}")
    gflops = matmul_gflops()
    print(f"float32 matrix product: {gflops:.1f} GFLOP/s", flush=True)
    settings = {
        "jit_compile": {"auto": "auto", "true": True, "false": False}[args.jit_compile],
        "feature_dtype": args.feature_dtype,
        "feature_store": args.feature_store,
        "features_dir": args.features_dir,
        "synthetic": {"dim": args.dim} if args.dim else None,
        "max_val_queries": args.max_val_queries,
        "max_test_queries": args.max_test_queries,
    }
    grid = configurations(sizes, ks, args.epochs, args.batch_size, args.results_dir, args.single_max, methods,
                          **settings)
    command = "python3 benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    context = {"matmul_gflops": gflops, "command": command, "machine": machine_description()}
    for spec in grid:
        record = {**run_in_subprocess(spec, args.timeout), **context}
        records = merge_record(records, record)
        print(json.dumps(record), flush=True)
        if args.records:
            save_records(args.records, records)
    return records


if __name__ == "__main__":
    sys.exit(main())
