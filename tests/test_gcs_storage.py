"""vrl.storage against the Cloud Storage emulator: one path type for folders and buckets."""

import pytest

from vrl import storage


def test_a_url_with_one_slash_is_an_error_not_a_local_folder():
    with pytest.raises(storage.StorageError, match=r"gs:/bucket/x.*gs://BUCKET/PATH"):
        storage.path("gs:/bucket/x", "--workdir")
    assert str(storage.path("relative/dir")).startswith("/")


def test_a_missing_bucket_is_one_line_at_start_up(gcs_server):
    with pytest.raises(storage.StorageError, match="bucket gs://no-such-bucket does not exist"):
        storage.check("gs://no-such-bucket/runs/a", "--workdir")


def test_write_move_copy_and_staging_round_trip_through_the_bucket(gcs_dir, tmp_path):
    root = storage.check(gcs_dir, "--workdir")
    storage.write_atomic(root / "a" / "x.json", '{"a": 1}')
    storage.move(root / "a", root / "b")
    assert not (root / "a").exists()
    assert (root / "b" / "x.json").read_text() == '{"a": 1}'
    storage.copy(root / "b", tmp_path / "local")
    assert (tmp_path / "local" / "x.json").read_text() == '{"a": 1}'
    with storage.staged(root / "c") as folder:
        (tmp_path / "unused").mkdir()
        with open(f"{folder}/y.bin", "wb") as f:
            f.write(b"\0\1")
    assert (root / "c" / "y.bin").read_bytes() == b"\0\1"
    with storage.local_copy(root / "c" / "y.bin") as local:
        assert open(local, "rb").read() == b"\0\1"
    storage.remove(root / "c")
    assert not (root / "c").exists()


def test_metrics_and_tensorboard_events_are_whole_objects_in_the_bucket(gcs_dir):
    """Objects take no appends: both files are rewritten whole, and nothing is written after
    close (tensorboardX's own gs:// writer uploads again at interpreter exit)."""
    import struct

    from vrl import metrics

    writer = metrics.Writer(gcs_dir, enabled=True)
    writer.write(1, {"train/loss": 2.0})
    writer.write(2, {"train/loss": 1.5})
    writer.close()
    rows = (storage.path(gcs_dir) / "metrics.jsonl").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ['{"step": 1', '{"step": 2']
    (events,) = (storage.path(gcs_dir) / "tensorboard").iterdir()
    data = events.read_bytes()
    lengths, offset = [], 0
    while offset < len(data):  # TFRecord framing: u64 length, u32 crc, data, u32 crc
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        lengths.append(length)
        offset += 16 + length
    assert offset == len(data) and len(lengths) == 3  # the file version, then two scalars
    assert data.count(b"train/loss") == 2
