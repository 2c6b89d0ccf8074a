"""Load pretrained SwinUNETR weights (whole network or Swin encoder only) into a network, loudly.

The files this reads (with :func:`synth_transforms.checkpoints.read_state_dict`) are the ones people actually pass
around: a bare state dict, a state dict wrapped in ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"network": ...}``
(ignite ``CheckpointSaver`` output), names with a ``module.`` prefix (DDP), encoder-only files holding the
``swinViT`` sub-module's state dict (with or without the ``swinViT.`` prefix), and the published
Swin UNETR self-supervised weights (``module.`` prefix, ``mlp.fc1`` names). Every tensor is matched by name and
shape; anything that cannot be used is either reported and skipped (the output layer when class counts differ) or
raised as an error naming the file. It never falls back to random weights silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

from .checkpoints import ENCODER_ATTRIBUTE, from_published, read_state_dict, unwrap_network

__all__ = ["load_pretrained", "TRANSFER_MODES"]

logger = logging.getLogger(__name__)

TRANSFER_MODES = ("encoder", "full")
ENCODER_PREFIX = ENCODER_ATTRIBUTE + "."
OUTPUT_PREFIX = "out."


def load_pretrained(
    network: torch.nn.Module,
    path: str | os.PathLike | None,
    transfer: str = "encoder",
    strict_shapes: bool = True,
) -> torch.nn.Module:
    """Copy pretrained tensors from ``path`` into ``network`` in place and return it.

    Args:
        network: a SwinUNETR (or a DDP / DataParallel wrapper around one).
        path: ``.pt`` file holding a state dict, possibly wrapped and prefixed (see module docstring). ``None`` or
            ``""`` keeps the current weights and logs that the network trains from scratch.
        transfer: ``"encoder"`` loads only the Swin encoder (``swinViT.*``); ``"full"`` loads every tensor whose
            shape matches, skipping the output layer (``out.*``) when the class counts differ.
        strict_shapes: raise when a tensor outside the output layer has a different shape (default). When False
            such tensors are skipped with a warning instead.

    Returns:
        ``network`` with the pretrained tensors copied in.

    Raises:
        ValueError: unknown ``transfer``; the file holds no state dict; no tensor name matches the network (e.g.
            weights of another architecture); a tensor outside the output layer has a different shape.
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file is not a readable torch file (corrupt or truncated).
    """
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"transfer must be one of {TRANSFER_MODES}, got {transfer!r}.")
    if path is None or str(path) == "":
        logger.warning("No pretrained weights given (pretrained=None): the network keeps its random initialisation.")
        return network
    path = os.fspath(path)
    model = unwrap_network(network)
    source = read_state_dict(path, "pretrained weights file")
    target = model.state_dict()
    source = _rename_to_target(source, target)

    loaded: dict[str, torch.Tensor] = {}
    skipped_out: list[str] = []
    skipped_shape: list[str] = []
    outside_scope = 0
    unexpected: list[str] = []
    for name, tensor in source.items():
        if transfer == "encoder" and not name.startswith(ENCODER_PREFIX):
            outside_scope += 1
            continue
        if name not in target:
            unexpected.append(name)
            continue
        want = tuple(target[name].shape)
        if tuple(tensor.shape) == want:
            loaded[name] = tensor
            continue
        detail = f"{name}: file {tuple(tensor.shape)} vs network {want}"
        if name.startswith(OUTPUT_PREFIX):
            skipped_out.append(detail)
        elif strict_shapes:
            raise ValueError(
                f"Pretrained file {path}: tensor {detail} differs outside the output layer. The file was made for "
                "a different SwinUNETR configuration (feature_size, in_channels, depths?); check the network "
                "arguments or pass strict_shapes=False to skip such tensors."
            )
        else:
            skipped_shape.append(detail)

    if not loaded:
        examples = ", ".join(list(source)[:3]) or "(none)"
        scope = "Swin encoder tensors ('swinViT.*')" if transfer == "encoder" else "tensors"
        raise ValueError(
            f"Pretrained file {path}: none of its {len(source)} tensors matches the network's {scope} by name and "
            f"shape (file names start like: {examples}; expected names like 'swinViT.patch_embed.proj.weight'). "
            "Are these weights of another architecture?"
        )

    scope_names = [k for k in target if transfer == "full" or k.startswith(ENCODER_PREFIX)]
    skipped_names = {d.split(":")[0] for d in skipped_out + skipped_shape}
    missing = [k for k in scope_names if k not in loaded and k not in skipped_names]
    merged = dict(target)
    merged.update({k: v.to(dtype=target[k].dtype) for k, v in loaded.items()})
    model.load_state_dict(merged)

    logger.info(
        f"Pretrained weights ({transfer} transfer) from {path}: loaded {len(loaded)} of {len(target)} network "
        f"tensors; {len(target) - len(loaded)} keep their initialisation."
    )
    if skipped_out:
        logger.info(
            f"Skipped {len(skipped_out)} output-layer tensor(s) whose shape differs (class counts differ, the "
            f"output layer is trained from scratch): {'; '.join(skipped_out)}"
        )
    if skipped_shape:
        logger.warning(f"Skipped {len(skipped_shape)} tensor(s) with a different shape: {'; '.join(skipped_shape)}")
    if outside_scope:
        logger.info(f"Ignored {outside_scope} tensor(s) of the file outside the Swin encoder (transfer='encoder').")
    if unexpected:
        logger.warning(
            f"Ignored {len(unexpected)} tensor(s) of the file that the network does not have: "
            f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
        )
    if missing:
        logger.warning(
            f"{len(missing)} network tensor(s) in the {transfer} scope were not in the file and keep their "
            f"initialisation: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return network


def _rename_to_target(source: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map file names onto the network's names: encoder-only files get the ``swinViT.`` prefix, old names renamed."""
    renamed = {from_published(k): v for k, v in source.items()}
    as_is = sum(k in target for k in renamed)
    prefixed = sum(ENCODER_PREFIX + k in target for k in renamed if not k.startswith(ENCODER_PREFIX))
    if prefixed > as_is:  # an encoder-only file: the swinViT sub-module's own state dict
        renamed = {k if k.startswith(ENCODER_PREFIX) else ENCODER_PREFIX + k: v for k, v in renamed.items()}
    return renamed
