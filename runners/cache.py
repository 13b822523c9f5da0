"""The run's cache: attribution maps, and the logits of a model on a whole dataset.

**Maps** (:class:`AttributionCache`) are stored once per (model weights, method + configuration,
inputs): a second run with another metric on the same inputs (pixel removal and randomisation
both explain the first test images for their labels) reuses them instead of recomputing them.
**Pool logits** (:class:`PoolLogits`) are a model's logits on every image of a dataset, stored
once per (model weights, dataset images and labels): sample selections that rank a test set
(both grid localisations) classify it once per cache, not once per metric and run. A zoo entry
may ship them (:class:`ShippedLogits`, written by :func:`write_shipped_logits`): a run whose cache
lacks them reads the shipped file instead of classifying the dataset, once its sha256, its key
(the same key as the cache's: weights and dataset content) and a re-classification of a few of
its images have checked out; a file that fails a check is one line on stderr and the pass runs.

Entries are safetensors files named by the sha256 of their key and carry the sha256 of their
tensor in their metadata: a truncated or altered entry is detected, deleted and recomputed.
Hits, misses and corrupt entries are counted per object and returned as :class:`CacheStats`,
which callers add up (a Dask worker's counts come back in its task's result).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import re
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.data.imageset import BaseImageSet, tensor_digest
from attrib_bench.data.predict import INFERENCE_BATCH, max_logit_difference, predict_logits
from attrib_bench.runners.storage import Store, atomic_write

__all__ = ["AttributionCache", "CacheStats", "PoolLogits", "PoolStats", "ShippedLogits",
           "atomic_write", "cached_explainer", "model_digest", "model_identity", "pool_key",
           "tensor_digest",
           "write_shipped_logits"]

#: ``$ATTRIB_BENCH_SHIPPED_LOGITS=0``: never read a zoo entry's shipped logits (always classify).
SHIPPED_ENV_VAR = "ATTRIB_BENCH_SHIPPED_LOGITS"
#: The sidecar section that records a zoo entry's shipped logits, one entry per dataset name.
SHIPPED_SECTION = "pool_logits"
#: Images that a run classifies again when it reads shipped logits, spread over the dataset.
SPOT_CHECK_IMAGES = 16
#: Largest difference allowed between those images' logits and the shipped rows, relative to
#: max(1, the rows' largest |logit|): batch composition and CPU kernels move float32 logits by
#: about 1e-6 of that; changed forward code or weights move them by far more.
SPOT_CHECK_TOLERANCE = 1e-4


def model_digest(model: nn.Module) -> str:
    """sha256 of a model's class name and state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()


