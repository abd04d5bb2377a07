"""Tests for the MXNet RecordIO reader, writer and unpacking (src/recordio.py)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from conftest import lfw_images, requires_shared_faces

from src.recordio import (
    RECORDIO_MAGIC,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    frame_record,
    pack_record,
    unpack_record,
    unpack_recordio,
    write_insightface_recordio,
)

MAGIC = struct.pack("<I", RECORDIO_MAGIC)


def _visible(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _fake_jpeg(index: int, size: int = 37) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes([index % 256]) * size


# --------------------------------------------------------------------------- framing
def test_frame_record_layout():
    assert frame_record(b"abc") == MAGIC + struct.pack("<I", 3) + b"abc\x00"
    assert frame_record(b"abcd") == MAGIC + struct.pack("<I", 4) + b"abcd"
    assert frame_record(b"") == MAGIC + struct.pack("<I", 0)


def test_frame_record_splits_at_aligned_magic():
    payload = b"abcd" + MAGIC + b"efg"
    expected = (
        MAGIC + struct.pack("<I", (1 << 29) | 4) + b"abcd"
        + MAGIC + struct.pack("<I", (3 << 29) | 3) + b"efg\x00"
    )
    assert frame_record(payload) == expected
    # The magic at an offset that is not a multiple of 4 is plain data.
    unaligned = b"ab" + MAGIC + b"cd"
    assert frame_record(unaligned) == MAGIC + struct.pack("<I", 8) + unaligned


def test_reader_roundtrip(tmp_path):
    payloads = [
        b"",
        b"x",
        MAGIC,
        MAGIC + MAGIC + b"tail",
        b"head" + MAGIC + b"mid." + MAGIC,
        bytes(range(256)) * 3,
    ]
    rec, idx = tmp_path / "data.rec", tmp_path / "data.idx"
    with RecordIOWriter(rec, idx) as writer:
        for key, payload in enumerate(payloads):
            writer.write_idx(key * 10, payload)
    with RecordIOReader(rec, idx) as reader:
        assert reader.keys == [0, 10, 20, 30, 40, 50]
        for key, payload in enumerate(payloads):
            assert reader.read_idx(key * 10) == payload
        with pytest.raises(KeyError, match="7"):
            reader.read_idx(7)
    # Without the index the file is scanned and records get keys 0, 1, 2, ...
    with RecordIOReader(rec) as reader:
        assert [reader.read_idx(key) for key in range(len(payloads))] == payloads


def test_pack_unpack_record():
    header, data = unpack_record(pack_record(7.0, b"image", record_id=3))
    assert (header.flag, header.label, header.id, data) == (0, 7.0, 3, b"image")
    header, data = unpack_record(pack_record([12, 15], b""))
    assert header.flag == 2
    assert header.label.tolist() == [12.0, 15.0]
    assert data == b""
    assert len(pack_record(1.0, b"")) == 24
    with pytest.raises(RecordIOError, match="IRHeader"):
        unpack_record(b"short")


def test_reader_rejects_bad_files(tmp_path):
    rec = tmp_path / "bad.rec"
    rec.write_bytes(b"\x00" * 16)
    with pytest.raises(RecordIOError, match="invalid magic"):
        RecordIOReader(rec)
    truncated = tmp_path / "truncated.rec"
    truncated.write_bytes(frame_record(b"0123456789")[:12])
    with pytest.raises(RecordIOError, match="truncated"):
        RecordIOReader(truncated)
    idx = tmp_path / "bad.idx"
    idx.write_text("0\tzero\n")
    with pytest.raises(RecordIOError, match="bad.idx:1"):
        RecordIOReader(rec, idx)


# --------------------------------------------------------------------------- unpack
def test_unpack_insightface_layout(tmp_path):
    identities = [[_fake_jpeg(i * 10 + j) for j in range(n)] for i, n in enumerate((3, 1, 4))]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_insightface_recordio(identities, raw / "train.rec", raw / "train.idx")

    out = tmp_path / "data" / "unpacked"
    summary = unpack_recordio(raw, out, dataset="test", progress=False)
    assert _visible(out) == ["000000", "000001", "000002"]
    assert sorted(os.listdir(out / "000000")) == ["1.jpg", "2.jpg", "3.jpg"]
    assert os.listdir(out / "000001") == ["4.jpg"]
    assert (out / "000002" / "8.jpg").read_bytes() == identities[2][3]
    assert summary["identities"]["kept"] == 3
    assert summary["images"]["kept"] == {"unpacked": 8}
    assert (tmp_path / "data" / "unpack_summary.json").is_file()


def test_unpack_max_identities_and_resume(tmp_path):
    identities = [[_fake_jpeg(i * 10 + j) for j in range(2)] for i in range(4)]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_insightface_recordio(identities, raw / "train.rec", raw / "train.idx")
    out = tmp_path / "unpacked"
    first = unpack_recordio(raw, out, max_identities=2, progress=False)
    assert first["identities"]["kept"] == 2
    assert _visible(out) == ["000000", "000001"]
    mtime = (out / "000000" / "1.jpg").stat().st_mtime_ns

    second = unpack_recordio(raw, out, progress=False)
    assert second["identities"]["kept"] == 4
    assert second["identities"]["resumed_from_earlier_runs"] == 2
    assert (out / "000000" / "1.jpg").stat().st_mtime_ns == mtime


def test_unpack_skips_non_images(tmp_path):
    identities = [[_fake_jpeg(1), b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 8]]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_insightface_recordio(identities, raw / "train.rec", raw / "train.idx")
    summary = unpack_recordio(raw, tmp_path / "unpacked", progress=False)
    assert sorted(os.listdir(tmp_path / "unpacked" / "000000")) == ["1.jpg", "3.png"]
    assert summary["images"]["skipped"] == {"not_an_image": 1}


def test_unpack_without_header_groups_by_label(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with RecordIOWriter(raw / "train.rec", raw / "train.idx") as writer:
        for key, label in enumerate((5, 5, 2, 5, 2)):
            # Image records that store the label as a one-element array (flag 1) are read too.
            label_value = [float(label)] if key == 3 else float(label)
            writer.write_idx(key, pack_record(label_value, _fake_jpeg(key)))
    unpack_recordio(raw, tmp_path / "unpacked", progress=False)
    assert _visible(tmp_path / "unpacked") == ["000002", "000005"]
    assert sorted(os.listdir(tmp_path / "unpacked" / "000005")) == ["0.jpg", "1.jpg", "3.jpg"]


def test_unpack_missing_rec(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.rec"):
        unpack_recordio(tmp_path, tmp_path / "out", progress=False)


@requires_shared_faces
def test_unpack_real_jpegs_decode(tmp_path):
    from src.images import read_image

    identities = [[path.read_bytes() for path in lfw_images(person, 2)] for person in ("Colin_Powell", "Laura_Bush")]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_insightface_recordio(identities, raw / "train.rec", raw / "train.idx")
    unpack_recordio(raw, tmp_path / "unpacked", progress=False)
    decoded = read_image(tmp_path / "unpacked" / "000001" / "4.jpg").bgr
    original = read_image(lfw_images("Laura_Bush", 2)[1]).bgr
    assert np.array_equal(decoded, original)
