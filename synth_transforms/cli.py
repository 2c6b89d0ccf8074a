"""Command line: ``python -m synth_transforms <command>`` (or ``synth-transforms <command>``), built with fire.

Commands:

- ``bank build --label_maps <glob | folder | files> --class_map <json> [--organs <json | a,b,c>] [--spacing 1.5]
  [--mirror_pairs auto|None|pairs.json] [--relative_anchors auto|None|anchors.json] [--island_fraction 0.02]
  --out bank.npz``; ``bank info [--path bank.npz]`` (default: the bank shipped with the package);
- ``preview [--out preview.png] [--n 4] [--seed 0] [--mode shell] [--patch_size 96] [--bank ...]
  [--primitives False] [--legend True]``: PNG montage of samples in three planes;
- ``generate --out <dir> --n <N> [--seed 0] [--mode shell] [--patch_size 96] [--primitives False] [--bank ...]
  [--workers auto]``: N NIfTI pairs plus a Decathlon ``dataset.json``; resumable, byte-identical on resume;
- ``graph [--bank ...] [--topology graph.json] [--out graph.json | graph.png]``: show, save or draw the topology;
- ``validate [--n 1000] [--seed 0] [--patch_size 96] [--json report.json] [--bank ...] [--max_skip_rate 0.05]
  [--placement '{"use_anchors": false}']``: the plausibility report of :mod:`synth_transforms.validation` (exit
  status 1 when a check fails; ``--placement`` sets ``PlacementOptions`` fields, e.g. the ablation switches); with
  ``--reference <label maps> --class_map <json> [--n_real 200] [--organ_classes <json>] [--outside shift|pad]
  [--holdout_banks False] [--primitives True]`` instead the realism report of :mod:`synth_transforms.realism`
  (synthetic patches against patches cut from real label maps, with leave-one-subject-out baselines);
- ``bench [--n 20] [--patch_size 96] [--mode shell]``: median seconds per pair of the anatomy and primitive
  synthesis on one thread.

This module parses and prints (list arguments: :mod:`synth_transforms.cli_args`). The commands are plain functions
that check every argument before any work (:mod:`synth_transforms._args`) and return what they made; fire exposes
them as they are (its help comes from their signatures and docstrings) through :func:`_printed`, which prints the
result. Dataset and preview writing live in
:mod:`synth_transforms.generate`. Bad input ends with ``error: <message>`` and exit status 2
(:func:`synth_transforms.fire_runner.run_fire`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ._args import (
    as_size3,
    check_bool,
    check_choice,
    check_fraction,
    check_output_file,
    check_positive,
    check_positive_int,
    fail,
)
from .bank import DEFAULT_BANK_PATH, ShapeBank
from .cli_args import json_object as _json_object
from .cli_args import names as _names
from .cli_args import organ_spec as _organ_spec
from .cli_args import resolve_label_maps as _resolve_label_maps
from .dataset import sample_seed
from .fire_runner import run_fire
from .generate import _auto_workers, _bank, generate_dataset, make_synth, write_preview
from .io import read_json, write_json_atomic
from .render import RENDER_MODES
from .topology import TopologyGraph
from .transforms.options import PlacementOptions, as_options, options_dict

__all__ = ["main", "build_bank", "bank_info", "show_graph", "validate", "bench"]


# ---------------------------------------------------------------------------------------------- commands
@contextmanager
def _progress_lines(logger_name: str, enabled: bool):
    """Print the INFO lines of logger ``logger_name`` (its progress) on stderr while the block runs."""
    logger = logging.getLogger(logger_name)
    if not enabled:
        yield
        return
    handler, level = logging.StreamHandler(sys.stderr), logger.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def build_bank(
    label_maps,
    class_map,
    out,
    organs=None,
    spacing: float = 1.5,
    progress: bool = True,
    mirror_pairs="auto",
    relative_anchors="auto",
    island_fraction: float = 0.02,
) -> ShapeBank:
    """Build a shape bank from label maps and a class map and save it (see ShapeBank.build); print what it holds.

    Args:
        label_maps: a glob (quote it), a folder (its label maps, or one per subfolder), a comma list of files, or a
            JSON list of them (inline, or a .json file; its relative paths are relative to its folder).
        class_map: JSON file {"id": "class name"} naming the label maps' ids.
        out: bank file to write (.npz).
        organs: JSON file {organ: [class names merged]}, or a comma or JSON list of class names (default: the 21
            TotalSegmentator v2 organs of the default bank).
        spacing: isotropic voxel size in mm.
        progress: print a line per label map read.
        mirror_pairs: left/right organs whose mirrored shapes stand in for each other: auto (paired by name:
            X_left/X_right, X_L/X_R, left X/right X), None (no mirroring), or a JSON file {left: right}.
        relative_anchors: organs placed relative to where a parent organ was placed: auto (adrenal glands ->
            kidneys, gallbladder and portal vein -> liver, matched by name), None (absolute anchors only), or a
            JSON file {child: parent}.
        island_fraction: a connected component of a class smaller than this fraction of the class's largest one
            is a stray island and dropped (0 keeps everything).

    Returns:
        The bank (saved to out); the command prints its summary (ShapeBank.info: organs, mirror pairs, relative
        anchors, islands dropped, smoothed maps, subjects mostly cut by the field of view).
    """

    owner = "bank build"
    out = check_output_file(out, "out", owner)
    spacing = check_positive(spacing, "spacing", owner)
    progress = check_bool(progress, "progress", owner)
    island_fraction = check_fraction(island_fraction, "island_fraction", owner)
    links = {}  # mirror_pairs and relative_anchors: "auto", None or {organ: organ}, read before any work
    for name, value, pattern in (
        ("mirror_pairs", mirror_pairs, "{left: right}"),
        ("relative_anchors", relative_anchors, "{child: parent}"),
    ):
        if isinstance(value, str) and value.strip().endswith(".json"):
            path = Path(value.strip())
            what, expected, value = f"{name} file {path}", f"{pattern} of organ names", read_json(path, f"{name} file")
        elif value is None or (isinstance(value, str) and value == "auto"):
            links[name] = value
            continue
        else:
            what, expected = name, f"auto, None or a JSON file {pattern} of organ names"
        if not (isinstance(value, Mapping) and all(isinstance(o, str) for item in value.items() for o in item)):
            raise fail(what, expected, value, owner)
        links[name] = value
    spec = _organ_spec(organs)
    files = _resolve_label_maps(label_maps)
    with _progress_lines("synth_transforms.bank", progress):
        bank = ShapeBank.build(
            files, str(class_map), organs=spec, spacing=spacing, island_fraction=island_fraction, **links
        )
    bank.save(out)
    return bank


def bank_info(path=None) -> str:
    """Summary of a shape bank: organs, subjects, volumes.

    Args:
        path: bank file (default: the bank shipped with the package).
    """
    return f"{_bank(path).info()}\nfile: {DEFAULT_BANK_PATH if path is None else path}"


def show_graph(bank=None, out=None, topology=None) -> str | Path:
    """Print the topology graph, or save it as JSON (out=*.json) or draw it (out=*.png).

    Args:
        bank: shape bank file (default: the packaged bank); the graph is derived from it.
        out: None to print, a .json file to save, a .png file to draw.
        topology: a topology JSON to show instead of the derived graph (validated against the bank).

    Returns:
        The graph's description, or the path written.
    """
    if out is not None:
        out = check_output_file(out, "out", "graph")
        if out.suffix not in (".json", ".png"):
            raise fail("out", "a .json or .png file name", str(out), "graph")
    shapes = _bank(bank)
    graph = TopologyGraph.load(str(topology), shapes.organs) if topology else TopologyGraph.from_bank(shapes)
    if out is None:
        return graph.describe()
    if out.suffix == ".json":
        graph.save(out)
    else:
        from .preview import graph_image, save_png

        save_png(graph_image(graph), out)
    return out


def validate(
    n: int = 1000,
    seed: int = 0,
    patch_size=96,
    json=None,  # noqa: A002  (the flag is --json)
    bank=None,
    workers=None,
    organs=None,
    topology=None,
    placement=None,
    progress: bool = True,
    max_skip_rate=0.05,
    reference=None,
    class_map=None,
    n_real: int = 200,
    organ_classes=None,
    outside: str = "shift",
    holdout_banks: bool = False,
    primitives: bool = True,
) -> dict:
    """Plausibility report of n anatomy patches (exit status 1 if a check fails), or with --reference their realism.

    Args:
        n: number of patches.
        seed: base seed (patch i is generate's label i for the same seed and patch size).
        patch_size: patch size in voxels.
        json: also write the report to this JSON file.
        bank: shape bank file (default: the packaged bank).
        workers: worker processes (default: up to 8 when n >= 8).
        organs: comma or JSON list of organs to place (default: all).
        topology: topology JSON to place under (default: derived from the bank).
        placement: a JSON object (or .json file) of PlacementOptions fields, e.g. '{"use_topology": false}' (the
            ablation switches use_anchors and use_topology); recorded in the report's settings.
        progress: show a progress bar.
        max_skip_rate: fail when an organ is skipped in more than this fraction of the patches that reach it
            (None: report skip rates without failing).
        reference: real label maps (a glob, a folder, a comma or JSON list, as bank build's --label_maps): print the
            realism report (synth_transforms.realism) of the n patches against patches cut from these instead.
        class_map: with --reference: JSON file {"id": "class name"} naming the reference's ids.
        n_real: with --reference: real patches per reference subject.
        organ_classes: with --reference: JSON file {organ: [class names merged]} (default: the bank's merge rules).
        outside: with --reference: a real window reaching outside the field of view is shifted inside (shift) or
            padded with background (pad).
        holdout_banks: with --reference: also compare, per subject, synthesis from a bank rebuilt without it.
        primitives: with --reference: also measure the primitive-solid baseline.

    Returns:
        The report (see synth_transforms.validation.plausibility_report or synth_transforms.realism.realism_report).
    """
    owner = "validate"
    json_path = None if json is None else check_output_file(json, "json", owner)
    n = check_positive_int(n, "n", owner)
    seed = check_positive_int(seed, "seed", owner, minimum=0)
    size = as_size3(patch_size, "patch_size", owner)
    workers = _auto_workers(workers, n, owner)
    progress = check_bool(progress, "progress", owner)
    if max_skip_rate is not None:
        max_skip_rate = check_fraction(max_skip_rate, "max_skip_rate", owner)
    placement_options = _placement(placement, owner)
    realism = {
        "class_map": class_map,
        "n_real": n_real,
        "organ_classes": organ_classes,
        "outside": outside,
        "holdout_banks": holdout_banks,
        "primitives": primitives,
    }
    if reference is not None:
        for name, value in (("topology", topology), ("placement", placement)):
            if value is not None:
                raise fail(name, "left out with --reference (realism places as the bank's defaults)", value, owner)
        report = _realism(reference, n, seed, size, bank, workers, progress, _names(organs, "organs"), **realism)
        if json_path is not None:
            write_json_atomic(json_path, report)
        return report
    defaults = inspect.signature(validate).parameters
    given = [name for name, value in realism.items() if value != defaults[name].default]
    if given:
        raise fail("reference", f"label maps when {', '.join(given)} is given", reference, owner)
    kwargs = {"organs": _names(organs, "organs")} if organs is not None else {}
    if topology is not None:
        kwargs["topology"] = str(topology)
    if placement_options is not None:
        kwargs["placement_options"] = placement_options
    from .validation import plausibility_report  # imported once the arguments are known to be good

    report = plausibility_report(_bank(bank), n, seed, size, workers, progress, max_skip_rate, **kwargs)
    if json_path is not None:
        write_json_atomic(json_path, report)
    return report


def _placement(placement, owner: str) -> PlacementOptions | None:
    """``--placement`` as PlacementOptions (None when not given); an unknown field names the known ones."""
    fields = _json_object(placement, "placement", owner)
    return None if fields is None else as_options(PlacementOptions, fields, "placement", owner)


def _realism(reference, n, seed, size, bank, workers, progress, organs, **options) -> dict:
    """``validate --reference``: the options checked and the label maps found, then the realism report."""
    owner = "validate"
    if options["class_map"] is None:
        raise fail("class_map", "a JSON {id: name} file naming the --reference ids", None, owner)
    rules = _organ_spec(options["organ_classes"])
    checked = {
        "n_real": check_positive_int(options["n_real"], "n_real", owner),
        "outside": check_choice(options["outside"], "outside", ("shift", "pad"), owner),
        "holdout_banks": check_bool(options["holdout_banks"], "holdout_banks", owner),
        "primitives": check_bool(options["primitives"], "primitives", owner),
        "organ_classes": {o: [o] for o in rules} if isinstance(rules, list) else rules,
    }
    files = _resolve_label_maps(reference)
    from .realism import realism_report  # imported once the arguments are known to be good

    return realism_report(
        files,
        str(options["class_map"]),
        n=n,
        seed=seed,
        patch_size=size,
        bank=_bank(bank),
        organs=organs,
        workers=workers,
        progress=progress,
        **checked,
    )


def bench(n: int = 20, patch_size=96, mode: str = "shell", bank=None) -> dict[str, float]:
    """Median seconds per pair on one thread: RandAnatomySynthd vs RandPrimitiveSynthd.

    Args:
        n: timed pairs per transform (after one warm-up pair).
        patch_size: patch size in voxels.
        mode: rendering mode: shell, fill or mixed.
        bank: shape bank file (default: the packaged bank).

    Returns:
        {"anatomy": s, "primitives": s, "anatomy_over_primitives": ratio}.
    """
    owner = "bench"
    n = check_positive_int(n, "n", owner)
    size = as_size3(patch_size, "patch_size", owner)
    mode = check_choice(mode, "mode", RENDER_MODES, owner)
    shapes = _bank(bank)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for name, primitives in (("anatomy", False), ("primitives", True)):
            synth = make_synth(primitives, mode, size, shapes)
            synth.set_random_state(seed=0)
            synth({})  # warm-up: first-call allocations and caches
            times = []
            for i in range(n):
                synth.set_random_state(seed=sample_seed(0, 0, i))
                start = time.perf_counter()
                synth({})
                times.append(time.perf_counter() - start)
            result[name] = statistics.median(times)
    finally:
        torch.set_num_threads(threads)
    result["anatomy_over_primitives"] = result["anatomy"] / result["primitives"]
    return result


# ---------------------------------------------------------------------------------------------- printing
def _printed(command: Callable, show: Callable[[object, dict], None]) -> Callable:
    """``command`` for fire, with its signature and docstring (fire's help), its result printed by ``show``.

    ``show(result, arguments)`` gets the result and the call's arguments by name, defaults filled in.
    """
    signature = inspect.signature(command)

    @functools.wraps(command)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        show(command(*bound.args, **bound.kwargs), bound.arguments)

    return run


def _show_bank(bank: ShapeBank, args: dict) -> None:
    print(bank.info())
    print(f"saved {args['out']}")


def _show_graph(result, args: dict) -> None:
    print(result if args["out"] is None else f"graph: {result}")


def _show_report(report: dict, args: dict) -> None:
    from .realism import format_realism
    from .validation import format_report

    print(format_realism(report) if "statistics" in report else format_report(report))
    changed = _changed_placement(report.get("settings", {}).get("placement_options"))
    if changed:
        print(f"placement options changed from the defaults: {changed}")
    if args["json"] is not None:
        print(f"report: {args['json']}")
    if "statistics" in report:  # realism measures distances; it has no pass or fail
        return
    if not report["ok"]:
        failed = [k for k, c in report["checks"].items() if not c["ok"]]
        print(f"validation failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def _changed_placement(recorded: Mapping | None) -> str:
    """The recorded placement options that differ from the defaults, as ``name=value`` text ('' for none)."""
    if not recorded:
        return ""
    defaults = options_dict(PlacementOptions())
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}  # as a JSON report holds them
    changed = [(k, v) for k, v in recorded.items() if (list(v) if isinstance(v, tuple) else v) != plain.get(k)]
    return ", ".join(f"{k}={v}" for k, v in changed)


def _show_bench(result: dict, args: dict) -> None:
    size = "x".join(str(s) for s in as_size3(args["patch_size"]))
    print(f"bench: {args['n']} pairs of {size} voxels, {args['mode']} rendering, 1 thread (median s/pair)")
    print(f"  RandAnatomySynthd    {result['anatomy']:.4f}")
    print(f"  RandPrimitiveSynthd  {result['primitives']:.4f}")
    print(f"  anatomy / primitives {result['anatomy_over_primitives']:.2f}")


class _BankCommands:
    """Build or inspect a shape bank."""

    build = staticmethod(_printed(build_bank, _show_bank))
    info = staticmethod(_printed(bank_info, lambda text, args: print(text)))


class _Commands:
    """Anatomy-informed synthetic data for 3D segmentation pre-training: banks, previews, datasets, checks."""

    bank = _BankCommands()
    preview = staticmethod(_printed(write_preview, lambda path, args: print(f"preview: {path}")))
    generate = staticmethod(
        _printed(generate_dataset, lambda path, args: print(f"dataset: {path} ({args['n']} pairs)"))
    )
    graph = staticmethod(_printed(show_graph, _show_graph))
    validate = staticmethod(_printed(validate, _show_report))
    bench = staticmethod(_printed(bench, _show_bench))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; bad input prints ``error: <message>`` and exits with status 2."""
    run_fire(_Commands(), argv, name="synth-transforms")