#: nn.Module's own bookkeeping in a module's ``__dict__``: parameters, buffers and submodules
#: are hashed through the state dict and the module tree, hooks by their code, the mode is
#: set by the run (eval).
_MODULE_INTERNALS = frozenset({
    "training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_compiled_call_impl"})
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _code_digest(code: types.CodeType, doc: str | None = None) -> str:
    """sha256 of a code object's bytecode, names and constants (nested code objects
    included; line numbers, comments and the docstring left out)."""
    digest = hashlib.sha256(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            digest.update(_code_digest(const).encode())
        elif not (doc is not None and const == doc):
            digest.update(_const_text(const).encode())
    return digest.hexdigest()


def _const_text(const: Any) -> str:
    """``repr`` of a code constant, with sets sorted (their order follows the string hash
    seed, which differs between processes)."""
    if isinstance(const, (frozenset, set)):
        return "{" + ",".join(sorted(map(_const_text, const))) + "}"
    if isinstance(const, tuple):
        return "(" + ",".join(map(_const_text, const)) + ")"
    return repr(const)


#: Class attributes that say nothing about what a class computes.
_CLASS_NOISE = frozenset({"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__",
                          "__firstlineno__", "__static_attributes__"})


def _class_digest(cls: type, memo: dict[type, str]) -> str:
    """sha256 of what a module class and its bases (``nn.Module`` and ``object`` aside, mixins
    listed after ``nn.Module`` included) define: the code of every function with its default
    arguments, and every other class attribute (``FLIP = False``, a scale, a table). An edited
    ``forward``, a helper it calls as a method, or a changed default is another class even
    under the same name."""
    if cls not in memo:
        digest = hashlib.sha256()
        for klass in cls.__mro__:
            if klass in (nn.Module, object):
                continue
            digest.update(f"{klass.__module__}.{klass.__qualname__}".encode())
            for name, value in sorted(vars(klass).items()):
                if name not in _CLASS_NOISE:
                    digest.update(f"{name}={_describe(value)}".encode())
        memo[cls] = digest.hexdigest()
    return memo[cls]


def _function_text(function: Any) -> str:
    """A function's code with its default arguments (``forward(self, x, flip=False)``)."""
    code = function.__code__
    defaults = (getattr(function, "__defaults__", None), getattr(function, "__kwdefaults__", None))
    return f"code:{_code_digest(code, getattr(function, '__doc__', None))}:{_describe(defaults)}"


def _describe(value: Any, depth: int = 0) -> str:
    """A text that changes when a plain attribute's value changes (no memory addresses):
    tensors and NumPy arrays by their bytes, containers item by item, functions by their code
    and defaults, other objects by their attributes (``__dict__`` and ``__slots__``), eight
    objects deep."""
    if isinstance(value, torch.Tensor):
        return f"tensor:{tensor_digest(value.detach())}"
    if isinstance(value, (str, bytes, int, float, bool, complex, type(None), torch.dtype,
                          torch.device, torch.Size, enum.Enum)):
        return repr(value)
    if type(value).__module__ == "numpy" and hasattr(value, "tobytes"):
        array = np.asarray(value)
        if array.dtype == object:
            return f"ndarray-object{array.shape}:{_describe(array.tolist(), depth + 1)}"
        data = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        return f"ndarray:{array.dtype}{array.shape}:{data}"
    if depth > 16:  # an object and its attribute dict are a level each
        return f"{type(value).__module__}.{type(value).__qualname__}:deep"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_describe(v, depth + 1) for v in value]
        if isinstance(value, (set, frozenset)):  # set order follows the string hash seed
            items.sort()
        return f"{type(value).__name__}[{','.join(items)}]"
    if isinstance(value, dict):
        return "dict{" + ",".join(f"{k!r}:{_describe(v, depth + 1)}"
                                  for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])))\
            + "}"
    function = getattr(value, "__func__", value)  # a bound, class or static method
    if isinstance(getattr(function, "__code__", None), types.CodeType):
        return _function_text(function)
    if isinstance(value, property):
        return f"property({_describe((value.fget, value.fset, value.fdel), depth + 1)})"
    if isinstance(value, functools.partial):
        return f"partial({_describe(value.func, depth + 1)},{_describe(value.args, depth + 1)}," \
               f"{_describe(value.keywords, depth + 1)})"
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, (type, nn.Module)):
        return f"{kind}:{_ADDRESS.sub('', repr(value))}"
    state = dict(vars(value)) if hasattr(value, "__dict__") else {}
    for klass in type(value).__mro__:
        for slot in ([klass.__slots__] if isinstance(getattr(klass, "__slots__", ()), str)
                     else getattr(klass, "__slots__", ())):
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                state.setdefault(slot, getattr(value, slot))
    if state:
        return f"{kind}{_describe(state, depth + 1)}"
    return f"{kind}:{_ADDRESS.sub('', repr(value))}"


