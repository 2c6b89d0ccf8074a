"""Carrying the dependencies to the GPU machine: ``scripts/device/fetch_device_wheels.py`` (coverage of setup.cfg,
device markers, a real download and install into a target folder) and ``scripts/device/device_env.sh`` (sourced
there)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from _scripts import load_script

REPO = Path(__file__).resolve().parents[1]
DEVICE_ENV = REPO / "scripts" / "device" / "device_env.sh"


def fdw():
    return load_script("device/fetch_device_wheels")


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal wheel whose METADATA has the given ``Requires-Dist`` lines."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def source_device_env(cwd: Path, prelude: str = "set -eu", env: dict | None = None) -> subprocess.CompletedProcess:
    script = f'{prelude}; source scripts/device/device_env.sh; echo "after rc=$? PYTHONPATH=$PYTHONPATH"'
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_requirement_names_and_coverage_of_real_setup_cfg():
    names = fdw().requirement_names(REPO / "setup.cfg")
    assert {"monai", "nibabel", "pytorch-ignite", "fire", "itk", "pyyaml", "torch"} <= set(names)
    fdw().check_coverage(names)


def test_coverage_names_unknown_requirement(tmp_path, capsys):
    cfg = tmp_path / "setup.cfg"
    cfg.write_text("[options]\ninstall_requires =\n    torch>=2.4\n    Frobnicate_Lib>=1.0\n    monai>=1.5\n")
    assert fdw().requirement_names(cfg) == ["torch", "frobnicate-lib", "monai"]
    with pytest.raises(ValueError, match="frobnicate-lib.*CARRIED.*IN_IMAGE.*SKIPPED"):
        fdw().check_coverage(fdw().requirement_names(cfg))
    with pytest.raises(ValueError, match="frobnicate-lib"):
        fdw().fetch(dest=str(tmp_path / "whl"), setup_cfg=str(cfg))
    assert not (tmp_path / "whl").exists()  # checked before anything is downloaded
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, no traceback
        fdw().main(["--dest", str(tmp_path / "whl"), "--setup_cfg", str(cfg)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: fetch_device_wheels: requirement(s) frobnicate-lib")
    assert "Traceback" not in err and not (tmp_path / "whl").exists()


def test_device_markers_and_missing_dependencies(tmp_path):
    requires = [
        'foo; python_version < "3.8"',
        'bar; extra == "x"',
        "baz>=1",
        "importlib-resources>=5.12; python_version < '3.12'",  # nibabel's: false on the device's 3.12
        "typing-extensions>=4.6; python_version < '3.13'",  # true there, and in the image
        'winonly; sys_platform == "win32"',
        "Torch>=2",  # in the image, whatever the spelling
        "pytorch_ignite",  # carried: a wheel of the set
    ]
    wheel = fake_wheel(tmp_path, "synth_fake", "1.0", requires)
    ignite = fake_wheel(tmp_path, "pytorch_ignite", "0.5.5", ["packaging", "torch<3,>=2.2"])
    applying = [r.name for r in fdw().device_requirements(fdw().wheel_metadata(wheel))]
    assert applying == ["baz", "typing-extensions", "Torch", "pytorch_ignite"]
    assert fdw().missing_dependencies([wheel, ignite]) == {wheel.name: ["baz>=1"]}
    assert fdw().missing_dependencies([wheel]) == {wheel.name: ["baz>=1", "pytorch_ignite"]}


def test_resolve_versions():
    pins = fdw().resolve_versions()
    assert list(pins) == ["monai", "nibabel", "pytorch-ignite", "fire", "termcolor"]
    assert pins["monai"] == importlib.metadata.version("monai")
    assert fdw().resolve_versions(versions="monai==1.5.0, fire==0.7.1")["monai"] == "1.5.0"
    assert fdw().resolve_versions(versions={"Pytorch_Ignite": "0.5.1"})["pytorch-ignite"] == "0.5.1"
    with pytest.raises(ValueError, match="not in CARRIED"):
        fdw().resolve_versions(versions="itk==5.4.0")
    with pytest.raises(ValueError, match="NAME==VERSION"):
        fdw().resolve_versions(versions="{monai: 1.6.1}")
    with pytest.raises(ValueError, match="not installed here"):
        fdw().resolve_versions(["surely-not-installed-pkg"])


def test_exclude_in_git_is_idempotent(tmp_path):
    root = tmp_path / "repo"
    assert "no " in fdw().exclude_in_git(root / ".whl", root)
    (root / ".git").mkdir(parents=True)  # no info/ yet: created
    assert "added /.whl/" in fdw().exclude_in_git(root / ".whl", root)
    assert "already" in fdw().exclude_in_git(root / ".whl", root)
    exclude = root / ".git" / "info" / "exclude"
    assert exclude.read_text() == "/.whl/\n"
    exclude.write_text("# comment without newline")
    fdw().exclude_in_git(root / ".whl", root)
    fdw().exclude_in_git(root / ".whl", root)
    assert exclude.read_text() == "# comment without newline\n/.whl/\n"
    assert "outside" in fdw().exclude_in_git(tmp_path / "elsewhere", root)


def test_summarize_limit(tmp_path, capsys):
    fake_wheel(tmp_path, "a", "1.0", [])
    (tmp_path / "b-1.0-py3-none-any.whl").write_bytes(b"\0" * 2**20)
    total = fdw().summarize(tmp_path, max_total_mib=2)
    assert 1 < total < 1.01
    assert "2 wheels" in capsys.readouterr().out
    with pytest.raises(ValueError, match="exceeds 0.5 MiB"):
        fdw().summarize(tmp_path, max_total_mib=0.5)


def test_device_env_syntax():
    subprocess.run(["bash", "-n", str(DEVICE_ENV)], check=True)


def test_device_env_without_wheels_fails_clearly(tmp_path):
    (tmp_path / "scripts" / "device").mkdir(parents=True)
    shutil.copy(DEVICE_ENV, tmp_path / "scripts" / "device")
    for prelude in ("set -eu", "shopt -s nullglob", "true"):
        result = source_device_env(tmp_path, prelude)
        assert "run python scripts/device/fetch_device_wheels.py here first and name .whl in carry" in result.stderr
        if prelude == "set -eu":
            assert result.returncode != 0 and "after" not in result.stdout  # the set -e caller stops
        else:
            assert "after rc=1" in result.stdout  # returned to the caller, which goes on
    (tmp_path / ".whl").mkdir()
    assert "here first" in source_device_env(tmp_path).stderr  # empty folder
    ran = subprocess.run(["bash", "scripts/device/device_env.sh"], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 1 and "source this file" in ran.stderr


def test_gpu_run_wrapper_stops_before_the_call_without_wheels(tmp_path):
    """``gpu_run.sh`` (the one device call) sources ``device_env.sh`` first: without wheels it stops there."""
    (tmp_path / "scripts" / "device").mkdir(parents=True)
    for name in ("device_env.sh", "gpu_run.sh"):
        shutil.copy(REPO / "scripts" / "device" / name, tmp_path / "scripts" / "device")
    subprocess.run(["bash", "-n", "scripts/device/gpu_run.sh"], cwd=tmp_path, check=True)
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    ran = subprocess.run(["bash", "scripts/device/gpu_run.sh"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ran.returncode == 1 and "fetch_device_wheels.py here first" in ran.stderr
    assert list((tmp_path / "out").iterdir()) == []  # gpu_call.py never started (its log would be there)


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The carried wheels, really downloaded (as for the device) into a fresh folder holding an older termcolor."""
    dest = tmp_path_factory.mktemp("device") / ".whl"
    dest.mkdir()
    stale = fake_wheel(dest, "termcolor", "0.0.1", [])
    wheels = fdw().download(fdw().resolve_versions(), dest)
    assert not stale.exists()  # two versions of one package would break the install there
    return dest, wheels


