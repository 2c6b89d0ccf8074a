"""Weight export (encoder + whole network), the release script, and the verified download of released files with
``python -m monai.bundle download_large_files`` from a local HTTP server."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from _scripts import load_script
from monai.apps.utils import HashCheckError
from monai.bundle import download_large_files as monai_download_large_files
from monai.networks.nets import SwinUNETR

from synth_transforms import checkpoints
from synth_transforms.checkpoints import from_published, read_state_dict, to_published
from synth_transforms.export import (
    encoder_state_dict,
    export_encoder,
    export_network,
    export_weights,
    read_encoder_state,
    read_network_state,
)
from synth_transforms.pretrained import load_pretrained

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "anatomy_pretrain"
SCRIPT = REPO / "scripts" / "release_weights.py"


def release_module():
    return load_script("release_weights")


def tiny_swin(out_channels: int = 4, seed: int = 0) -> SwinUNETR:
    torch.manual_seed(seed)
    return SwinUNETR(in_channels=1, out_channels=out_channels, feature_size=12)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def http_folder(tmp_path):
    """Serve a folder on 127.0.0.1 from a thread; yields ``(folder, base_url)`` and stops the server afterwards."""
    folder = tmp_path / "served"
    folder.mkdir()

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/weights"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def download_large_files(bundle: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle)]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


# ---------------------------------------------------------------------- export
def test_fp16_encoder_of_feature_size_48_is_under_16_mib_and_loads(tmp_path):
    network = SwinUNETR(in_channels=1, out_channels=22, feature_size=48)
    path = export_encoder(network, tmp_path / "model_swinvit.pt", dtype="float16")
    assert path.stat().st_size < 16 * 2**20

    target = SwinUNETR(in_channels=1, out_channels=3, feature_size=48)
    target.load_from(torch.load(path, weights_only=True))  # MONAI's loader of published Swin UNETR SSL weights
    for name, value in network.swinViT.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(target.swinViT.state_dict()[name], expected), name


def test_encoder_uses_the_published_layout():
    network = tiny_swin()
    state = encoder_state_dict(network)["state_dict"]
    assert all(name.startswith("module.") for name in state)
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in state and not any(".linear1." in n for n in state)
    assert len(state) == len(network.swinViT.state_dict())
    index = [v for n, v in state.items() if n.endswith("relative_position_index")]
    assert index and all(v.dtype == torch.int16 for v in index)
    assert len({v.data_ptr() for v in index}) == 1, "identical index buffers are stored once"


def test_encoder_from_network_or_state_dict_or_wrapper_is_the_same():
    network = tiny_swin()
    from_network = encoder_state_dict(network)["state_dict"]
    from_state = encoder_state_dict(network.state_dict())["state_dict"]
    from_wrapper = encoder_state_dict(torch.nn.DataParallel(network))["state_dict"]
    for name, value in from_network.items():
        assert torch.equal(from_state[name], value) and torch.equal(from_wrapper[name], value), name


def test_export_rejects_networks_without_a_swin_encoder(tmp_path):
    with pytest.raises(ValueError, match="swinViT"):
        export_encoder(torch.nn.Conv3d(1, 1, 3), tmp_path / "e.pt")
    with pytest.raises(ValueError, match="swinViT"):
        encoder_state_dict({"encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="dtype"):
        encoder_state_dict(tiny_swin(), dtype="int8")


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_weights(tiny_swin(), tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_read_network_state_unwraps_checkpoints(tmp_path):
    network = tiny_swin()
    plain = export_network(network, tmp_path / "model.pt")
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"network": {f"module.{k}": v for k, v in network.state_dict().items()}, "optimizer": {}}, checkpoint)
    for path in (plain, checkpoint):
        state = read_network_state(path)
        assert state.keys() == network.state_dict().keys()
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        read_network_state(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_network_state(tmp_path / "missing.pt")


def test_read_network_state_reads_what_load_pretrained_reads(tmp_path):
    """A torch.compile'd network saved by a plain training loop: release refused it before the shared reader."""
    network = tiny_swin()
    compiled_names = {f"_orig_mod.{k}": v for k, v in network.state_dict().items()}
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, "model_state_dict": compiled_names, "optimizer_state_dict": {"state": {}}}, checkpoint)
    state = read_network_state(checkpoint)
    assert state.keys() == network.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())
    # the bundle's loader takes the same file
    target = load_pretrained(tiny_swin(seed=1), checkpoint, transfer="full")
    assert torch.equal(target.swinViT.patch_embed.proj.weight, network.swinViT.patch_embed.proj.weight)
    # an encoder-only file is not a whole network: the error says how to read it
    export_encoder(network, tmp_path / "model_swinvit.pt")
    with pytest.raises(ValueError, match="model_swinvit.pt: the file holds only a Swin encoder"):
        read_network_state(tmp_path / "model_swinvit.pt")


