"""Read and write InsightFace datasets in MXNet RecordIO format (``train.rec`` + ``train.idx``) without MXNet.

Framing (dmlc-core recordio): each record starts with the uint32 magic 0xCED7230A and a uint32
whose upper 3 bits are a continuation flag and lower 29 bits the length of the data that follows,
padded to a multiple of 4 bytes. Flag 0 marks a whole record. A payload that contains the magic
at a 4-byte boundary is written in parts (flag 1 first, 2 middle, 3 last), the magic itself
dropped, and the reader joins the parts with the magic between them. ``train.idx`` contains one
``<key>\\t<byte offset>`` line per record. All integers are little-endian.

Payload (mx.recordio.pack): the IRHeader struct ``IfQQ`` (flag, label, id, id2), then ``flag``
float32 labels when flag > 0, then the encoded image. In InsightFace datasets record 0 is a
header whose labels (a, b) mark records 1..a-1 as images and records a..b-1 as identities.
Each identity record's labels (start, end) give the range of its image records.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.preparation_summary import StepSummary, new_record, read_json, record_path, write_json_atomic

logger = logging.getLogger(__name__)

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LENGTH_MASK = (1 << 29) - 1
IR_HEADER = struct.Struct("<IfQQ")
UNPACK_RECORDS_DIR = ".unpack_records"
UNPACK_SUMMARY_FILE = "unpack_summary.json"
UNPACKED_DIR = "unpacked"

_IMAGE_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"BM", ".bmp"))


class RecordIOError(ValueError):
    """A RecordIO or index file that does not follow the format."""


@dataclass
class IRHeader:
    """MXNet image record header: ``label`` is a float when flag is 0, else a float32 array of ``flag`` labels."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0


def pack_record(label, payload: bytes, record_id: int = 0, record_id2: int = 0) -> bytes:
    """Return a record payload as mx.recordio.pack builds it: header, extra labels, data."""
    if np.ndim(label) == 0:
        return IR_HEADER.pack(0, float(label), record_id, record_id2) + payload
    labels = np.asarray(label, dtype="<f4").ravel()
    return IR_HEADER.pack(labels.size, 0.0, record_id, record_id2) + labels.tobytes() + payload