@pytest.mark.slow
def test_download_install_and_import_from_target(downloaded, tmp_path):
    dest, wheels = downloaded
    assert sorted(p.name for p in dest.iterdir()) == sorted(w.name for w in wheels)  # no temporary folder left
    assert {fdw().wheel_project(w) for w in wheels} == set(fdw().CARRIED)
    assert all(w.name.endswith("-py3-none-any.whl") for w in wheels), wheels  # pure Python: any platform
    assert fdw().missing_dependencies(wheels) == {}
    assert fdw().summarize(dest) < 48

    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target"]
    subprocess.run([*pip, str(site), *map(str, wheels)], check=True, capture_output=True)
    code = "import fire, ignite, monai, nibabel, termcolor; print(monai.__file__); print(ignite.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    files = [Path(line) for line in result.stdout.split()]
    assert len(files) == 2 and all(f.resolve().is_relative_to(site.resolve()) for f in files), files

    # Again: the pinned wheels are kept, not fetched again.
    mtimes = [w.stat().st_mtime_ns for w in wheels]
    assert fdw().download(fdw().resolve_versions(), dest) == wheels
    assert [w.stat().st_mtime_ns for w in wheels] == mtimes


@pytest.mark.slow
def test_device_env_installs_and_checks(downloaded, tmp_path):
    dest, _ = downloaded
    (tmp_path / "scripts" / "device").mkdir(parents=True)
    shutil.copy(DEVICE_ENV, tmp_path / "scripts" / "device")
    shutil.copytree(dest, tmp_path / ".whl")
    (tmp_path / "synth_transforms").symlink_to(REPO / "synth_transforms")
    site = tmp_path / "site"
    result = source_device_env(tmp_path, env={"DEVICE_SITE": str(site), "PYTHONPATH": "/elsewhere"})
    assert result.returncode == 0, result.stderr
    assert f"after rc=0 PYTHONPATH={site}:{tmp_path}:/elsewhere" in result.stdout
    assert f"monai from {site}" in result.stdout and "torch.cuda.is_available()=" in result.stdout
    assert (site / "monai").is_dir() and (site / "ignite").is_dir()


@pytest.mark.slow
def test_failed_download_leaves_nothing(tmp_path):
    dest = tmp_path / ".whl"
    with pytest.raises(RuntimeError, match="pip download failed"):
        fdw().download({"termcolor": "3.3.0", "monai": "0.0.0.0.1"}, dest)
    assert list(dest.iterdir()) == []
