"""Tests of the command line (python -m synth_transforms ...), its functions and scripts/demo.py.

Each ``python -m synth_transforms`` process spends most of its time (about 7 s of CPU) importing MONAI, so a few
subprocess runs are started together once per module (``cli_runs``); the other commands and the finer behaviour
(resume, interruption, argument checks) are tested in-process through ``cli.main``, the same fire front end.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import _synthetic_labels as syn
import nibabel as nib
import numpy as np
import pytest
from _scripts import load_script
from monai.data import load_decathlon_datalist
from PIL import Image

from synth_transforms import RandAnatomySynthd, ShapeBank, SyntheticDataset, TopologyGraph, cli, load_bank
from synth_transforms.generate import generate_dataset
from synth_transforms.realism import STATISTICS, format_realism

CLASS_MAP = {"1": "box", "2": "ball", "5": "rod"}
SMALL = 32  # patch edge of the in-process generate tests


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_label_maps(folder: Path) -> None:
    """Two subjects (30^3 at 1.5 mm) with a box, a ball and a rod, using the ids of CLASS_MAP."""
    grid = np.stack(np.meshgrid(*[np.arange(30)] * 3, indexing="ij"))
    for k, subject in enumerate(["sub1", "sub2"]):
        labels = np.zeros((30, 30, 30), dtype=np.uint8)
        labels[4 : 12 + k, 5:13, 6:14] = 1
        labels[((grid - np.array([[[[20]]], [[[18]]], [[[15 + k]]]])) ** 2).sum(0) <= 25] = 2
        labels[20:23, 5:8, 8 : 24 - k] = 5
        (folder / subject).mkdir(parents=True)
        nib.save(nib.Nifti1Image(labels, np.diag([1.5, 1.5, 1.5, 1.0])), folder / subject / "labels.nii.gz")
    (folder / "class_map.json").write_text(json.dumps(CLASS_MAP))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    _write_label_maps(root / "maps")
    return root


def _command(template: str, **paths) -> list[str]:
    """The words of ``template``, placeholders ``{name}`` filled after splitting (so paths may hold spaces)."""
    return [word.format(**paths) for word in template.split()]


@pytest.fixture(scope="module", autouse=True)
def cli_procs(workdir):
    """Start every subprocess command at once, at the start of the module, so they run beside in-process tests."""
    paths = {"maps": workdir / "maps", "dir": workdir}
    commands = {
        "bank_build": "bank build --label_maps {maps} --class_map {maps}/class_map.json --organs box,ball,rod "
        "--out {dir}/tiny_bank.npz",
        "preview": "preview --out {dir}/preview.png --n 2 --patch_size 48",
        "generate": "generate --out {dir}/gen --n 3 --patch_size 48 --workers 0",
        "validate": "validate --n 6 --patch_size 48 --json {dir}/report.json --workers 0 --progress False",
        "missing_class_map": "bank build --label_maps {maps} --class_map {dir}/no_such_map.json --organs box "
        "--out {dir}/x.npz",
        "float_patch_size": "generate --out {dir}/float_gen --n 2 --patch_size 96.0",
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = workdir / "logs"
    logs.mkdir()
    procs = {}
    for name, template in commands.items():
        args = _command(template, **paths)
        with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "synth_transforms", *args], stdout=out, stderr=err, cwd=workdir, env=env
            )
    yield procs, logs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cli_runs(cli_procs):
    """``{name: (returncode, stdout, stderr)}`` of the subprocess commands, once all have finished."""
    procs, logs = cli_procs
    return {
        name: (proc.wait(timeout=300), (logs / f"{name}.out").read_text(), (logs / f"{name}.err").read_text())
        for name, proc in procs.items()
    }


def _ok(run):
    code, out, err = run
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out


# ---------------------------------------------------------------------------------------------- in-process
def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted generate run of 4 small pairs."""
    out = tmp_path_factory.mktemp("reference") / "data"
    generate_dataset(out, n=4, seed=3, patch_size=SMALL, workers=0, progress=False)
    return out


