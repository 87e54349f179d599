"""On a filesystem that shares extents (XFS here, btrfs alike), a block-aligned payload is
shared by FICLONERANGE instead of copied: O(1) time and no new blocks (SPEC §4). Judged by
strace, filefrag's "shared" flag and the bytes read back. Needs root and xfsprogs, which
`.ci/run` installs; a loop-mounted XFS image lives for the test session."""

import os
import shutil
import subprocess

import numpy as np
import pytest

import mlconv

from .helpers import st_read
from .test_conformance import assert_copied_file_to_file


@pytest.fixture(scope="module")
def xfs(tmp_path_factory):
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("mkfs.xfs", "mount", "umount")):
        pytest.skip("needs root and xfsprogs (mkfs.xfs)")
    base = tmp_path_factory.mktemp("xfs")
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    made = subprocess.run(["mkfs.xfs", "-q", str(image)], capture_output=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot loop-mount an XFS image here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _shared(path) -> bool:
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True).stdout
    return "shared" in out


def test_aligned_payload_is_shared_not_copied(xfs):
    n = 4 << 20  # 16 MiB of float32
    data = np.arange(n, dtype=np.float32)
    src, dst = xfs / "in.safetensors", xfs / "out.npy"
    mlconv.save({"w": data}, src)  # mlconv's outputs start their data 4 KiB-aligned
    moves = assert_copied_file_to_file(src, dst, xfs, n * 4)
    assert sum(k for name, k in moves if name == "ioctl") == n * 4, moves
    assert sum(k for name, k in moves if name == "write") < 1 << 20, moves
    assert np.array_equal(np.load(dst), data)
    if shutil.which("filefrag"):
        assert _shared(dst)


def test_a_misaligned_source_is_copied_through_the_buffer(xfs):
    n = (4 << 20) + 3  # not a whole number of blocks either
    data = np.arange(n, dtype=np.float32)
    src, dst = xfs / "numpy.npy", xfs / "out.safetensors"
    np.save(src, data)  # numpy puts the data at byte 128: no block can be shared
    moves = assert_copied_file_to_file(src, dst, xfs, n * 4)
    assert not any(name == "ioctl" for name, _ in moves), moves
    ((_, _, got),) = st_read(dst)[1].values()
    assert np.frombuffer(got, np.float32).tobytes() == data.tobytes()


def test_the_unshared_tail_is_copied(xfs):
    """A payload that is not a whole number of blocks: the blocks are shared, the tail
    copied, and the output is the source's bytes."""
    n = (1 << 20) + 5
    data = np.arange(n, dtype=np.float32)
    src, dst = xfs / "odd.safetensors", xfs / "odd.npy"
    mlconv.save({"w": data}, src)
    moves = assert_copied_file_to_file(src, dst, xfs, n * 4)
    shared = sum(k for name, k in moves if name == "ioctl")
    assert shared == n * 4 - n * 4 % 4096, moves
    assert np.array_equal(np.load(dst), data)