def test_read_encoder_state_takes_the_published_layout_or_the_encoders_own_state_dict(tmp_path):
    network = tiny_swin()
    export_encoder(network, tmp_path / "published.pt")
    torch.save(network.swinViT.state_dict(), tmp_path / "submodule.pt")
    torch.save({"state_dict": {f"swinViT.{k}": v for k, v in network.swinViT.state_dict().items()}}, tmp_path / "p.pt")
    expected = {f"swinViT.{k}": v for k, v in network.swinViT.state_dict().items()}
    for name in ("published.pt", "submodule.pt", "p.pt"):
        state = read_encoder_state(tmp_path / name)
        assert state.keys() == expected.keys(), name
        assert all(torch.equal(state[k].to(v.dtype), v) for k, v in expected.items()), name


def test_release_of_a_training_checkpoint(tmp_path):
    """``--weights`` takes a CheckpointSaver file holding a DDP network and the optimiser, ``--with_network`` too."""
    release = release_module()
    network = tiny_swin()
    checkpoint = tmp_path / "checkpoint_final.pt"
    ddp_names = {f"module.{k}": v for k, v in network.state_dict().items()}
    torch.save({"network": ddp_names, "optimizer": {"state": {}, "param_groups": []}}, checkpoint)
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    result = release.release(
        weights=str(checkpoint), base_url="http://example.invalid/w", message="m", bundle=str(bundle),
        release_dir=str(tmp_path / "release"), with_network=True,
    )  # fmt: skip
    encoder, whole = (torch.load(f, weights_only=True) for f in result["files"])
    assert encoder["state_dict"].keys() == encoder_state_dict(network)["state_dict"].keys()
    assert whole.keys() == network.state_dict().keys()