def test_generated_pairs_are_the_dataset_samples(reference):
    dataset = SyntheticDataset(RandAnatomySynthd(patch_size=(SMALL,) * 3), 4, seed=3)
    for i in (0, 3):
        sample = dataset[i]
        label = nib.load(reference / "labelsTr" / f"synth_{i:05d}.nii.gz")
        image = nib.load(reference / "imagesTr" / f"synth_{i:05d}.nii.gz")
        assert np.asarray(label.dataobj).dtype == np.uint8
        assert np.array_equal(np.asarray(label.dataobj), sample["label"][0].numpy())
        assert np.array_equal(image.get_fdata(dtype=np.float32), sample["image"][0].numpy())
        assert np.allclose(label.affine, sample["label"].affine.numpy())


def test_resume_recreates_a_deleted_pair_identically(reference, tmp_path):
    out = tmp_path / "data"
    generate_dataset(out, n=4, seed=3, patch_size=SMALL, workers=0, progress=False)
    assert _tree_bytes(out) == _tree_bytes(reference)  # another folder, same bytes
    kept = out / "imagesTr" / "synth_00000.nii.gz"
    mtime = kept.stat().st_mtime_ns
    (out / "labelsTr" / "synth_00002.nii.gz").unlink()
    generate_dataset(out, n=4, seed=3, patch_size=SMALL, workers=0, progress=False)
    assert _tree_bytes(out) == _tree_bytes(reference)
    assert kept.stat().st_mtime_ns == mtime  # complete pairs are skipped, not rewritten


def test_interrupted_run_leaves_no_partial_file_and_resumes(reference, tmp_path, monkeypatch):
    out = tmp_path / "data"
    real_save = nib.save
    calls = []

    def save_then_crash(image, path):
        calls.append(path)
        if len(calls) == 4:  # the label of pair 1: write part of it, then die
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        real_save(image, path)

    monkeypatch.setattr(nib, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, n=4, seed=3, patch_size=SMALL, workers=0, progress=False)
    monkeypatch.setattr(nib, "save", real_save)
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    # no temporary file, no partial label of pair 1, no dataset.json yet
    assert names == {"synth_args.json", *(f"{d}/synth_00000.nii.gz" for d in ("imagesTr", "labelsTr"))} | {
        "imagesTr/synth_00001.nii.gz"
    }
    generate_dataset(out, n=4, seed=3, patch_size=SMALL, workers=0, progress=False)
    assert _tree_bytes(out) == _tree_bytes(reference)


def test_worker_processes_give_the_same_bytes(reference, tmp_path):
    out = tmp_path / "data"
    generate_dataset(out, n=4, seed=3, patch_size=SMALL, workers=2, progress=False)
    assert _tree_bytes(out) == _tree_bytes(reference)


