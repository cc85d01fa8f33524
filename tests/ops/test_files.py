import os
import stat

import pytest

from skygrade.ops.files import atomic_path, atomic_write_text


def test_written_file_has_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.read_text() == "x"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failure_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# ------------------------------------------------------------------------ open_beneath
def _tree(tmp_path):
    root = tmp_path / "drop"
    (root / "night").mkdir(parents=True)
    (root / "night" / "a.fits").write_bytes(b"inside")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.fits").write_bytes(b"outside")
    return root, outside


def test_open_beneath_opens_a_file_below_the_root(tmp_path):
    from skygrade.ops.files import open_beneath

    root, _ = _tree(tmp_path)
    fd = open_beneath(root, root / "night" / "a.fits")
    try:
        assert os.read(fd, 100) == b"inside"
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["folder-swapped", "file-link", "dotdot", "fifo"])
def test_open_beneath_follows_no_symlink_and_leaves_no_root(tmp_path, how):
    """A night folder swapped for a symlink (issue 21, item 9), a symlink as the file, a path
    out of the root, and a FIFO are refused, and nothing outside is read."""
    from skygrade.ops.files import OutsideRootError, open_beneath

    root, outside = _tree(tmp_path)
    path = root / "night" / "a.fits"
    if how == "folder-swapped":
        (root / "night").rename(root / "night.old")
        (root / "night").symlink_to(outside)
    elif how == "file-link":
        path.unlink()
        path.symlink_to(outside / "a.fits")
    elif how == "dotdot":
        path = root / ".." / "elsewhere" / "a.fits"
    else:
        path.unlink()
        os.mkfifo(path)  # a FIFO must not block the open
    with pytest.raises(OutsideRootError):
        open_beneath(root, path)
