import errno
import os
from pathlib import Path

import pytest

from tests.helpers import model_bytes, write_model
from worker.folder import archive
from worker.folder.archive import (
    BrokenArchive,
    SourceChanged,
    check_archive,
    copy_range,
    copy_verified,
)


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


# -- whole means whole: every header, sane sizes, the end-of-archive blocks ------------------

def _tar_bytes(*members: tuple[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _gz(tmp_path, raw: bytes) -> Path:
    import gzip

    path = tmp_path / "m.tar.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return path


def _end_of_members(raw: bytes, count: int) -> int:
    """Offset just after the first `count` members of a USTAR tar (small regular files)."""
    offset = 0
    for _ in range(count):
        size = int(raw[offset + 124:offset + 136].rstrip(b"\0 ") or b"0", 8)
        offset += 512 + (size + 511) // 512 * 512
    return offset


def test_garbage_where_the_next_header_should_be_is_broken(tmp_path):
    """Observation 7: tarfile stops quietly at a bad header after the first member."""
    raw = _tar_bytes(("components/a.bin", b"a" * 700), ("metadata.json", b"{}"))
    cut = _end_of_members(raw, 1)
    glued = raw[:cut] + b"garbage that is no tar header".ljust(512, b"x") + raw[cut + 512:]
    with pytest.raises(BrokenArchive, match="not a valid"):
        check_archive(_gz(tmp_path, glued))


def test_a_tar_without_its_end_of_archive_blocks_is_broken(tmp_path):
    raw = _tar_bytes(("components/a.bin", b"a" * 700), ("metadata.json", b"{}"))
    members_end = _end_of_members(raw, 2)
    with pytest.raises(BrokenArchive, match="end-of-archive"):
        check_archive(_gz(tmp_path, raw[:members_end]))
    with pytest.raises(BrokenArchive, match="end-of-archive"):
        check_archive(_gz(tmp_path, raw[:members_end + 512]))  # one zero block of two
    assert check_archive(_gz(tmp_path, raw[:members_end + 1024])).size > 0


def test_data_after_the_end_of_archive_is_broken(tmp_path):
    raw = _tar_bytes(("components/a.bin", b"a" * 700))
    with pytest.raises(BrokenArchive, match="not a valid"):
        check_archive(_gz(tmp_path, raw + b"\0" * 1024 + b"tail"))
    assert check_archive(_gz(tmp_path, raw + b"\0" * 4096)).size > 0  # zero padding is fine


def test_a_member_with_a_negative_size_is_broken(tmp_path):
    import tarfile

    raw = bytearray(_tar_bytes(("components/a.bin", b"a" * 700), ("b.bin", b"b" * 10)))
    second = _end_of_members(bytes(raw), 1)
    # base-256 size field (GNU): 0xff... is negative (here -1024: back to offset 0).
    header = bytearray(raw[second:second + 512])
    header[124:136] = b"\xff" * 10 + b"\xfc\x00"
    header[148:156] = b"        "
    header[148:155] = b"%06o\0" % sum(header)
    raw[second:second + 512] = header
    assert tarfile.nti(bytes(header[124:136])) < 0
    with pytest.raises(BrokenArchive):
        check_archive(_gz(tmp_path, bytes(raw)))


def test_a_header_with_a_bad_checksum_after_the_first_member_is_broken(tmp_path):
    raw = bytearray(_tar_bytes(("components/a.bin", b"a" * 700), ("metadata.json", b"{}")))
    second = _end_of_members(bytes(raw), 1)
    raw[second + 10] ^= 0x01  # a flipped bit in the second header's name
    with pytest.raises(BrokenArchive):
        check_archive(_gz(tmp_path, bytes(raw)))


def test_fifo_device_and_link_are_refused_without_blocking(tmp_path):
    """Observation 8: a FIFO where a model should be must not block the check."""
    from worker.folder.openfile import NotRegularFile

    fifo = tmp_path / "fifo.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="FIFO"):
        check_archive(fifo)  # with a plain open() this call never returns
    with pytest.raises(NotRegularFile):
        check_archive("/dev/zero", follow=True)
    real = tmp_path / "real.tar.gz"
    write_model(real, 1000)
    link = tmp_path / "link.tar.gz"
    link.symlink_to(real)
    with pytest.raises(OSError):
        check_archive(link)
    assert check_archive(link, follow=True).size == real.stat().st_size


def test_memory_stays_flat_with_a_million_empty_members(tmp_path):
    """Observation 9: a 6 MB archive of 1,000,000 empty members took ~450 MiB. The check
    runs in a child process, which reads its own peak from /proc/self/status (VmHWM belongs
    to the new address space; ru_maxrss survives exec and would carry pytest's own peak)."""
    import subprocess
    import sys
    import tarfile
    import zlib

    header = tarfile.TarInfo("e")
    block = header.tobuf(format=tarfile.USTAR_FORMAT)  # one empty member: one block
    path = tmp_path / "many.tar.gz"
    compressor = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    with open(path, "wb") as out:
        for _ in range(100):
            out.write(compressor.compress(block * 10_000))
        out.write(compressor.compress(b"\0" * 10240))
        out.write(compressor.flush())
    script = ("import sys\nfrom worker.folder.archive import check_archive\n"
              "check_archive(sys.argv[1])\n"
              "print(next(line.split()[1] for line in open('/proc/self/status')\n"
              "           if line.startswith('VmHWM:')))\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout.split()[-1]) / 1024
    assert peak_mib < 64, f"peak RSS {peak_mib:.0f} MiB for 1,000,000 empty members"
