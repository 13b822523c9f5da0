"""Safe checkpoint loading: sha256 checked before any byte is deserialised, no pickle execution.

torch files load with ``weights_only=True``; safetensors files load as plain tensors. Every failure
becomes one :class:`CheckpointError` line that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from attrib_bench.errors import CheckpointError, ChecksumError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"checkpoint {path} has sha256 {actual[:16]}…, expected {expected[:16]}…: "
            "the file is corrupt or another version; restore or re-download it"
        )


def resolve_weights_root(root: str | Path | None = None) -> Path:
    """Folder of shared weight files: ``root``, else $ATTRIB_BENCH_WEIGHTS, else ../shared/weights
    beside the checkout."""
    if root is not None:
        return Path(root)
    if env := os.environ.get("ATTRIB_BENCH_WEIGHTS"):
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "weights"


def read_state_dict(path: str | Path, sha256: str | None = None,
                    key: str | None = None, strip_prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, sha256-verified first when given.

    ``key`` selects a nested dict (e.g. "state_dict"); ``strip_prefix`` removes a key prefix such
    as the ``module.`` of ``nn.DataParallel``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    if sha256 is not None:
        verify_sha256(path, sha256)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} ({reason[:120]}): it is corrupt or not a weights file"
        ) from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry: wrong file?")
        state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no state dict: wrong file?")
    if strip_prefix:
        state = {k.removeprefix(strip_prefix): v for k, v in state.items()}
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> nn.Module:
    """Load ``state`` into ``model``, as strict as ``strict=True``, with a one-line error on any
    mismatch. Tensors are cast to each parameter's dtype (checkpoints may be stored in float16).
    Keys a module knows to be optional (BatchNorm's ``num_batches_tracked``) may be absent.
    """
    own = model.state_dict()
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    cast = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    result = None if wrong else model.load_state_dict(cast, strict=False)
    missing = result.missing_keys if result else []
    unexpected = result.unexpected_keys if result else []
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of wrong shape (e.g. {wrong[0]})")
        if isinstance(state.get("model"), dict) and "optimizer" in state:
            raise CheckpointError(
                f"checkpoint {source} is a training checkpoint (model, optimizer, ...), not "
                "weights: pass the NAME.safetensors that `attrib-bench train` writes beside it "
                "when training ends")
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(model).__name__}: {'; '.join(parts)} "
            "— is it for another model or config?"
        )
    return model
