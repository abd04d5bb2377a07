"""Per-identity records and per-run JSON summaries shared by the image preparation steps.

Each step (unpack, split, align, extract) writes one small JSON record per finished identity.
A record's presence marks the identity as done, so an interrupted run resumes where it stopped,
and the run summary adds up all records, including those written by earlier runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

# Skipped images are logged one by one at INFO up to this count per reason, then at DEBUG.
MAX_LOGGED_SKIPS_PER_REASON = 10


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as JSON so that a crash leaves the old file or none, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict | None:
    """Return the JSON object in ``path``, or None when the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("ignoring unreadable record %s (%s); the identity is processed again", path, error)
        return None
    return data if isinstance(data, dict) else None


def record_path(records_dir: str | os.PathLike, identity: str) -> Path:
    """Return the path of one identity's record in ``records_dir``."""
    return Path(records_dir) / f"{identity}.json"


def new_record(identity: str) -> dict:
    """Return an empty record for ``identity``: nothing kept, skipped or converted yet."""
    return {
        "identity": identity,
        "status": "kept",
        "reason": None,
        "images": {},
        "skipped_images": {},
        "converted_images": {},
        "augmented_images": {},
        "face_counts": {},
    }


class StepSummary:
    """Counts of identities and images that one step kept, converted and skipped.

    ``add_record`` merges one identity's record. ``write`` stores the totals as JSON with the
    step's settings and the time and throughput of the current run.
    """

    def __init__(self, step: str, dataset: str, settings: dict):
        self.step = step
        self.dataset = dataset
        self.settings = settings
        self.identities_kept = 0
        self.identities_resumed = 0
        self.identity_skips: Counter = Counter()
        self.images_kept: Counter = Counter()
        self.image_skips: Counter = Counter()
        self.conversions: Counter = Counter()
        self.face_counts: Counter = Counter()
        self.images_augmented = 0
        self.ignored_files = 0
        self.timings: dict[str, float] = {}
        self.images_processed = 0
        # Step-specific values added to the summary as they are.
        self.extra: dict = {}
        self._logged_skips: Counter = Counter()
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ counting
    def log_image_skip(self, reason: str, image: str, detail: str = "") -> None:
        """Log one skipped image, at INFO for the first few per reason and at DEBUG after that."""
        self._logged_skips[reason] += 1
        count = self._logged_skips[reason]
        level = logging.INFO if count <= MAX_LOGGED_SKIPS_PER_REASON else logging.DEBUG
        suffix = f": {detail}" if detail else ""
        logger.log(level, "%s: skipped %s (%s)%s", self.step, image, reason, suffix)
        if count == MAX_LOGGED_SKIPS_PER_REASON:
            logger.info("%s: further %r skips are logged at DEBUG level", self.step, reason)

    def skip_identity(self, identity: str, reason: str) -> None:
        """Count an identity that the step skipped without writing a record."""
        self.identity_skips[reason] += 1
        logger.debug("%s: skipped identity %s (%s)", self.step, identity, reason)

    def add_record(self, record: dict, resumed: bool = False) -> None:
        """Add one identity's record to the totals; ``resumed`` marks one from an earlier run."""
        if record.get("status") == "kept":
            self.identities_kept += 1
        else:
            self.identity_skips[record.get("reason") or "unknown"] += 1
        if resumed:
            self.identities_resumed += 1
        for split, names in (record.get("images") or {}).items():
            self.images_kept[split] += len(names)
        for reason in (record.get("skipped_images") or {}).values():
            self.image_skips[reason] += 1
        for conversions in (record.get("converted_images") or {}).values():
            self.conversions.update(conversions)
        self.images_augmented += len(record.get("augmented_images") or {})
        self.face_counts.update({str(k): int(v) for k, v in (record.get("face_counts") or {}).items()})

    def add_time(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to the named timer (for example ``detection``)."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """Return the summary as a JSON-ready dict."""
        elapsed = time.perf_counter() - self._start
        rates = {}
        for name, seconds in sorted(self.timings.items()):
            if seconds > 0 and self.images_processed > 0:
                rates[f"{name}_images_per_second"] = round(self.images_processed / seconds, 2)
        if elapsed > 0 and self.images_processed > 0:
            rates["total_images_per_second"] = round(self.images_processed / elapsed, 2)
        images = {
            "kept": dict(sorted(self.images_kept.items())),
            "kept_total": sum(self.images_kept.values()),
            "skipped": dict(sorted(self.image_skips.items())),
            "skipped_total": sum(self.image_skips.values()),
            "converted": dict(sorted(self.conversions.items())),
        }
        if self.step == "split":
            images["augmented"] = self.images_augmented
            images["ignored_non_image_files"] = self.ignored_files
        summary = {
            "step": self.step,
            "dataset": self.dataset,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": self.settings,
            "identities": {
                "kept": self.identities_kept,
                "skipped": dict(sorted(self.identity_skips.items())),
                "resumed_from_earlier_runs": self.identities_resumed,
            },
            "images": images,
            **self.extra,
        }
        if self.step == "align":
            summary["faces_detected_per_image"] = dict(sorted(self.face_counts.items()))
        summary["this_run"] = {
            "images_processed": self.images_processed,
            "seconds": round(elapsed, 2),
            "timings_seconds": {k: round(v, 3) for k, v in sorted(self.timings.items())},
            **rates,
        }
        return summary

    def write(self, path: str | os.PathLike) -> dict:
        """Write the summary to ``path``, log the main counts and return the summary."""
        summary = self.to_dict()
        write_json_atomic(path, summary)
        images = summary["images"]
        logger.info(
            "%s: %d identities kept, skipped %s; %d images kept %s, %d skipped %s; summary in %s",
            self.step,
            self.identities_kept,
            summary["identities"]["skipped"] or "none",
            images["kept_total"],
            images["kept"],
            images["skipped_total"],
            images["skipped"] or "",
            path,
        )
        return summary
