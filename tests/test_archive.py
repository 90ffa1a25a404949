import errno
import os
from pathlib import Path

import pytest

from tests.helpers import model_bytes, write_model
from worker import archive
from worker.archive import BrokenArchive, SourceChanged, check_archive, copy_range, copy_verified


def test_a_whole_model_is_whole_and_its_metadata_is_read(tmp_path):
    path = tmp_path / "m.tar.gz"
    write_model(path, 300_000, model_id="abc")
    info = check_archive(path)
    assert info.size == path.stat().st_size
    assert info.model_id == "abc"
    assert info.trained_at == "2026-11-26T10:10:10"


@pytest.mark.parametrize("cut", [0, 1, 100, 0.5, -9, -8, -1])
def test_every_truncation_is_broken(tmp_path, cut):
    data = model_bytes(200_000)
    end = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    path = tmp_path / "m.tar.gz"
    path.write_bytes(data[:end])
    with pytest.raises(BrokenArchive):
        check_archive(path)


def test_a_killed_training_is_broken(tmp_path):
    path = tmp_path / "m.tar.gz"
    write_model(path, 300_000, chunks=3, stop_after_chunk=2)
    with pytest.raises(BrokenArchive, match="ends early"):
        check_archive(path)


def test_trailing_junk_and_corruption_are_broken(tmp_path):
    data = model_bytes(100_000)
    path = tmp_path / "m.tar.gz"
    path.write_bytes(data + b"junk")
    with pytest.raises(BrokenArchive):
        check_archive(path)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(BrokenArchive):
        check_archive(path)


def test_gzip_of_something_else_is_broken(tmp_path):
    import gzip

    path = tmp_path / "m.tar.gz"
    path.write_bytes(gzip.compress(b"not a tar archive" * 100))
    with pytest.raises(BrokenArchive, match="not a valid"):
        check_archive(path)


def test_two_gzip_members_are_one_whole_stream(tmp_path):
    import gzip
    import io
    import tarfile

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("a")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    raw = tar_bytes.getvalue()
    path = tmp_path / "m.tar.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert check_archive(path).size == path.stat().st_size


def _copy(source, target):
    with open(source, "rb") as src, open(target, "wb") as dst:
        return copy_verified(src.fileno(), dst.fileno(), os.fstat(src.fileno()).st_size)


def test_copy_verified_copies_exactly(tmp_path):
    source, target = tmp_path / "s.tar.gz", tmp_path / "t"
    write_model(source, 3_000_000, model_id="x")
    info = _copy(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert info.model_id == "x"


def test_copy_verified_rejects_a_broken_source(tmp_path):
    source, target = tmp_path / "s.tar.gz", tmp_path / "t"
    source.write_bytes(model_bytes(500_000)[:-20])
    with pytest.raises(BrokenArchive):
        _copy(source, target)


def test_copy_falls_back_where_the_kernel_cannot_copy(tmp_path, monkeypatch):
    """Network and FUSE file systems (and cross-device copies on older kernels) refuse
    copy_file_range; the copy must go on through user space, byte for byte."""
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(archive.os, "copy_file_range", refuse)
    source, target = tmp_path / "s.tar.gz", tmp_path / "t"
    write_model(source, 3_000_000)
    _copy(source, target)
    assert calls, "the kernel copy was not even tried"
    assert target.read_bytes() == source.read_bytes()


def test_copy_across_file_systems_for_real(tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("needs /dev/shm on another file system than the temporary folder")
    source = os.path.join(shm, f"rotator-test-{os.getpid()}.tar.gz")
    try:
        write_model(source, 2_000_000)
        target = tmp_path / "t"
        _copy(source, target)
        assert target.read_bytes() == Path(source).read_bytes()
    finally:
        os.unlink(source)


def test_copy_range_reports_a_file_that_shrank(tmp_path):
    source, target = tmp_path / "s", tmp_path / "t"
    source.write_bytes(b"x" * 1000)
    with open(source, "rb") as src, open(target, "wb") as dst, pytest.raises(SourceChanged):
        copy_range(src.fileno(), dst.fileno(), 5000)