def test_resume_with_other_arguments_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "data"
    generate_dataset(out, n=2, seed=3, patch_size=SMALL, workers=0, progress=False)
    with pytest.raises(ValueError, match=r"seed: was 3, now 4"):
        generate_dataset(out, n=2, seed=4, patch_size=SMALL, workers=0, progress=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--out", str(out), "--n", "2", "--patch_size", "48", "--seed", "3"])
    assert exit_info.value.code == 2
    assert "patch_size: was [32, 32, 32], now [48, 48, 48]" in capsys.readouterr().err


def test_folder_not_made_by_generate_is_refused(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(ValueError, match="synth_args.json"):
        generate_dataset(tmp_path, n=1, patch_size=SMALL, progress=False)


def test_primitive_dataset_names_the_primitive_classes(tmp_path):
    dataset_json = generate_dataset(tmp_path / "prim", n=1, patch_size=SMALL, primitives=True, progress=False)
    meta = json.loads(dataset_json.read_text())
    assert len(meta["labels"]) == 33 and meta["labels"]["1"] == "ellipse concave"
    assert json.loads((tmp_path / "prim" / "synth_args.json").read_text())["bank"] is None


def test_unknown_organ_is_a_clear_error(workdir, capsys):
    maps = workdir / "maps"
    with pytest.raises(SystemExit) as exit_info:
        template = "bank build --label_maps {maps}/*/labels.nii.gz --class_map {maps}/class_map.json"
        cli.main(_command(template + " --organs box,pyramid --out {dir}/y.npz", maps=maps, dir=workdir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: organ 'pyramid'") and "class map has no class" in err
    assert not (workdir / "y.npz").exists()


def test_graph_text_json_and_png(tmp_path, capsys):
    cli.main(["graph"])
    text = capsys.readouterr().out
    assert text.startswith("TopologyGraph(21 organs") and "liver adjacent stomach" in text
    cli.main(["graph", "--out", str(tmp_path / "graph.json")])
    bank = load_bank()
    saved = TopologyGraph.load(tmp_path / "graph.json", bank.organs)
    assert saved.edges() == TopologyGraph.from_bank(bank).edges()
    cli.main(["graph", "--out", str(tmp_path / "graph.png")])
    with Image.open(tmp_path / "graph.png") as img:
        assert img.format == "PNG" and img.width > 500
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["graph", "--out", str(tmp_path / "graph.svg")])
    assert exit_info.value.code == 2 and ".json or .png" in capsys.readouterr().err


def test_label_maps_by_glob_folder_and_list(workdir, tmp_path):
    maps = workdir / "maps"
    expected = [maps / "sub1" / "labels.nii.gz", maps / "sub2" / "labels.nii.gz"]
    assert cli._resolve_label_maps(str(maps)) == expected
    assert cli._resolve_label_maps(f"{maps}/*/labels.nii.gz") == expected
    assert cli._resolve_label_maps(tuple(str(p) for p in expected)) == expected
    assert cli._resolve_label_maps(",".join(str(p) for p in expected)) == expected  # --label_maps a,b
    assert cli._resolve_label_maps(json.dumps([str(p) for p in expected])) == expected  # a JSON list string
    listed = maps / "list.json"  # a JSON file: relative paths are relative to its folder
    listed.write_text(json.dumps(["sub1/labels.nii.gz", str(expected[1])]))
    assert cli._resolve_label_maps(str(listed)) == expected
    listed.unlink()
    with pytest.raises(FileNotFoundError, match="no file matches"):
        cli._resolve_label_maps(f"{maps}/*/nothing*.nii.gz")
    with pytest.raises(ValueError, match="label map list .* JSON list of paths"):
        cli._resolve_label_maps("[1, 2]")
    assert cli._organ_spec('["box", "ball"]') == cli._organ_spec("box,ball") == ["box", "ball"]
    assert cli._organ_spec({"box": "box", "both": ["ball", "rod"]}) == {"box": ["box"], "both": ["ball", "rod"]}


_BAD_ARGUMENTS = {
    "out is a folder": ("preview --out {dir}", "preview: out must be a file path, not a folder"),
    "out in a file": ("preview --out {file}/p.png", "preview: out must be a path in a writable folder"),
    "out read-only": ("preview --out /proc/p.png", "preview: out must be a path in a writable folder"),
    "out dir is a file": ("generate --out {file} --n 2", "generate: out must be a folder, not a file"),
    "out dir read-only": ("generate --out /proc/synth_gen --n 2", "generate: out must be a writable folder"),
    "bank out is a folder": (
        "bank build --label_maps {dir} --class_map {dir}/c.json --out {dir}",
        "bank build: out must be a file path, not a folder",
    ),
    "bank out read-only": (
        "bank build --label_maps {dir} --class_map {dir}/c.json --out /proc/b.npz",
        "bank build: out must be a path in a writable folder",
    ),
    "json is a folder": ("validate --n 2 --json {dir}", "validate: json must be a file path, not a folder"),
    "json read-only": ("validate --n 2 --json /proc/r.json", "validate: json must be a path in a writable folder"),
    "float patch": ("preview --out {dir}/p.png --patch_size 96.0", "preview: patch_size must be a positive integer"),
    "float patch axis": ("generate --out {dir}/g --n 2 --patch_size 64,64.0,32", "generate: patch_size must be"),
    "float n": ("preview --out {dir}/p.png --n 2.7", "preview: n must be an integer >= 1, got 2.7"),
    "float n generate": ("generate --out {dir}/g --n 2.7", "generate: n must be an integer >= 1, got 2.7"),
    "float n validate": ("validate --n 2.7", "validate: n must be an integer >= 1, got 2.7"),
    "float n bench": ("bench --n 2.0", "bench: n must be an integer >= 1, got 2.0"),
    "false preview": ("preview --out {dir}/p.png --primitives false", "preview: primitives must be True or False"),
    "false generate": ("generate --out {dir}/g --n 2 --primitives false", "generate: primitives must be True or"),
    "false validate": ("validate --n 2 --progress false", "validate: progress must be True or False"),
    "mode": ("preview --out {dir}/p.png --mode outline", "preview: mode must be one of 'shell', 'fill', 'mixed'"),
    "workers": ("generate --out {dir}/g --n 2 --workers 1.5", "generate: workers must be an integer >= 0"),
    "spacing": (
        "bank build --label_maps {dir} --class_map {dir}/c.json --out {dir}/b.npz --spacing 0",
        "bank build: spacing must be a number > 0, got 0",
    ),
    "graph suffix": ("graph --out {dir}/g.svg", "graph: out must be a .json or .png file name"),
    "reference without class map": (
        "validate --reference {file} --json {dir}/r.json",
        "validate: class_map must be a JSON {id: name} file naming the --reference ids, got None",
    ),
    "reference outside": (
        "validate --reference {file} --class_map {file} --outside cut --json {dir}/r.json",
        "validate: outside must be one of 'shift', 'pad', got 'cut'",
    ),
    "reference n_real": (
        "validate --reference {file} --class_map {file} --n_real 0",
        "validate: n_real must be an integer >= 1, got 0",
    ),
    "reference holdout": (
        "validate --reference {file} --class_map {file} --holdout_banks false",
        "validate: holdout_banks must be True or False",
    ),
    "skip rate above one": (
        "validate --n 2 --max_skip_rate 1.5 --json {dir}/r.json",
        "validate: max_skip_rate must be a number in [0, 1], got 1.5",
    ),
    "realism option without reference": (
        "validate --n 2 --class_map {file} --json {dir}/r.json",
        "validate: reference must be label maps when class_map is given, got None",
    ),
}


@pytest.mark.parametrize("command, message", _BAD_ARGUMENTS.values(), ids=_BAD_ARGUMENTS.keys())
def test_bad_argument_is_one_line_exit_2_and_nothing_written(command, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_command(command, dir=tmp_path, file=tmp_path / "file"))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert out == ""
    assert sorted(tmp_path.rglob("*")) == before  # checked before any work: nothing made, not even a folder


def test_unknown_organ_in_validate_names_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate", "--n", "1", "--patch_size", "32", "--organs", "liver,appendix", "--progress", "False"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: organ 'appendix' is not in this shape bank")


VALIDATE_48 = ["validate", "--n", "20", "--patch_size", "48", "--workers", "0", "--progress", "False"]


def test_validate_placement_switch_reaches_the_placer_and_the_report(tmp_path, capsys):
    """--placement '{"use_topology": false}': later organs overwrite earlier ones, so disjoint organs overlap (exit
    status 1), where the default run of the same patches passes that check; the settings record the switch."""
    reports = {}
    for name, extra in (("default", []), ("no_topology", ["--placement", '{"use_topology": false}'])):
        out = tmp_path / f"{name}.json"
        try:
            cli.main([*VALIDATE_48, *extra, "--json", str(out)])
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
        reports[name] = (code, json.loads(out.read_text()), capsys.readouterr())
    code, report, printed = reports["default"]
    assert code == 0 and report["checks"]["disjoint_overlap_voxels"]["value"] == 0
    assert report["settings"]["placement_options"]["use_topology"] is True
    assert "placement options changed" not in printed.out
    code, report, printed = reports["no_topology"]
    assert code == 1 and report["checks"]["disjoint_overlap_voxels"]["value"] > 0 and not report["ok"]
    assert report["settings"]["placement_options"] == {**reports["default"][1]["settings"]["placement_options"],
                                                       "use_topology": False}  # fmt: skip
    assert "placement options changed from the defaults: use_topology=False" in printed.out
    assert "validation failed: disjoint_overlap_voxels" in printed.err


@pytest.mark.parametrize(
    "placement, message",
    [
        (
            '{"use_anchor": false}',
            "validate: placement has no option 'use_anchor'; its options are: jitter_scale, scale_range, rotation_deg, "
            "deform_mm, max_tries, max_carve_fraction, min_inside_fraction, indent_fraction, max_embed_fraction, "
            "donor_prob, use_anchors, use_topology",
        ),
        ("[1, 2]", "validate: placement must be a JSON object"),
        ('{"use_anchors": "no"}', "OrganPlacer: use_anchors must be True or False"),
    ],
)
def test_validate_bad_placement_is_one_line_exit_2_before_any_work(placement, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate", "--n", "2", "--placement", placement, "--json", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and out == "", err
    assert not (tmp_path / "r.json").exists()


def test_json_object_reads_text_files_and_what_fire_made_of_json(tmp_path):
    from synth_transforms.cli_args import json_object

    assert json_object(None, "placement") is None
    assert json_object('{"use_anchors": false, "jitter_scale": 0.2}', "p") == {
        "use_anchors": False,
        "jitter_scale": 0.2,
    }
    # fire parses a dict itself and reads JSON's bare words as strings: they are turned back
    assert json_object({"use_anchors": "false", "a": "true", "b": "null", "c": "text"}, "p") == {
        "use_anchors": False, "a": True, "b": None, "c": "text",
    }  # fmt: skip
    (tmp_path / "p.json").write_text('{"use_topology": false}')
    assert json_object(str(tmp_path / "p.json"), "p") == {"use_topology": False}
    with pytest.raises(ValueError, match=r"^v: p must be a JSON object .* got 'nope'$"):
        json_object("nope", "p", "v")
    with pytest.raises(FileNotFoundError):
        json_object(str(tmp_path / "missing.json"), "p")


def test_comma_items_reads_every_form_a_flag_takes():
    from synth_transforms.cli_args import comma_items, names

    assert comma_items(None) == [] and comma_items("") == [] and comma_items(3) == [3]
    assert comma_items(" a, b ,,c ") == ["a", "b", "c"]
    assert comma_items(("a,b", "c", 4)) == ["a", "b", "c", 4]  # fire's tuple, a string item split again
    assert names("liver, spleen") == ["liver", "spleen"] and names('["a,b"]') == ["a,b"]  # a JSON name is kept whole


def test_bench_times_both_transforms(capsys):
    result = cli.bench(n=2, patch_size=SMALL)
    assert result["anatomy"] > 0 and result["primitives"] > 0
    assert result["anatomy_over_primitives"] == pytest.approx(result["anatomy"] / result["primitives"])


def test_demo_writes_preview_and_dataset(tmp_path, capsys):
    demo = load_script("demo")
    demo.main(["--out", str(tmp_path / "demo"), "--n", "2", "--patch_size", str(SMALL)])
    out = capsys.readouterr().out
    assert "preview.png" in out and "dataset.json" in out
    assert (tmp_path / "demo" / "preview.png").stat().st_size > 0
    assert len(load_decathlon_datalist(tmp_path / "demo" / "synthetic" / "dataset.json", True, "training")) == 2


# ---------------------------------------------------------------------------------------------- subprocess
def test_bank_build(cli_runs, workdir):
    out = _ok(cli_runs["bank_build"])
    assert "3 organs, 2 subjects" in out
    progress = cli_runs["bank_build"][2]  # one line per label map read, on stderr
    assert "bank: subject sub1: 3 of 3 organs" in progress and "bank: subject sub2: 3 of 3 organs" in progress
    bank = ShapeBank.load(workdir / "tiny_bank.npz")
    assert bank.organs == ["box", "ball", "rod"] and bank.subjects == ["sub1", "sub2"] and bank.spacing == 1.5


def test_preview_writes_a_png(cli_runs, workdir):
    _ok(cli_runs["preview"])
    assert "2/2" in cli_runs["preview"][2]  # the progress bar, on stderr
    path = workdir / "preview.png"
    assert path.stat().st_size > 0
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 6 * 48 and img.height > 2 * 48


def test_generate_writes_a_decathlon_dataset(cli_runs, workdir):
    _ok(cli_runs["generate"])
    datalist = load_decathlon_datalist(workdir / "gen" / "dataset.json", True, "training")
    assert len(datalist) == 3
    meta = json.loads((workdir / "gen" / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["labels"]["0"] == "background" and meta["labels"]["6"] == "liver"
    assert len(meta["labels"]) == 22
    for item in datalist:
        image, label = nib.load(item["image"]), nib.load(item["label"])
        assert image.shape == label.shape == (48, 48, 48)
        assert np.allclose(np.abs(np.diag(label.affine))[:3], 1.5)
        values = np.unique(np.asarray(label.dataobj))
        assert values.min() >= 0 and values.max() <= 21
        data = image.get_fdata()
        assert 0.0 <= data.min() and data.max() <= 1.0
    assert not [p for p in (workdir / "gen").rglob("*") if ".tmp" in p.name]


def test_validate_prints_and_saves_the_report(cli_runs, workdir):
    out = _ok(cli_runs["validate"])
    assert "PASS" in out and "disjoint_overlap_voxels" in out
    report = json.loads((workdir / "report.json").read_text())
    assert report["samples"] == 6 and report["ok"] is True
    assert report["checks"]["organs_outside_tolerance"]["value"] == 0


def test_missing_class_map_is_a_clear_error(cli_runs, workdir):
    code, out, err = cli_runs["missing_class_map"]
    assert code == 2
    assert "error:" in err and "no_such_map.json" in err and "not found" in err
    assert "Traceback" not in err
    assert not (workdir / "x.npz").exists()


def test_float_patch_size_is_one_line_before_any_work(cli_runs, workdir):
    code, out, err = cli_runs["float_patch_size"]
    assert code == 2 and out == ""
    assert err == "error: generate: patch_size must be a positive integer or 3 of them, got 96.0\n"
    assert not (workdir / "float_gen").exists()


def test_bank_info(cli_runs, workdir, capsys):
    cli.main(["bank", "info"])
    out = capsys.readouterr().out
    assert "21 organs" in out and "liver" in out and "default_bank.npz" in out
    _ok(cli_runs["bank_build"])
    cli.main(["bank", "info", "--path", str(workdir / "tiny_bank.npz")])
    out = capsys.readouterr().out
    assert "3 organs" in out and "box" in out and "rod" in out


# ---------------------------------------------------------------------------------------------- bank build options
#: AMOS-style organs (tests/_synthetic_labels.py): by name, kidneys and adrenal glands pair up, and the adrenal
#: glands and the gallbladder follow a parent organ.
AMOS_ORGANS = "liver,gall bladder,kidney_L,kidney_R,left adrenal gland,right adrenal gland"


def _build_amos(root: Path, *options: str) -> tuple[ShapeBank, str]:
    """``bank build`` of the AMOS-style subjects under ``root`` with ``options``: the bank and what was printed."""
    _, class_map = syn.write_amos_subjects(root)
    out = root / "amos_bank.npz"
    argv = ["bank", "build", "--label_maps", str(root), "--class_map", str(class_map), "--organs", AMOS_ORGANS]
    cli.main([*argv, "--out", str(out), "--progress", "False", *options])
    return ShapeBank.load(out), str(out)


def test_bank_build_takes_pairs_and_anchors_from_json_files(tmp_path, capsys):
    (tmp_path / "pairs.json").write_text(json.dumps({"kidney_L": "kidney_R"}))
    (tmp_path / "anchors.json").write_text(json.dumps({"gall bladder": "liver"}))
    options = ["--mirror_pairs", str(tmp_path / "pairs.json"), "--relative_anchors", str(tmp_path / "anchors.json")]
    bank, out = _build_amos(tmp_path, *options, "--island_fraction", "0")
    assert bank.mirror_pairs == [("kidney_L", "kidney_R")] and bank.relative_anchors == {"gall bladder": "liver"}
    assert any(s.mirrored for s in bank.shapes["kidney_R"])
    assert not any(s.mirrored for s in bank.shapes["left adrenal gland"])  # not a pair of the file: not mirrored
    assert bank.source["island_fraction"] == 0.0 and bank.source["build_report"]["islands"] == {}
    (stray_kept,) = [s for s in bank.measured_shapes("kidney_L") if s.subject == "amos1"]
    assert stray_kept.mask.shape > syn.amos_box_dims("kidney_L")  # island_fraction 0 kept the far stray voxel
    printed = capsys.readouterr().out  # the bank's info() (what the build did), then where it was saved
    assert "mirror pairs: kidney_L <-> kidney_R\n" in printed and "relative anchors: gall bladder -> liver\n" in printed
    assert printed.index("ShapeBank: 6 organs") < printed.index("mirror pairs") and printed.endswith(f"saved {out}\n")


def test_bank_build_none_disables_pairs_and_anchors_and_islands_are_dropped(tmp_path, capsys):
    bank, _ = _build_amos(tmp_path, "--mirror_pairs", "None", "--relative_anchors", "None")
    assert bank.mirror_pairs == [] and bank.relative_anchors == {}
    assert not any(s.mirrored for shapes in bank.shapes.values() for s in shapes)
    assert bank.source["island_fraction"] == 0.02 and list(bank.source["build_report"]["islands"]) == ["amos1"]
    assert all(s.mask.shape == syn.amos_box_dims("kidney_L") for s in bank.measured_shapes("kidney_L"))
    printed = capsys.readouterr().out
    assert "mirror pairs: none" in printed and "relative anchors: none" in printed
    assert "stray islands dropped (components < 0.02 of their class's largest): 1 " in printed


_BAD_BANK_OPTIONS = {
    "pairs word": (["--mirror_pairs", "yes"], "mirror_pairs must be auto, None or a JSON file {left: right}"),
    "anchors list file": (
        ["--relative_anchors", "{dir}/list.json"],
        "relative_anchors file {dir}/list.json must be {child: parent} of organ names, got ['liver']",
    ),
    "pairs missing file": (["--mirror_pairs", "{dir}/none.json"], "mirror_pairs file {dir}/none.json: file not found"),
    "island fraction": (["--island_fraction", "1.5"], "island_fraction must be a number in [0, 1], got 1.5"),
}


@pytest.mark.parametrize("options, message", _BAD_BANK_OPTIONS.values(), ids=_BAD_BANK_OPTIONS.keys())
def test_bad_bank_option_is_one_line_exit_2_before_any_work(options, message, tmp_path, capsys):
    (tmp_path / "list.json").write_text(json.dumps(["liver"]))
    options = [o.replace("{dir}", str(tmp_path)) for o in options]
    # no label maps exist: an error about them would mean the options were checked after reading them
    argv = ["bank", "build", "--label_maps", str(tmp_path / "maps"), "--class_map", str(tmp_path / "c.json")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(tmp_path / "b.npz"), *options])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert message.replace("{dir}", str(tmp_path)) in err
    assert not (tmp_path / "b.npz").exists()


# ---------------------------------------------------------------------------------------------- validate --reference
def test_validate_reference_prints_the_realism_table_and_writes_json(tmp_path, capsys):
    bank, _, class_map = syn.build_bank(tmp_path / "maps")  # two subjects, syn1 and syn2, in folders of their own
    bank.save(tmp_path / "bank.npz")
    out = tmp_path / "realism.json"
    argv = ["validate", "--reference", f"{tmp_path}/maps/*/labels.nii.gz", "--class_map", str(class_map)]
    options = "--n 8 --n_real 4 --patch_size 16 --seed 3 --outside pad --workers 0 --progress False"
    cli.main([*argv, "--bank", str(tmp_path / "bank.npz"), *options.split(), "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    settings = {"n": 8, "n_real": 4, "seed": 3, "patch_size": [16] * 3, "outside": "pad", "primitives": True}
    assert {k: report["settings"][k] for k in settings} == settings and not report["settings"]["holdout_banks"]
    assert report["settings"]["organs"] == bank.organs and report["reference"]["subjects"] == ["syn1", "syn2"]
    assert report["sets"]["real"]["patches"] == 8 and report["sets"]["primitives"]["patches"] == 8
    assert list(report["statistics"]) == list(STATISTICS)
    foreground = report["statistics"]["foreground"]  # label-agnostic: measured for every set, LOSO with 2 subjects
    assert all(foreground[c] is not None for c in ("loso", "synthetic", "synthetic_all", "primitives"))
    assert foreground["synthetic_holdout"] is None  # --holdout_banks not asked for
    header = next(line for line in printed.splitlines() if line.lstrip().startswith("statistic"))
    assert "real LOSO" in header and "primitive" in header
    assert "  organ presence rate " in printed and "  foreground fraction of the patch " in printed
    assert printed == f"{format_realism(report)}\nreport: {out}\n"  # the table of the report written, then its path
