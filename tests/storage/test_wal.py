from searchsvc.storage.embedded.wal import WriteAheadLog, iter_records


def test_records_survive_reopen(tmp_path):
    wal = WriteAheadLog(tmp_path / "wal.log")
    assert wal.open() == []
    wal.append({"seq": 1, "op": "upsert"})
    wal.append({"seq": 2, "op": "delete", "documents": ["é"]})
    wal.close()
    assert [r["seq"] for r in iter_records(tmp_path / "wal.log")] == [1, 2]


def test_torn_tail_is_cut_and_appends_continue(tmp_path):
    path = tmp_path / "wal.log"
    wal = WriteAheadLog(path)
    wal.open()
    wal.append({"seq": 1})
    wal.append({"seq": 2, "pad": "x" * 100})
    wal.close()
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])  # crash in the middle of record 2
    wal = WriteAheadLog(path)
    assert [r["seq"] for r in wal.open()] == [1]
    wal.append({"seq": 3})
    wal.close()
    assert [r["seq"] for r in iter_records(path)] == [1, 3]


def test_corrupted_record_is_detected_by_crc(tmp_path):
    path = tmp_path / "wal.log"
    wal = WriteAheadLog(path)
    wal.open()
    wal.append({"seq": 1, "text": "hello"})
    wal.close()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the payload
    path.write_bytes(bytes(data))
    assert list(iter_records(path)) == []


# ---------------------------------------------------------------- storage faults (issue: disk full lost acked data)
import errno  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
from faulty_files import FaultyFiles  # noqa: E402

from searchsvc.storage.embedded.wal import WalCorrupt, WalFailed, WalLocked, repair, scan  # noqa: E402

RECORD = {"seq": 3, "op": "upsert", "documents": ["d3"], "text": "a record long enough to fail in the middle"}
FRAME_BYTES = 8 + len(json.dumps(RECORD, separators=(",", ":")).encode())


def two_acked(path, files=None) -> WriteAheadLog:
    wal = WriteAheadLog(path, files)
    wal.open()
    wal.append({"seq": 1, "op": "upsert", "documents": ["d1"]})
    wal.append({"seq": 2, "op": "upsert", "documents": ["d2"]})
    return wal


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("written", range(FRAME_BYTES))  # every byte of the record: header, payload, last byte
def test_a_write_failing_at_any_byte_leaves_no_trace_and_later_appends_survive(tmp_path, written, code):
    files = FaultyFiles()
    path = tmp_path / "wal.log"
    wal = two_acked(path, files)
    acked_end = path.stat().st_size
    files.arm(after_bytes=written, code=code)
    with pytest.raises(OSError) as err:
        wal.append(RECORD)
    assert err.value.errno == code
    assert path.stat().st_size == acked_end, "the partial record was rolled back"
    assert not wal.failure, "a rolled-back write failure keeps the log writable"
    files.disarm()  # space freed: the same batch is retried with the same seq, then another one
    wal.append(RECORD)
    wal.append({"seq": 4, "op": "delete", "documents": ["d1"]})
    wal.close()
    assert [r["seq"] for r in WriteAheadLog(path).open()] == [1, 2, 3, 4]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_fsync_is_fatal_for_the_log_and_keeps_what_was_acked(tmp_path, code):
    files = FaultyFiles()
    path = tmp_path / "wal.log"
    wal = two_acked(path, files)
    files.arm(fsync=True, code=code)
    with pytest.raises(OSError):
        wal.append(RECORD)
    files.disarm()
    assert "fsync failed" in wal.failure
    with pytest.raises(WalFailed):  # no retry-and-ack after an fsync error (fsyncgate)
        wal.append(RECORD)
    wal.close()
    assert [r["seq"] for r in WriteAheadLog(path).open()] == [1, 2]