def unpack_record(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record payload into its IRHeader and the data after it."""
    if len(record) < IR_HEADER.size:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than the {IR_HEADER.size}-byte IRHeader")
    flag, label, record_id, record_id2 = IR_HEADER.unpack_from(record)
    data = record[IR_HEADER.size :]
    if flag > 0:
        if len(data) < 4 * flag:
            raise RecordIOError(f"record header announces {flag} labels but only {len(data)} bytes follow")
        label = np.frombuffer(data[: 4 * flag], dtype="<f4").copy()
        data = data[4 * flag :]
    return IRHeader(flag, label, record_id, record_id2), data


def frame_record(payload: bytes) -> bytes:
    """Return ``payload`` framed as dmlc-core's RecordIOWriter::WriteRecord writes it."""
    if len(payload) >= 1 << 29:
        raise RecordIOError(f"record of {len(payload)} bytes exceeds the RecordIO maximum of 2**29 - 1 bytes")
    parts, start = [], 0
    for position in range(0, len(payload) - len(payload) % 4, 4):
        if payload[position : position + 4] == _MAGIC_BYTES:
            flag = 1 if start == 0 else 2
            parts.append(struct.pack("<II", RECORDIO_MAGIC, (flag << 29) | (position - start)))
            parts.append(payload[start:position])
            start = position + 4
    flag = 3 if start > 0 else 0
    parts.append(struct.pack("<II", RECORDIO_MAGIC, (flag << 29) | (len(payload) - start)))
    parts.append(payload[start:])
    parts.append(b"\x00" * (-len(payload) % 4))
    return b"".join(parts)


class RecordIOReader:
    """Random access to the records of a ``.rec`` file through its ``.idx`` file.

    Without an index file the ``.rec`` file is scanned once and its records get keys 0, 1, 2, ...
    in file order.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self._file = open(self.rec_path, "rb")
        if idx_path is not None and Path(idx_path).is_file():
            self.offsets = read_index(idx_path)
        else:
            logger.info("no index file for %s; scanning the records", self.rec_path)
            self.offsets = self._scan()

    def close(self) -> None:
        """Close the ``.rec`` file."""
        self._file.close()

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def keys(self) -> list[int]:
        """Record keys in index order."""
        return list(self.offsets)

    def read_idx(self, key: int) -> bytes:
        """Return the payload of the record with ``key``; KeyError names a key missing from the index."""
        if key not in self.offsets:
            raise KeyError(f"record key {key} not in the index of {self.rec_path}")
        return self._read_at(self.offsets[key])[0]

    def _read_at(self, offset: int) -> tuple[bytes, int]:
        """Return (payload, offset of the next record) for the record starting at ``offset``."""
        parts = []
        position = offset
        while True:
            self._file.seek(position)
            head = self._file.read(8)
            if len(head) < 8:
                raise RecordIOError(f"{self.rec_path}: truncated record header at byte {position}")
            magic, length_word = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise RecordIOError(
                    f"{self.rec_path}: invalid magic 0x{magic:08x} at byte {position} (expected 0x{RECORDIO_MAGIC:08x}); "
                    "the file is not MXNet RecordIO or the .idx file belongs to another .rec file"
                )
            flag, length = length_word >> 29, length_word & _LENGTH_MASK
            if flag > 3:
                raise RecordIOError(f"{self.rec_path}: invalid continuation flag {flag} at byte {position}; "
                                    "expected 0 to 3")
            data = self._file.read(length)
            if len(data) < length:
                raise RecordIOError(f"{self.rec_path}: record at byte {position} announces {length} bytes, "
                                    f"only {len(data)} remain; the file is truncated")
            parts.append(data)
            position += 8 + length + (-length % 4)
            if flag in (0, 3):
                return b"".join(parts), position
            parts.append(_MAGIC_BYTES)

    def _scan(self) -> dict[int, int]:
        size = os.fstat(self._file.fileno()).st_size
        offsets, position, key = {}, 0, 0
        while position < size:
            offsets[key] = position
            _, position = self._read_at(position)
            key += 1
        return offsets


class RecordIOWriter:
    """Writer of a ``.rec`` file and its ``.idx`` file, byte-compatible with MXNet's MXIndexedRecordIO."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike):
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w", encoding="ascii")

    def write_idx(self, key: int, payload: bytes) -> None:
        """Append one record under ``key``."""
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(frame_record(payload))

    def close(self) -> None:
        """Close both files."""
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_index(idx_path: str | os.PathLike) -> dict[int, int]:
    """Return {key: byte offset} from an MXNet ``.idx`` file."""
    offsets = {}
    with open(idx_path, encoding="ascii") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (IndexError, ValueError) as error:
                raise RecordIOError(f"{idx_path}:{number}: invalid index line {line.rstrip()!r}; "
                                    "expected '<key>\\t<offset>'") from error
            offsets[key] = offset
    return offsets


def write_insightface_recordio(identities: list[list[bytes]], rec_path, idx_path) -> None:
    """Write encoded images as an InsightFace dataset: header record, image records, identity records.

    ``identities[label]`` lists that identity's encoded images. Used by tests and demos to build
    small datasets in the format that MS1M and Glint360k are distributed in.
    """
    n_images = sum(len(images) for images in identities)
    first_identity_key = n_images + 1
    with RecordIOWriter(rec_path, idx_path) as writer:
        writer.write_idx(0, pack_record([first_identity_key, first_identity_key + len(identities)], b""))
        key = 1
        ranges = []
        for label, images in enumerate(identities):
            start = key
            for image in images:
                writer.write_idx(key, pack_record(float(label), image, record_id=key))
                key += 1
            ranges.append((start, key))
        for label, (start, end) in enumerate(ranges):
            writer.write_idx(first_identity_key + label, pack_record([start, end], b""))


# --------------------------------------------------------------------------- unpack
def list_recordio_identities(reader: RecordIOReader, max_identities: int | None = None) -> list[tuple[str, list[int]]]:
    """Return (identity folder name, image record keys) per identity, in label order.

    Uses the header record's identity ranges when record 0 has them; otherwise scans every
    record and groups image records by label.
    """
    header, _ = unpack_record(reader.read_idx(0)) if 0 in reader.offsets else (IRHeader(0, 0.0), b"")
    if header.flag >= 2:
        # NOTE: labels are float32, exact for integers up to 2**24 (16,777,216); record keys
        # above that cannot be addressed exactly through these ranges.
        first, end = int(header.label[0]), int(header.label[1])
        if 0 < first <= end:
            identities = []
            for index, key in enumerate(range(first, end)):
                if max_identities is not None and index >= max_identities:
                    break
                identity_header, _ = unpack_record(reader.read_idx(key))
                if identity_header.flag < 2:
                    raise RecordIOError(f"{reader.rec_path}: record {key} is not an identity record "
                                        f"(flag {identity_header.flag}); the header record's range is wrong")
                start, stop = int(identity_header.label[0]), int(identity_header.label[1])
                identities.append((f"{index:06d}", list(range(start, stop))))
            return identities
    logger.info("%s has no InsightFace header record; grouping all records by label", reader.rec_path)
    groups: dict[int, list[int]] = {}
    for key in reader.keys:
        record_header, data = unpack_record(reader.read_idx(key))
        if not data:
            continue
        label = record_header.label if record_header.flag == 0 else record_header.label[0]
        groups.setdefault(int(label), []).append(key)
    labels = sorted(groups)[:max_identities] if max_identities is not None else sorted(groups)
    return [(f"{label:06d}", groups[label]) for label in labels]


def image_suffix(data: bytes) -> str | None:
    """Return the file suffix for encoded image bytes (".jpg", ".png", ".bmp"), or None."""
    for signature, suffix in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return suffix
    return None


def unpack_recordio(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dataset: str = "",
    overwrite: bool = False,
    max_identities: int | None = None,
    progress: bool = True,
) -> dict:
    """Unpack ``raw_dir/train.rec`` into ``out_dir/<identity>/<key>.jpg``; return the summary.

    Identity folders are named by class label (zero-padded to 6 digits) and files by record key.
    Each identity is written to a hidden folder and renamed when complete, so a rerun resumes
    after the last complete identity. ``overwrite`` first deletes ``out_dir``. The summary is
    also written to ``out_dir/../unpack_summary.json``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rec_path, idx_path = raw_dir / "train.rec", raw_dir / "train.idx"
    if not rec_path.is_file():
        raise FileNotFoundError(
            f"RecordIO file not found: {rec_path}; set raw_dir of the dataset to the folder holding "
            "InsightFace's train.rec and train.idx"
        )
    if overwrite and out_dir.exists():
        logger.info("unpack: overwrite requested, deleting %s", out_dir)
        shutil.rmtree(out_dir)
    records_dir = out_dir / UNPACK_RECORDS_DIR
    summary = StepSummary("unpack", dataset, {"rec": str(rec_path), "idx": str(idx_path)})

    with RecordIOReader(rec_path, idx_path) as reader:
        identities = list_recordio_identities(reader, max_identities)
        logger.info("unpack: %d identities in %s", len(identities), rec_path)
        bar = tqdm(total=sum(len(keys) for _, keys in identities), desc="unpack", unit="img", disable=not progress)
        for identity, keys in identities:
            previous = read_json(record_path(records_dir, identity))
            if previous is not None and (out_dir / identity).is_dir():
                summary.add_record(previous, resumed=True)
                bar.update(len(keys))
                continue
            record = _unpack_one_identity(reader, out_dir, identity, keys, summary)
            bar.update(len(keys))
            write_json_atomic(record_path(records_dir, identity), record)
            summary.add_record(record)
        bar.close()
    return summary.write(out_dir.parent / UNPACK_SUMMARY_FILE)


def _unpack_one_identity(reader: RecordIOReader, out_dir: Path, identity: str, keys: list[int],
                         summary: StepSummary) -> dict:
    record = new_record(identity)
    partial = out_dir / f".{identity}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    names = []
    for key in keys:
        try:
            _, data = unpack_record(reader.read_idx(key))
        except (KeyError, RecordIOError) as error:
            record["skipped_images"][str(key)] = "invalid_record"
            summary.log_image_skip("invalid_record", f"{reader.rec_path} record {key}", str(error))
            continue
        suffix = image_suffix(data)
        if suffix is None:
            record["skipped_images"][str(key)] = "not_an_image"
            summary.log_image_skip("not_an_image", f"{reader.rec_path} record {key}", "unknown image signature")
            continue
        name = f"{key}{suffix}"
        (partial / name).write_bytes(data)
        names.append(name)
        summary.images_processed += 1
    final = out_dir / identity
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    record["images"]["unpacked"] = names
    return record
