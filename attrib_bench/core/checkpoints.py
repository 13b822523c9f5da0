"""Safe checkpoint loading: sha256 checked before any byte is deserialised, no pickle execution.

torch files load with ``weights_only=True``; safetensors files load as plain tensors. Every failure
becomes one :class:`CheckpointError` line that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attrib_bench.core.checks import model_label
from attrib_bench.core.errors import CheckpointError, ChecksumError

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
    return Path(__file__).resolve().parents[3] / "shared" / "weights"


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
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours its hints
        reason = text.splitlines()[0] if text else type(exc).__name__
        if "weights_only" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects (a whole model?), which are "
                "not loaded (they could run code): save model.state_dict() instead") from None
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


#: Prefixes that wrappers put before every key of the state dict they save:
#: ``nn.DataParallel``/``DistributedDataParallel`` (``module.``), ``torch.compile``
#: (``_orig_mod.``), a Lightning module or a wrapper such as this package's library models
#: (``model.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
#: Entries of a training checkpoint that hold the model's state dict (Lightning and the
#: akamaster ResNet files: ``state_dict``; torchvision's reference scripts: ``model``).
NESTED_KEYS = ("state_dict", "model", "model_state_dict")


def unwrap_state(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The model's tensors in a loaded checkpoint, one rule for every ``--checkpoint``.

    When the top level is not all tensors, its first :data:`NESTED_KEYS` entry that is a dict is
    taken (not in a checkpoint ``attrib-bench train`` saves to resume: ``config``, ``model``
    and ``optimizer``, which :func:`load_into` refuses naming the file to pass). Then each
    :data:`WRAPPER_PREFIXES` prefix that every key carries and none of the model's own keys
    does is removed, repeatedly (``module._orig_mod.`` too). Anything else is left for
    :func:`load_into` to match or refuse.
    """
    ours = {"config", "model", "optimizer"} <= set(state)
    if state and not ours and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in NESTED_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    own = set(model.state_dict())
    stripped = True
    while stripped and state and not own & set(state):
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in state):
                state = {k.removeprefix(prefix): v for k, v in state.items()}
                stripped = True
    return state


def _common_prefix_hint(own: Iterable[str], state: Iterable[str]) -> str:
    """", every key starts with 'net.' …" when stripping one first component of every key of
    ``state`` would give ``own``'s keys; "" otherwise."""
    firsts = {k.split(".", 1)[0] for k in state if isinstance(k, str) and "." in k}
    if len(firsts) != 1:
        return ""
    prefix = f"{firsts.pop()}."
    if all(isinstance(k, str) and k.startswith(prefix) for k in state) and set(own) <= {
            k.removeprefix(prefix) for k in state}:
        return (f"; every key of the file starts with {prefix!r} (a wrapper's attribute): "
                f"save the inner model's state dict, or strip {prefix!r} from the keys")
    return ""


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> nn.Module:
    """Load ``state`` into ``model``, as strict as ``strict=True``, with a one-line error on any
    mismatch. The state is first unwrapped (:func:`unwrap_state`: a nested ``state_dict`` entry,
    ``module.``/``_orig_mod.``/``model.`` prefixes). Tensors are cast to each parameter's dtype
    (checkpoints may be stored in float16). Keys a module knows to be optional (BatchNorm's
    ``num_batches_tracked``) may be absent.
    """
    state = unwrap_state(state, model)
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
        hint = _common_prefix_hint(own, state) or " — is it for another model or config?"
        raise CheckpointError(
            f"checkpoint {source} does not fit {model_label(model)}: {'; '.join(parts)}{hint}"
        )
    return model