def model_identity(model: nn.Module, name: str = "") -> str:
    """sha256 of everything a run can see that decides a model's output: the name it runs
    under (a registered name, or the key of ``run({"name": model})``), the weights and every
    buffer (:func:`model_digest`, plus non-persistent buffers), and for every submodule its
    path, its class (qualified name, and what it and its bases, mixins included, define: the
    bytecode of each function with its default arguments, every other class attribute), its
    plain attributes (flags, sizes, unregistered tensors, NumPy arrays by their bytes,
    functions, partials, objects by their ``__dict__`` and ``__slots__``) and its hooks.

    This keys the attribution maps and the pool logits of the run's cache, so two models that
    differ in any of these never share an entry. What it cannot see: globals or closures the
    forward reads, a monkeypatched library function, randomness in the forward; give a model
    whose output depends on such state a name that says so (``run({"m-v2": model})``).
    """
    digest = hashlib.sha256(json.dumps({"name": name, "weights": model_digest(model)}).encode())
    memo: dict[type, str] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        digest.update(f"|{path}:{_class_digest(type(module), memo)}".encode())
        for key, value in sorted(vars(module).items()):
            if key not in _MODULE_INTERNALS:
                digest.update(f"{key}={_describe(value)}".encode())
        for key in sorted(module._non_persistent_buffers_set):
            buffer = module._buffers.get(key)
            if buffer is not None:
                digest.update(f"{key}:{tensor_digest(buffer)}".encode())
        for hooks in _HOOK_DICTS:
            for hook in getattr(module, hooks, {}).values():
                digest.update(f"{hooks}:{_describe(hook)}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheStats:
    """Counts of one cache's lookups; ``a + b`` adds them (results from several workers)."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(self.hits + other.hits, self.misses + other.misses,
                          self.corrupt + other.corrupt)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TensorCache:
    """One tensor per key under ``root`` (a path, fsspec URL or :class:`Store`), checksummed.

    ``root=None`` disables it (every lookup misses and nothing is stored or counted).
    """

    def __init__(self, root: str | Path | Store | None) -> None:
        self.store = Store(root) if isinstance(root, (str, Path)) else root
        self.hits = self.misses = self.corrupt = 0

    @property
    def stats(self) -> CacheStats:
        """This object's lookups so far."""
        return CacheStats(self.hits, self.misses, self.corrupt)

    def _path(self, key: str) -> str:
        assert self.store is not None
        return self.store.path(key[:2], f"{key}.safetensors")

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor, or None if absent or corrupt (a corrupt entry is deleted)."""
        if self.store is None or not self.store.exists(self._path(key)):
            self.misses += self.store is not None
            return None
        path = self._path(key)
        try:
            data = self.store.read_bytes(path)
            maps = load(data)["maps"]
            header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
            ok = header.get("__metadata__", {}).get("sha256") == tensor_digest(maps)
        except (SafetensorError, OSError, KeyError, ValueError):
            ok = False
        if not ok:
            self.corrupt += 1
            self.misses += 1
            self.store.remove(path)
            return None
        self.hits += 1
        return maps

    def put(self, key: str, maps: torch.Tensor) -> None:
        """Store ``maps`` under ``key``, atomically (nothing when the cache is disabled)."""
        if self.store is None:
            return
        maps = maps.detach().contiguous().cpu()
        self.store.write(self._path(key), lambda tmp: _save_tensor(maps, tmp))


def _save_tensor(maps: torch.Tensor, path: Path) -> None:
    """``maps`` as a safetensors file with its digest. safetensors reports a refused write
    (a full disk, a quota) as a ``SafetensorError`` holding "os error N": it is raised as the
    ``OSError`` it is, so that the run says it in one line like any other refused write."""
    try:
        save_file({"maps": maps}, str(path), metadata={"sha256": tensor_digest(maps)})
    except SafetensorError as exc:
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


class AttributionCache(TensorCache):
    """Maps (B, H, W) stored under ``root``, keyed by :meth:`key`."""

    @staticmethod
    def key(model_hash: str, method_id: dict[str, Any], inputs: torch.Tensor,
            target: torch.Tensor) -> str:
        """The entry name: sha256 of the model hash, the method id (JSON) and the input bytes."""
        text = json.dumps({"model": model_hash, "method": method_id}, sort_keys=True, default=str)
        return hashlib.sha256((text + tensor_digest(inputs, target)).encode()).hexdigest()


def pool_key(model_hash: str, dataset_name: str, data_digest: str) -> str:
    """The pool-logits key: sha256 of a model hash (:func:`model_identity` in a run's cache,
    :func:`model_digest` in a shipped file, which the spot check backs), the dataset's name
    and its content digest (:meth:`BaseImageSet.digest`)."""
    text = json.dumps({"model": model_hash, "dataset": dataset_name, "data": data_digest})
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PoolStats(CacheStats):
    """:class:`CacheStats` of the pool logits, plus ``shipped``: passes read from a zoo entry's
    shipped logits (neither computed nor found in the cache)."""

    shipped: int = 0

    def __add__(self, other: CacheStats) -> PoolStats:
        return PoolStats(self.hits + other.hits, self.misses + other.misses,
                         self.corrupt + other.corrupt,
                         self.shipped + getattr(other, "shipped", 0))


@dataclass(frozen=True)
class ShippedLogits:
    """One zoo entry's logits on one dataset, as its sidecar records them.

    The sidecar (``NAME.json`` beside the weights) has a ``"pool_logits"`` section with one entry
    per dataset name: ``file`` (beside the sidecar), its ``sha256``, the ``model`` hash
    (:func:`model_digest` of the loaded weights, with ``weights_sha256`` the weights file's), the
    dataset's ``data`` digest and the ``key`` (:func:`pool_key` of those: what a run's cache
    would file the same logits under), plus where they came from (``source``, ``command``, ...).
    """

    sidecar: Path
    dataset: str
    file: Path
    sha256: str
    model: str
    data: str
    key: str

    @classmethod
    def in_sidecar(cls, sidecar: str | Path) -> list[ShippedLogits]:
        """The entries of ``sidecar``'s ``"pool_logits"`` section ([] when it has none)."""
        sidecar = Path(sidecar)
        section = json.loads(sidecar.read_text()).get(SHIPPED_SECTION) or {}
        return [cls(sidecar, dataset, sidecar.parent / entry["file"], entry["sha256"],
                    entry["model"], entry["data"], entry["key"])
                for dataset, entry in sorted(section.items())]

    @classmethod
    def find(cls, folders: Iterable[str | Path], model_hash: str,
             dataset_name: str) -> list[ShippedLogits]:
        """Entries in the ``*.json`` sidecars of ``folders`` for these weights on a dataset of
        this name (an entry for other weights or another dataset makes no claim: not listed)."""
        found = []
        for folder in folders:
            for sidecar in sorted(Path(folder).glob("*.json")):
                try:
                    entries = cls.in_sidecar(sidecar)
                except (ValueError, KeyError, TypeError, AttributeError, OSError):
                    continue  # not a zoo sidecar, or one without a readable section
                found += [e for e in entries
                          if e.model == model_hash and e.dataset == dataset_name]
        return found

    def read(self, key: str, shape: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
        """(logits, "") when the file matches its sha256, ``key`` and ``shape``, else
        (None, the one-line reason)."""
        if self.key != key:
            return None, (f"it was computed for other {self.dataset} images or labels (data "
                          f"digest {self.data[:12]}…, key {self.key[:12]}…; this run's key "
                          f"{key[:12]}…)")
        if not self.file.is_file():
            return None, f"{self.file} is missing"
        if sha256_file(self.file) != self.sha256:
            return None, f"its sha256 is not the one recorded in {self.sidecar.name}"
        try:
            data = self.file.read_bytes()
            logits = load(data)["logits"]
            header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
            metadata = header.get("__metadata__", {})
        except (SafetensorError, KeyError, ValueError) as exc:
            return None, f"it is not a logits file ({type(exc).__name__})"
        if metadata.get("key") != key:
            return None, f"its own key is not {self.sidecar.name}'s"
        if metadata.get("sha256") != tensor_digest(logits):
            return None, "its tensor does not match the digest in its metadata"
        if tuple(logits.shape) != tuple(shape) or logits.dtype != torch.float32:
            return None, (f"it holds {logits.dtype} {tuple(logits.shape)}, not float32 "
                          f"{tuple(shape)}")
        return logits, ""


def write_shipped_logits(sidecar: str | Path, model: nn.Module, dataset: BaseImageSet, *,
                         logits: torch.Tensor | None = None, device: str | torch.device = "cpu",
                         progress: bool = False, **provenance: Any) -> Path:
    """Ship ``model``'s logits on ``dataset`` beside a zoo entry's ``sidecar``; returns the file.

    The generator of :class:`ShippedLogits`: classifies every image (:func:`predict_logits` at
    the :data:`INFERENCE_BATCH`, as a run's pool pass does, so that the file holds the same bytes
    as a run's cache entry on this machine) unless ``logits`` are given, writes them as float32
    to ``<sidecar stem>.<dataset name>.logits.safetensors`` (metadata: key, model hash, data
    digest, tensor digest) and records the file, its sha256 and its key in the sidecar's
    ``"pool_logits"`` section under the dataset's name, with ``provenance`` (JSON values: where
    the data came from, the command) and the hardware. ``ship_pool_logits``
    does this for a zoo entry by name. Both files are written atomically.
    """
    from attrib_bench.core.provenance import describe_hardware

    sidecar = Path(sidecar)
    model_hash = model_digest(model)
    data = dataset.digest()
    key = pool_key(model_hash, dataset.name, data)
    if logits is None:
        logits = predict_logits(model, dataset, INFERENCE_BATCH, device, progress=progress)
    logits = logits.detach().float().contiguous().cpu()
    if tuple(logits.shape) != (len(dataset), dataset.num_classes):
        raise ValueError(f"logits {tuple(logits.shape)} do not fit {dataset.name} "
                         f"({len(dataset)} images, {dataset.num_classes} classes)")
    target = sidecar.with_name(f"{sidecar.stem}.{dataset.name}.logits.safetensors")
    atomic_write(target, lambda tmp: save_file(
        {"logits": logits}, str(tmp), metadata={
            "key": key, "model": model_hash, "dataset": dataset.name, "data": data,
            "sha256": tensor_digest(logits)}))
    content = json.loads(sidecar.read_text())
    content.setdefault(SHIPPED_SECTION, {})[dataset.name] = {
        "file": target.name, "sha256": sha256_file(target), "model": model_hash, "data": data,
        "key": key, "shape": list(logits.shape), "dtype": "float32", "images": len(dataset),
        "batch": INFERENCE_BATCH, "hardware": describe_hardware(torch.device(device)),
        **provenance}
    text = json.dumps(content, indent=2) + "\n"
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text))
    return target