@pytest.mark.parametrize("written", [0, 5, FRAME_BYTES // 2, FRAME_BYTES])
def test_when_the_rollback_fails_too_the_log_stops_and_never_appends_after_the_bad_bytes(tmp_path, written):
    files = FaultyFiles()
    path = tmp_path / "wal.log"
    wal = two_acked(path, files)
    acked_end = path.stat().st_size
    # The record's bytes (all or some) reach the file, the fsync fails, and so does the truncate.
    files.arm(after_bytes=written, fsync=written == FRAME_BYTES, truncate=True, code=errno.EIO)
    with pytest.raises(OSError):
        wal.append(RECORD)
    files.disarm()
    assert "could not be rolled back" in wal.failure
    with pytest.raises(WalFailed):
        wal.append({"seq": 3, "op": "delete", "documents": ["d1"]})
    assert path.stat().st_size == acked_end + min(written, FRAME_BYTES), "nothing written after the bad bytes"
    wal.close()
    # At restart the unacked bytes are a torn tail: cut, and every acked record is there.
    assert [r["seq"] for r in WriteAheadLog(path).open()][:2] == [1, 2]


def frame(record: dict) -> bytes:
    payload = json.dumps(record, separators=(",", ":")).encode()
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_bad_bytes_followed_by_records_refuse_to_open_and_repair_reports_then_drops_them(tmp_path):
    # What the old WAL left after a disk-full error: a torn record, then an acked record appended after it.
    path = tmp_path / "wal.log"
    torn = frame({"seq": 3, "documents": ["lost-in-the-failed-write"]})[:-7]
    good = frame({"seq": 1}) + frame({"seq": 2})
    after = frame({"seq": 3, "documents": ["acked-later"]}) + frame({"seq": 4})
    path.write_bytes(good + torn + after)
    before = path.read_bytes()

    with pytest.raises(WalCorrupt, match="no sequence number is missing"):
        WriteAheadLog(path).open()
    assert path.read_bytes() == before, "refusing to open changes nothing"

    found, backup = repair(path, apply=False)
    assert backup is None and path.read_bytes() == before
    [span] = found.bad
    assert (span.offset, span.length, span.seq_before, span.seq_after) == (len(good), len(torn), 2, 3)
    assert list(span.lost_seqs) == []

    found, backup = repair(path, apply=True)
    assert backup.read_bytes() == before, "the original is kept"
    assert path.read_bytes() == good + after
    assert [r["seq"] for r in WriteAheadLog(path).open()] == [1, 2, 3, 4]


def test_a_corrupt_record_in_the_middle_names_the_lost_sequence_numbers(tmp_path):
    path = tmp_path / "wal.log"
    records = [frame({"seq": s, "pad": "x" * 40}) for s in (1, 2, 3)]
    data = bytearray(b"".join(records))
    data[len(records[0]) + 20] ^= 0x01  # bit rot inside record 2
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt, match=r"records seq 2\.\.2 are lost"):
        WriteAheadLog(path).open()
    found = scan(path)
    assert [r["seq"] for r in found.records] == [1, 3]
    assert [list(s.lost_seqs) for s in found.bad] == [[2]]


def test_a_zero_filled_tail_is_torn_not_records(tmp_path):
    # A crash after the file grew but before the data landed can leave zeros; CRC32 of an empty payload is 0.
    path = tmp_path / "wal.log"
    path.write_bytes(frame({"seq": 1}) + bytes(4096))
    assert [r["seq"] for r in WriteAheadLog(path).open()] == [1]
    assert path.stat().st_size == len(frame({"seq": 1}))


def test_a_second_writer_is_refused(tmp_path):
    first = WriteAheadLog(tmp_path / "wal.log")
    first.open()
    with pytest.raises(WalLocked):
        WriteAheadLog(tmp_path / "wal.log").open()
    with pytest.raises(WalLocked):
        repair(tmp_path / "wal.log", apply=False)
    first.close()
    WriteAheadLog(tmp_path / "wal.log").open()
