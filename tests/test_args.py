"""The shared argument checks: normalised values back, one message style for bad ones."""

import numpy as np
import pytest

from synth_transforms._args import (
    as_size3,
    check_bool,
    check_choice,
    check_fraction,
    check_int_range,
    check_output_dir,
    check_output_file,
    check_positive,
    check_positive_int,
    check_range,
)


def test_size3_normalises_and_refuses():
    assert as_size3(96) == (96, 96, 96)
    assert as_size3(np.array([64, 64, 32])) == (64, 64, 32)
    assert all(type(s) is int for s in as_size3((np.int64(8),) * 3))
    for bad in (96.0, (1, 2), "96", True, (0, 1, 1), (1.5, 2, 2)):
        with pytest.raises(ValueError, match=r"^preview: patch_size must be a positive integer or 3 of them, got"):
            as_size3(bad, owner="preview")
    with pytest.raises(ValueError, match="at most 512 voxels"):
        as_size3(600, max_voxels=512)
    with pytest.raises(ValueError, match="divisible by 32"):
        as_size3((64, 64, 48), multiple_of=32)


def test_scalar_checks():
    assert check_positive_int(np.int32(3), "n") == 3
    for bad in (2.7, 2.0, 0, True, "3"):
        with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got"):
            check_positive_int(bad, "n")
    assert check_fraction(1, "p") == 1.0
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\], got 1.5"):
        check_fraction(1.5, "p")
    assert check_range([0.1, 0.2], "r", low=0, high=1) == (0.1, 0.2)
    for bad in ((0.3, 0.2), (0, 1), (0.5,), "ab"):
        with pytest.raises(ValueError, match="r must be a pair"):
            check_range(bad, "r", low=0, high=1, strict_low=True)
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(ValueError, match="flag must be True or False .*got 'false'"):
        check_bool("false", "flag")
    assert check_choice("shell", "mode", ("shell", "fill")) == "shell"
    with pytest.raises(ValueError, match="mode must be one of 'shell', 'fill', got 'x'"):
        check_choice("x", "mode", ("shell", "fill"))


def test_output_paths(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output_file(tmp_path / "new" / "out.png") == tmp_path / "new" / "out.png"
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    with pytest.raises(ValueError, match="json must be a file path, not a folder"):
        check_output_file(tmp_path, "json")
    with pytest.raises(ValueError, match="out must be a folder, not a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="out must be a path in a writable folder"):
        check_output_file(tmp_path / "file" / "x.png")  # the nearest existing "folder" is a file
    with pytest.raises(ValueError, match="writable folder"):
        check_output_dir("/proc/synth_out")  # procfs: no file can be created there, even as root
    assert not list(tmp_path.glob(".write_probe_*"))


def test_integer_ranges_and_positive_numbers():
    assert check_int_range(3, "num_shapes") == (3, 3)
    assert check_int_range((np.int64(2), 5), "num_shapes") == (2, 5)
    for bad in ((0, 3), (5, 2), (1, 2, 3), (1.0, 2), 2.5, "3", True):
        with pytest.raises(ValueError, match=r"^f: num_shapes must be an integer >= 1 or an inclusive range"):
            check_int_range(bad, "num_shapes", owner="f")
    assert check_positive_int(32, "k", maximum=32) == 32
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.32, got 33"):
        check_positive_int(33, "k", maximum=32)
    assert check_positive(np.float32(0.5), "spacing") == 0.5
    for bad in (0, -1.5, float("inf"), "1.5"):
        with pytest.raises(ValueError, match="spacing must be a number > 0"):
            check_positive(bad, "spacing")
    with pytest.raises(ValueError, match=r"s must be a pair \(low, high\) of fractions of the edge with 0 < low"):
        check_range((0, 0.5), "s", low=0, high=1, strict_low=True, of="fractions of the edge")