def ship_pool_logits(name: str, data_root: str | Path | None = None,
                     device: str = "cpu", progress: bool = True) -> Path:
    """Write zoo entry ``name``'s logits on its dataset's evaluation split beside its weights, so
    that a run's grid localisation reads them instead of classifying the whole split (the
    generator of the shipped ``NAME.<dataset>.logits.safetensors``; returns its path).

    One pass of :func:`attrib_bench.data.predict.predict_logits` (as a run's pool pass), then
    :func:`attrib_bench.runners.cache.write_shipped_logits` records the file's sha256 and key
    (the weights' and the images' digests) in ``NAME.json``'s ``"pool_logits"`` section, with
    CIFAR-10's ``test_batch`` md5 where it is read from the original batches. Run it after
    changing the weights or the forward code::

        .venv/bin/python -c "from attrib_bench.runners.cache import ship_pool_logits as s; \
            s('xs-coda-sq-t1000')"
    """
    from attrib_bench.core.errors import CheckpointError
    from attrib_bench.core.registry import MODELS, create_model
    from attrib_bench.data import evaluation_split, get_dataset, resolve_data_root
    from attrib_bench.data.cifar10 import MD5

    cfg = MODELS.get(name).metadata.get("pretrained_cfg")
    if cfg is None:
        raise CheckpointError(f"{name} has no zoo weights to ship logits for")
    sidecar = cfg.path().with_suffix(".json")
    split = evaluation_split(cfg.dataset)
    dataset = get_dataset(cfg.dataset, split, root=data_root)
    source = {"split": f"{cfg.dataset} {split}"}
    batch = resolve_data_root(data_root) / "cifar-10-batches-py" / "test_batch"
    if cfg.dataset == "cifar10" and split == "test" and batch.is_file():
        source["test_batch_md5"] = MD5["test_batch"]  # the reader checked the file against it
    command = (f".venv/bin/python -c \"from attrib_bench.runners.cache import ship_pool_logits as "
               f"s; s('{name}')\"")
    return write_shipped_logits(sidecar, create_model(name, pretrained=True), dataset,
                                device=device, progress=progress, weights_sha256=cfg.sha256,
                                source=source, command=command)