def test_release_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    release = release_module()
    with pytest.raises(SystemExit) as info:
        release.main(["--weights", str(tmp_path / "missing.pt"), "--base_url", "u", "--message", "m"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: network weights {tmp_path}/missing.pt: file not found"
    ]


# ---------------------------------------------------------------------- checkpoint layout (checkpoints.py)
def test_published_names_map_both_ways():
    names = list(tiny_swin().swinViT.state_dict())
    published = [to_published(n) for n in names]
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in published
    assert all(p.startswith("module.") and ".linear" not in p for p in published)
    assert [from_published(p) for p in published] == names
    assert from_published("swin_vit.layers1.0.blocks.0.mlp.fc2.bias") == "swinViT.layers1.0.blocks.0.mlp.linear2.bias"
    assert from_published("swinViT.patch_embed.proj.weight") == "swinViT.patch_embed.proj.weight"


def test_read_state_dict_unwraps_and_fails_loudly_naming_the_file(tmp_path):
    weight = torch.ones(2)
    layouts = {
        "bare.pt": {"a.weight": weight},
        "nested.pt": {"model": {"state_dict": {"module._orig_mod.a.weight": weight}}, "epoch": 1},
        "net.pt": {"net": {"net.a.weight": weight}},
    }
    for name, content in layouts.items():
        torch.save(content, tmp_path / name)
        assert read_state_dict(tmp_path / name).keys() == {"a.weight"}, name
    with pytest.raises(FileNotFoundError, match="nowhere.pt: file not found"):
        read_state_dict(tmp_path / "nowhere.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeError, match="corrupt.pt: cannot be read: it is not a torch.save file"):
        read_state_dict(tmp_path / "corrupt.pt", "encoder weights")
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match=r"empty.pt holds no state dict.*found \['epoch', 'state_dict'\]"):
        read_state_dict(tmp_path / "empty.pt")


def test_checkpoint_layout_has_one_home_and_no_import_cycle():
    """checkpoints.py imports no package module; export and pretrained both use it, and pretrained not export."""

    def package_imports(module: str) -> set[str]:
        tree = ast.parse((REPO / "synth_transforms" / f"{module}.py").read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert package_imports("checkpoints") == set()
    assert "checkpoints" in package_imports("export") and "checkpoints" in package_imports("pretrained")
    assert "export" not in package_imports("pretrained")
    assert set(checkpoints.WRAPPER_KEYS) >= {"network", "model", "state_dict"}


# ---------------------------------------------------------------------- release script
def test_versions_and_metadata_checks(tmp_path):
    release = release_module()
    assert release.next_version("0.1.0") == "0.2.0"
    assert release.next_version("0.1.9", "patch") == "0.1.10"
    assert release.next_version("0.4.2", "major") == "1.0.0"
    assert release.next_version("0.1.0", version="0.1.1") == "0.1.1"
    with pytest.raises(ValueError, match="greater"):
        release.next_version("0.2.0", version="0.2.0")
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        release.next_version("1.0")

    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    with pytest.raises(ValueError, match="already has version 0.1.0"):
        release.update_metadata(bundle, "0.1.0", "again")
    (bundle / "large_files.yml").write_text("large_files: {name: x}\n")
    with pytest.raises(ValueError, match="must be a list"):
        release.update_large_files(bundle, [])


def test_release_then_verified_download(tmp_path, http_folder):
    served, base_url = http_folder
    run_dir = tmp_path / "run"
    network = tiny_swin()
    export_weights(network, run_dir / "models")
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models"))  # the weights come by download here
    (bundle / "large_files.yml").write_text("large_files: []\n")  # a bundle with no release yet
    version = release_module().next_version(json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"])

    command = [sys.executable, str(SCRIPT), "--run_dir", str(run_dir), "--bundle", str(bundle)]
    command += ["--base_url", base_url, "--message", "tiny test release"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]

    release_dir = run_dir / f"release-{version}"
    encoder_file = release_dir / "model_swinvit.pt"
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["version"] == version and list(metadata["changelog"].items())[0] == (version, "tiny test release")
    assert (bundle / "large_files.yml").read_text().startswith("#"), "keeps a header comment"
    entries = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert entries == [
        {
            "name": "model_swinvit.pt",
            "path": "models/model_swinvit.pt",
            "url": f"{base_url}/model_swinvit.pt",
            "hash_val": sha256(encoder_file),
            "hash_type": "sha256",
        }
    ]
    assert (release_dir / "SHA256SUMS").read_text() == f"{sha256(encoder_file)}  model_swinvit.pt\n"
    encoder = torch.load(encoder_file, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in encoder.values() if v.is_floating_point())

    # Upload, then download into a fresh copy of the bundle: the file arrives and passes its hash.
    (served / "weights").mkdir()
    shutil.copy(encoder_file, served / "weights" / encoder_file.name)
    target = bundle / "models" / "model_swinvit.pt"
    result = download_large_files(bundle)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256(target) == entries[0]["hash_val"]
    loaded = load_pretrained(tiny_swin(out_channels=2, seed=1), target, transfer="encoder")
    assert torch.equal(loaded.swinViT.patch_embed.proj.weight, network.swinViT.patch_embed.proj.weight.half().float())

    # A corrupted file on the server: the download fails loudly and leaves nothing at the target path. (The same
    # function the command above runs, called in-process to check the exception type.)
    target.unlink()
    corrupted = bytearray((served / "weights" / encoder_file.name).read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    (served / "weights" / encoder_file.name).write_bytes(bytes(corrupted))
    with pytest.raises(HashCheckError, match="sha256 hash check of downloaded file failed"):
        monai_download_large_files(bundle_path=str(bundle))
    assert not target.exists()
    assert not any((bundle / "models").glob("*model_swinvit*"))

    # A bad file already at the target path is never trusted.
    target.write_bytes(bytes(corrupted))
    with pytest.raises(HashCheckError, match="hash check of existing file failed"):
        monai_download_large_files(bundle_path=str(bundle))


def test_release_from_an_exported_encoder_matches_the_release_from_the_network(tmp_path):
    """Only the fp16 encoder comes back from a lent GPU machine: releasing it gives the same tensors."""
    release = release_module()
    network = tiny_swin()
    run_dir = tmp_path / "run"
    export_weights(network, run_dir / "models", encoder_dtype="float16")
    results = {}
    for source in ("network", "encoder"):
        bundle = tmp_path / f"bundle_{source}"
        shutil.copytree(BUNDLE, bundle)
        kwargs = {"encoder": str(run_dir / "models" / "model_swinvit.pt")} if source == "encoder" else {}
        results[source] = release.release(
            run_dir=str(run_dir), base_url="http://example.invalid/w", message="m", bundle=str(bundle),
            release_dir=str(tmp_path / f"release_{source}"), **kwargs,
        )  # fmt: skip
    from_network, from_encoder = (torch.load(r["files"][0], weights_only=True)["state_dict"] for r in results.values())
    assert from_network.keys() == from_encoder.keys()
    assert all(torch.equal(from_network[k], from_encoder[k]) for k in from_network)
    assert from_encoder["module.patch_embed.proj.weight"].dtype == torch.float16

    with pytest.raises(ValueError, match="--encoder releases the encoder alone"):
        release.release(encoder="x.pt", with_network=True, base_url="u", message="m")
    (tmp_path / "not_an_encoder.pt").parent.mkdir(exist_ok=True)
    torch.save(network.state_dict(), tmp_path / "not_an_encoder.pt")
    with pytest.raises(ValueError, match=r"not_an_encoder.pt: expected \{'state_dict'"):
        release.release(encoder=str(tmp_path / "not_an_encoder.pt"), base_url="u", message="m", bundle=str(bundle))
    with pytest.raises(FileNotFoundError, match="missing.pt: file not found"):
        release.release(encoder=str(tmp_path / "missing.pt"), base_url="u", message="m", bundle=str(bundle))


def test_released_encoders_match_their_hash_and_load_into_swin_unetr_feature_size_12(tmp_path):
    """The committed releases, the anatomy encoder (version 0.2.0) and the primitive-shape baseline's (0.3.0):
    ``large_files.yml`` lists each with its sha256 and no URL (not published yet); each loads into
    ``SwinUNETR(feature_size=12).swinViT`` with every key matched, and ``download_large_files`` accepts the files as
    they are, downloads nothing, and refuses a changed byte."""
    names = ["model_swinvit_fs12.pt", "model_swinvit_fs12_primitives.pt"]
    entries = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    assert entries == [
        {"name": name, "path": f"models/{name}", "url": "", "hash_val": sha256(BUNDLE / "models" / name),
         "hash_type": "sha256"}
        for name in names
    ]  # fmt: skip
    encoders = {}
    for name in names:
        encoder = read_encoder_state(BUNDLE / "models" / name)  # names as in the network: swinViT.*
        assert all(key.startswith("swinViT.") for key in encoder), name
        network = SwinUNETR(in_channels=1, out_channels=22, feature_size=12)
        own_names = {key.removeprefix("swinViT."): tensor for key, tensor in encoder.items()}
        network.swinViT.load_state_dict(own_names, strict=True)  # raises on any missing, unexpected or reshaped key
        assert all(torch.isfinite(tensor).all() for tensor in encoder.values()), name
        encoders[name] = encoder
    anatomy, primitives = encoders.values()
    assert not all(torch.equal(anatomy[key], primitives[key]) for key in anatomy), "two trainings, two encoders"
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert "feature_size 12 Swin encoder" in metadata["changelog"]["0.2.0"]
    assert "model_swinvit_fs12_primitives.pt" in metadata["changelog"]["0.3.0"]

    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    monai_download_large_files(bundle_path=str(bundle))  # checks the committed files, fetches nothing
    assert sorted(p.name for p in (bundle / "models").iterdir()) == names
    for name in names:
        data = bytearray((bundle / "models" / name).read_bytes())
        data[len(data) // 2] ^= 0xFF  # one changed byte
        (bundle / "models" / name).write_bytes(bytes(data))
        with pytest.raises(HashCheckError):
            monai_download_large_files(bundle_path=str(bundle))
        data[len(data) // 2] ^= 0xFF  # restored: the other file is checked next
        (bundle / "models" / name).write_bytes(bytes(data))


def test_release_into_the_bundle_commits_the_files_with_their_hash_and_no_url(tmp_path):
    """``--in_bundle``: the encoder goes to ``<bundle>/models``, its entry has the hash and an empty url, and
    ``download_large_files`` verifies the committed file (a changed byte fails) without downloading anything."""
    release = release_module()
    network = tiny_swin()
    weights = tmp_path / "model.pt"
    torch.save(network.state_dict(), weights)
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    committed = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    with pytest.raises(ValueError, match="--base_url is required unless --in_bundle"):
        release.release(weights=str(weights), message="m", bundle=str(bundle))
    with pytest.raises(ValueError, match="--encoder_name must be a file name ending in .pt, got 'sub/x.pt'"):
        release.release(weights=str(weights), message="m", bundle=str(bundle), in_bundle=True, encoder_name="sub/x.pt")
    result = release.release(weights=str(weights), message="fs12 CPU release", bundle=str(bundle), in_bundle=True)
    (encoder,) = result["files"]
    assert encoder == bundle / "models" / "model_swinvit.pt" and not (bundle / "models" / "SHA256SUMS").exists()
    *kept, entry = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert kept == committed, "a release keeps the entries of the other files"
    assert entry == {
        "name": "model_swinvit.pt", "path": "models/model_swinvit.pt", "url": "", "hash_val": sha256(encoder),
        "hash_type": "sha256",
    }  # fmt: skip
    # a named release replaces the entry of its own name only
    named = release.release(
        weights=str(weights), message="again", bundle=str(bundle), in_bundle=True, encoder_name="model_swinvit_x.pt"
    )["files"][0]
    entries = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert [e["name"] for e in entries] == [*(e["name"] for e in committed), "model_swinvit.pt", "model_swinvit_x.pt"]
    assert entries[-1]["hash_val"] == sha256(named) and named == bundle / "models" / "model_swinvit_x.pt"
    monai_download_large_files(bundle_path=str(bundle))  # the committed file passes its hash check
    data = bytearray(encoder.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one changed byte
    encoder.write_bytes(bytes(data))
    with pytest.raises(HashCheckError):
        monai_download_large_files(bundle_path=str(bundle))
