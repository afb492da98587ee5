from searchsvc.store.wal import WriteAheadLog, iter_records


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