def _default_shipped_folders() -> list[Path]:
    """The zoo's folders (the package's weights and ``$ATTRIB_BENCH_ZOO``); none when
    ``$ATTRIB_BENCH_SHIPPED_LOGITS`` is 0."""
    if os.environ.get(SHIPPED_ENV_VAR, "").strip() == "0":
        return []
    from attrib_bench.models.zoo import zoo_folders

    return zoo_folders()


class PoolLogits:
    """``predict(model, dataset) -> logits (N, K)``, cached in ``root`` (the run's
    ``cache/logits``), keyed by the model's :func:`model_identity` and the dataset's images
    and labels.

    ``hashes``: id(model) → the model's :func:`model_identity` the caller already has (else
    computed here, without a name); ``weights``: id(model) → its :func:`model_digest` (the
    weights alone, which a shipped file records; else computed here). A
    result is also kept in memory for this object's life (two metrics of one run share it).
    New entries wait in memory until :meth:`flush`: the runner flushes once the run folder is
    checked, and a dry run never does (it writes nothing). ``stats`` counts lookups (a miss is a
    pass computed here; ``shipped``: read from a zoo entry's file); ``seconds`` is the time those
    passes took.

    On a cache miss, the :class:`ShippedLogits` of ``shipped`` (folders of sidecars; default:
    the zoo's folders, none if ``$ATTRIB_BENCH_SHIPPED_LOGITS=0``) for the same weights and
    dataset are read instead of classifying the dataset, provided that the file's sha256, its
    key (the same as this cache's) and its shape check out, and that
    :data:`SPOT_CHECK_IMAGES` images classified again here agree with their rows (within
    :data:`SPOT_CHECK_TOLERANCE`): the selection is then the one the pass would give. A file
    that fails is one line on stderr (``refused`` keeps it) and the pass runs. Shipped logits
    are not copied into the cache.
    """

    def __init__(self, root: str | Path | Store | None, device: torch.device, *,
                 hashes: dict[int, str] | None = None, weights: dict[int, str] | None = None,
                 progress: bool = False, shipped: Iterable[str | Path] | None = None) -> None:
        self.cache = TensorCache(root)
        self.device = device
        self.hashes = dict(hashes or {})
        self.weights = dict(weights or {})
        self.progress = progress
        self.shipped = None if shipped is None else [Path(p) for p in shipped]
        self.seconds = 0.0
        self._hits = self._computed = self._shipped = 0
        #: "file: reason" for each shipped file that failed a check.
        self.refused: list[str] = []
        self._memory: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._datasets: dict[int, str] = {}

    @property
    def stats(self) -> PoolStats:
        """Hits (in memory or in the cache folder), misses (passes computed), corrupt entries,
        shipped (passes read from a zoo entry's file)."""
        return PoolStats(self._hits + self.cache.hits, self._computed, self.cache.corrupt,
                         self._shipped)

    def _parts(self, model: nn.Module, dataset: BaseImageSet) -> tuple[str, str]:
        model_hash = self.hashes.get(id(model)) or model_identity(model)
        data = self._datasets.get(id(dataset))
        if data is None:
            data = self._datasets[id(dataset)] = dataset.digest()
        return model_hash, data

    def key(self, model: nn.Module, dataset: BaseImageSet) -> str:
        """:func:`pool_key` of the model's identity (:func:`model_identity`), the dataset's name
        and its content digest (:meth:`~attrib_bench.data.imageset.BaseImageSet.digest`: images and
        labels in memory, or each file's path, size, mtime and label), computed once per
        dataset object."""
        model_hash, data = self._parts(model, dataset)
        return pool_key(model_hash, dataset.name, data)

    def shipped_key(self, model: nn.Module, dataset: BaseImageSet) -> str:
        """The key a shipped file for this model and dataset records: :func:`pool_key` of the
        weights (:func:`model_digest`; a file cannot know the name a run gives the model, so
        the spot check stands in for the rest of :func:`model_identity`) and the dataset."""
        return pool_key(self._weights(model), dataset.name, self._parts(model, dataset)[1])

    def _weights(self, model: nn.Module) -> str:
        """The model's :func:`model_digest`, computed once per model object."""
        if id(model) not in self.weights:
            self.weights[id(model)] = model_digest(model)
        return self.weights[id(model)]

    def _read_shipped(self, model: nn.Module, dataset: BaseImageSet) -> torch.Tensor | None:
        """A shipped file's logits after its checks, or None (reasons printed, kept)."""
        folders = _default_shipped_folders() if self.shipped is None else self.shipped
        key = self.shipped_key(model, dataset)
        for entry in ShippedLogits.find(folders, self._weights(model), dataset.name):
            logits, reason = entry.read(key, (len(dataset), dataset.num_classes))
            if logits is not None:
                count = min(SPOT_CHECK_IMAGES, len(dataset))
                index = torch.linspace(0, len(dataset) - 1, count).round().long().unique()
                diff = max_logit_difference(model, dataset, index, logits[index], self.device)
                scale = max(1.0, float(logits[index].abs().max()))
                if not diff <= SPOT_CHECK_TOLERANCE * scale:  # NaN fails too
                    logits, reason = None, (
                        f"{len(index)} of its images classified again differ from its rows by "
                        f"up to {diff:.3g} (> {SPOT_CHECK_TOLERANCE:g} x {scale:.3g}): the "
                        "model's forward code changed since it was written")
            if logits is not None:
                self._shipped += 1
                if self.progress:
                    print(f"{dataset.name}: logits from {entry.file.name} (sha256, key and "
                          f"{len(index)} images classified again checked)", file=sys.stderr)
                return logits
            self.refused.append(f"{entry.file}: {reason}")
            print(f"note: shipped logits {entry.file.name} not used: {reason}; classifying "
                  f"{dataset.name} instead", file=sys.stderr)
        return None

    def predict(self, model: nn.Module, dataset: BaseImageSet) -> torch.Tensor:
        """The logits (N, K) of ``model`` on every image of ``dataset``, on the CPU."""
        key = self.key(model, dataset)
        if key in self._memory:
            self._hits += 1
            return self._memory[key]
        logits = self.cache.get(key)
        if logits is None:
            logits = self._read_shipped(model, dataset)
        if logits is None:
            start = time.perf_counter()
            logits = predict_logits(model, dataset, INFERENCE_BATCH, self.device,
                                    progress=self.progress)
            self.seconds += time.perf_counter() - start
            self._computed += 1
            self._pending[key] = logits
        self._memory[key] = logits
        return logits

    def flush(self) -> None:
        """Store the logits computed since the last flush."""
        for key, logits in self._pending.items():
            self.cache.put(key, logits)
        self._pending = {}


def cached_explainer(method: Any, cache: AttributionCache, model_hash: str,
                     method_id: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor],
                                                           torch.Tensor]:
    """``explain(inputs, targets) -> maps`` that reads ``cache`` first and fills it on a miss."""

    def explain(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        key = cache.key(model_hash, method_id, inputs, target)
        maps = cache.get(key)
        if maps is None:
            maps = method.attribute(inputs, target)
            cache.put(key, maps)
        return maps.to(device=inputs.device, dtype=inputs.dtype)

    return explain
