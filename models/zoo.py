"""The model zoo: every registered model name, and the pretrained weights that go with it.

A :class:`PretrainedCfg` carries what a user needs to trust a weight file: its file name and
sha256 (checked before loading), the dataset, the accuracy measured here, the published one, and
where it came from. Weight files are looked up in the weights root
(``$ATTRIB_BENCH_WEIGHTS``, else ``../shared/weights`` beside the checkout).

Weights trained here join the zoo one way only: a weights file with its JSON sidecar (``file``,
``sha256``, ``config``, ``registered_dataset`` and a ``"zoo"`` section, :func:`zoo_section`), in
``models/weights/`` (shipped with the package) or in a folder named by ``$ATTRIB_BENCH_ZOO``.
``attrib-bench train`` exports that form; :func:`register_zoo_folder` reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from attrib_bench.core.checkpoints import (
    load_into,
    read_state_dict,
    resolve_weights_root,
    sha256_file,
)
from attrib_bench.core.errors import CheckpointError
from attrib_bench.core.registry import MODELS, register_model
from attrib_bench.models.bcos_net import BCOS_CONFIGS
from attrib_bench.models.coda_net import CONFIGS, PAPER_PARAMS_M, build_coda
from attrib_bench.models.resnet_cifar import resnet56

#: Weights trained here and shipped inside the package.
BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
#: Extra zoo folders (os.pathsep-separated): every sidecar there with a "zoo" section registers.
ZOO_ENV_VAR = "ATTRIB_BENCH_ZOO"


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a model's weights come from and what they were measured to do."""

    file: str
    sha256: str
    dataset: str
    accuracy: float | None  # top-1 % on the test split, measured here
    published_accuracy: float | None
    provenance: str
    license: str
    url: str | None = None
    key: str | None = None  # nested entry holding the state dict, if any
    strip_prefix: str = ""
    bundled: bool = False  # True: the file ships inside this package, not in the weights root
    folder: str | None = None  # the file's own folder (a zoo folder from $ATTRIB_BENCH_ZOO)

    def path(self, weights_root: str | Path | None = None) -> Path:
        if self.folder is not None:
            return Path(self.folder) / self.file
        if self.bundled:
            return BUNDLED_DIR / self.file
        return resolve_weights_root(weights_root) / self.file


RESNET56_CIFAR10 = PretrainedCfg(
    file="resnet56-4bfd9763.th",
    sha256="4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
    dataset="cifar10",
    accuracy=93.39,
    published_accuracy=93.39,
    provenance="akamaster/pytorch_resnet_cifar10, pretrained_models/resnet56-4bfd9763.th "
    "(commit d1ea1080); the baseline the CoDA-Nets authors load",
    license="BSD-2-Clause (c) 2018 Yerlan Idelbayev",
    url="https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
    "resnet56-4bfd9763.th",
    key="state_dict",
    strip_prefix="module.",
)


def fetch_weights(cfg: PretrainedCfg, weights_root: str | Path | None = None) -> Path:
    """Download ``cfg.url`` into the weights root (only on explicit request) and verify it."""
    import torch.hub

    target = cfg.path(weights_root)
    if target.is_file():
        return target
    if cfg.url is None:
        raise CheckpointError(f"{cfg.file} has no download URL: copy it into {target.parent}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial_file = target.with_suffix(target.suffix + ".part")
    torch.hub.download_url_to_file(cfg.url, str(partial_file), progress=True)
    if sha256_file(partial_file) != cfg.sha256:
        partial_file.unlink()
        raise CheckpointError(f"download of {cfg.url} does not match its sha256: try again later")
    partial_file.replace(target)
    return target


def load_pretrained(model: nn.Module, cfg: PretrainedCfg, weights_root: str | Path | None = None,
                    download: bool = False) -> nn.Module:
    """Load ``cfg``'s weights into ``model`` after checking the file's sha256."""
    path = fetch_weights(cfg, weights_root) if download else cfg.path(weights_root)
    if not path.is_file():
        hint = f" or pass --download ({cfg.url})" if cfg.url else ""
        raise CheckpointError(
            f"weights {cfg.file} not found at {path}: "
            f"set ATTRIB_BENCH_WEIGHTS to their folder{hint}"
        )
    state = read_state_dict(path, cfg.sha256, key=cfg.key, strip_prefix=cfg.strip_prefix)
    return load_into(model, state, path)


def _finish(model: nn.Module, name: str, pretrained: bool, checkpoint: str | Path | None,
            cfg: PretrainedCfg | None, weights_root: str | Path | None,
            download: bool, sha256: str | None = None) -> nn.Module:
    """Load weights as asked (a user checkpoint wins over the zoo's); return the model in eval."""
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint, sha256), checkpoint)
    elif pretrained:
        if cfg is None:
            with_weights = ", ".join(n for n in MODELS.names() if MODELS.get(n).metadata.get(
                "pretrained_cfg")) or "none yet"
            data = MODELS.get(name).metadata.get("dataset", "cifar10") if name in MODELS \
                else "cifar10"
            flags = "" if data == "cifar10" else f" --dataset {data} --data-root DIR"
            raise CheckpointError(
                f"{name} has no pretrained weights (zoo entries with weights: {with_weights}): "
                f"pass --checkpoint FILE{flags}, or train one with `attrib-bench train --model "
                f"{name}{flags}`"
            )
        load_pretrained(model, cfg, weights_root, download)
    return model.eval()


@register_model("resnet56", pretrained_cfg=RESNET56_CIFAR10, family="resnet", dataset="cifar10",
                num_classes=10, image_size=32)
def _resnet56(pretrained: bool = False, checkpoint: str | Path | None = None,
              weights_root: str | Path | None = None, download: bool = False,
              sha256: str | None = None) -> nn.Module:
    """CIFAR-10 ResNet-56, option-A shortcuts; pretrained: 93.39 % (akamaster weights)."""
    return _finish(resnet56(), "resnet56", pretrained, checkpoint, RESNET56_CIFAR10,
                   weights_root, download, sha256)


def _coda_factory(size: str, pretrained: bool = False, checkpoint: str | Path | None = None,
                  weights_root: str | Path | None = None, download: bool = False,
                  sha256: str | None = None, **kwargs: Any) -> nn.Module:
    model = build_coda(size, **kwargs)
    return _finish(model, f"{size}-coda", pretrained, checkpoint, None, weights_root, download,
                   sha256)


_CODA_DESCRIPTIONS = {
    "xs": "CoDA-Net XS (ours): half width and rank of S, trainable on a 2-core CPU",
    "s": "CoDA-Net S (authors' config, CIFAR-10, 32 px)",
    "m": "CoDA-Net M (CIFAR-10; size-matched approximation of the supplement's 28 M)",
    "l": "CoDA-Net L (authors' config, ImageNet-100, 240 px, T=1e5)",
    "xl": "CoDA-Net XL (TinyImageNet 64 px; size-matched approximation of the supplement's 62 M)",
}

for _size, _config in CONFIGS.items():
    MODELS.add(
        f"{_size}-coda",
        partial(_coda_factory, _size),
        description=_CODA_DESCRIPTIONS[_size],
        family="coda",
        dataset=_config.dataset,
        num_classes=_config.num_classes,
        image_size=_config.image_size,
        temperature=_config.temperature,
        exact_config=_config.exact,
        paper_params_m=PAPER_PARAMS_M.get(_size),
    )


def _title(dataset: str) -> str:
    """A registered dataset's name as text ("cifar10" → "CIFAR-10")."""
    return {"cifar10": "CIFAR-10", "tinyimagenet": "TinyImageNet"}.get(dataset, dataset)


def _bcos_factory(architecture: str, name: str | None = None, cfg: PretrainedCfg | None = None,
                  pretrained: bool = False, checkpoint: str | Path | None = None,
                  weights_root: str | Path | None = None, download: bool = False,
                  sha256: str | None = None, **kwargs: Any) -> nn.Module:
    """A B-cos network of ``architecture`` (a key of ``BCOS_CONFIGS``), registered as ``name``
    (a trained zoo entry with weights ``cfg``) or as the architecture itself (no weights)."""
    from attrib_bench.models.bcos_net import bcos_model

    return _finish(bcos_model(architecture, **kwargs), name or architecture, pretrained,
                   checkpoint, cfg, weights_root, download, sha256)


def _register_bcos(name: str, architecture: str, cfg: PretrainedCfg | None = None) -> None:
    trained = "" if cfg is None else (
        f", trained here: {'not measured' if cfg.accuracy is None else f'{cfg.accuracy:.2f} %'} "
        f"on the {_title(cfg.dataset)} test set")
    MODELS.add(
        name,
        partial(_bcos_factory, architecture, name, cfg),
        description=f"B-cos ResNet-20 (Böhle et al. CVPR 2022 / TPAMI 2024), the bcos package's "
                    f"CIFAR-10 config {BCOS_CONFIGS[architecture]} (b=2, no max-out, uncentred "
                    f"BN without bias), RGB→6-channel encoding inside{trained}; needs "
                    "attrib-bench[bcos]",
        family="bcos", dataset="cifar10" if cfg is None else cfg.dataset, num_classes=10,
        image_size=32, architecture=architecture,
        **({} if cfg is None else {"pretrained_cfg": cfg, "trained": True}),
    )


for _name in BCOS_CONFIGS:
    _register_bcos(_name, _name)


#: CoDA-Nets trained here, by zoo name: (size, T, norm, weights), from their sidecars
#: (:func:`register_zoo_folder`); float16 storage, float32 compute.
TRAINED: dict[str, tuple[str, float, str, PretrainedCfg]] = {}


def _trained_factory(name: str, pretrained: bool = False, checkpoint: str | Path | None = None,
                     weights_root: str | Path | None = None, download: bool = False,
                     sha256: str | None = None, **kwargs: Any) -> nn.Module:
    size, temperature, norm, cfg = TRAINED[name]
    model = build_coda(size, **{"norm": norm, "temperature": temperature, **kwargs})
    return _finish(model, name, pretrained, checkpoint, cfg, weights_root, download, sha256)


def _register_trained(name: str, size: str, temperature: float, norm: str,
                      cfg: PretrainedCfg) -> None:
    TRAINED[name] = (size, temperature, norm, cfg)
    measured = "not measured" if cfg.accuracy is None else f"{cfg.accuracy:.2f} %"
    MODELS.add(name, partial(_trained_factory, name),
               description=f"{size.upper()}-CoDA-{norm.upper()}, T={temperature:g}, trained here: "
               f"{measured} on the {_title(cfg.dataset)} test set",
               family="coda", dataset=cfg.dataset, num_classes=CONFIGS[size].num_classes,
               image_size=CONFIGS[size].image_size, temperature=temperature, pretrained_cfg=cfg,
               trained=True, architecture=f"{size}-coda", norm=norm)


# --------------------------------------------------------------------- zoo entries from sidecars


def checkpoint_kwargs(name: str, checkpoint: str | Path | None) -> dict[str, Any]:
    """A CoDA-Net's ``temperature`` and ``norm`` from the sidecar (``X.json``) that
    ``attrib-bench train`` writes beside ``X.safetensors``, so that ``--checkpoint X`` builds the
    architecture the weights were trained with (T is not stored in the weights); {} otherwise.

    A sidecar that names another model than ``name``'s architecture (a B-cos checkpoint given
    with ``--model xs-coda``) is one :class:`CheckpointError` line naming the right ``--model``.
    """
    if checkpoint is None:
        return {}
    sidecar = Path(checkpoint).with_suffix(".json")
    if not sidecar.is_file():
        return {}
    config = json.loads(sidecar.read_text()).get("config", {})
    metadata = MODELS.get(name).metadata
    trained_as = config.get("model")
    if trained_as is not None and trained_as != metadata.get("architecture", name):
        raise CheckpointError(f"{checkpoint} was trained as {trained_as} (its sidecar "
                              f"{sidecar.name}), not {name}: pass --model {trained_as}")
    if metadata.get("family") != "coda":
        return {}
    return {key: config[key] for key in ("temperature", "norm") if config.get(key) is not None}


#: The licence a zoo section names when its entry says nothing else (weights trained here).
DEFAULT_LICENSE = "MIT (attrib-bench)"


def zoo_section(name: str, *, accuracy: float | None, provenance: str,
                published_accuracy: float | None = None,
                license: str = DEFAULT_LICENSE) -> dict[str, Any]:
    """The ``"zoo"`` section of a weights sidecar: the one form a trained model joins the zoo in.

    ``name`` is the model name it registers as, ``accuracy`` the stored file's test top-1 (%)
    measured here (None: not measured yet), ``published_accuracy`` the paper's figure (None:
    none), ``provenance`` how the weights were made. The rest of the sidecar (``file``,
    ``sha256``, ``config``, ``registered_dataset``) is what :func:`runners.train.export` writes.
    """
    return {"name": name, "accuracy": accuracy, "published_accuracy": published_accuracy,
            "provenance": provenance, "license": license}


def zoo_sidecar(weights: str | Path, name: str, dest_dir: str | Path, *,
                accuracy: float | None, provenance: str, published_accuracy: float | None = None,
                license: str = DEFAULT_LICENSE) -> Path:
    """Copy a trained model's safetensors and sidecar (``train``'s export) into ``dest_dir`` as
    zoo entry ``name``: ``NAME.safetensors`` and ``NAME.json`` whose ``"zoo"`` section
    (:func:`zoo_section`) is replaced by this one.

    The sha256 is checked against the sidecar before anything is written; ``accuracy`` is the
    stored file's top-1 % on the original test set (None: not measured yet). Returns the sidecar
    path. Folders in ``$ATTRIB_BENCH_ZOO`` (and the package's ``models/weights``) register every
    such sidecar as a model when the zoo is imported.
    """
    import shutil

    from attrib_bench.core.errors import ChecksumError

    weights, dest_dir = Path(weights), Path(dest_dir)
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    if sha256_file(weights) != sidecar["sha256"]:
        raise ChecksumError(f"{weights} does not match the sha256 in its sidecar: copy it again")
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{name}.safetensors"
    if weights.resolve() != target.resolve():
        shutil.copyfile(weights, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
    sidecar["file"] = target.name
    sidecar["zoo"] = zoo_section(name, accuracy=accuracy, provenance=provenance,
                                 published_accuracy=published_accuracy, license=license)
    out = target.with_suffix(".json")
    out.with_suffix(".tmp").write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(out.with_suffix(".tmp"), out)
    return out


#: The folders whose sidecars the zoo has read (the package's weights first): where a run
#: looks for shipped pool logits (:func:`zoo_folders`).
_FOLDERS: list[Path] = [BUNDLED_DIR]


def zoo_folders() -> list[Path]:
    """The package's ``models/weights`` and every folder registered since (``$ATTRIB_BENCH_ZOO``,
    :func:`register_zoo_folder`): the sidecars a run searches for shipped pool logits
    (:class:`attrib_bench.runners.cache.ShippedLogits`)."""
    return list(_FOLDERS)


@dataclass(frozen=True)
class ZooEntry:
    """One sidecar's zoo entry: the name it registers, the training config that builds the
    architecture (``config["model"]``: ``<size>-coda`` or a B-cos architecture; a CoDA-Net's
    ``temperature`` and ``norm``), and the weights' :class:`PretrainedCfg`."""

    name: str
    config: dict[str, Any]
    cfg: PretrainedCfg


def read_zoo_sidecar(path: str | Path, bundled: bool = False) -> ZooEntry | None:
    """The zoo entry of sidecar ``path`` (None: it has no ``"zoo"`` section, e.g. ``plan.json``).

    Every zoo entry, shipped or in a ``$ATTRIB_BENCH_ZOO`` folder, is read here: the weights
    file and its sha256 (checked at every load) from the sidecar's ``file`` and ``sha256``, the
    dataset from ``registered_dataset``, accuracy and provenance from the ``"zoo"`` section
    (:func:`zoo_section`). An architecture the zoo cannot build, or a sidecar without
    ``registered_dataset``, is one :class:`CheckpointError` line.
    """
    path = Path(path)
    sidecar = json.loads(path.read_text())
    zoo = sidecar.get("zoo")
    if not zoo:
        return None
    architecture = str(sidecar["config"]["model"])
    if architecture.removesuffix("-coda") not in CONFIGS and architecture not in BCOS_CONFIGS:
        raise CheckpointError(f"{path}: zoo sidecars describe CoDA-Nets or B-cos networks, "
                              f"not {architecture}")
    if not sidecar.get("registered_dataset"):
        raise CheckpointError(f"{path}: no registered_dataset (the dataset the model was "
                              "trained on, which `attrib-bench train` records): add it, "
                              'e.g. "registered_dataset": "cifar10"')
    cfg = PretrainedCfg(
        file=sidecar["file"], sha256=sidecar["sha256"], dataset=sidecar["registered_dataset"],
        accuracy=zoo.get("accuracy"), published_accuracy=zoo.get("published_accuracy"),
        provenance=zoo["provenance"], license=zoo.get("license", DEFAULT_LICENSE),
        bundled=bundled, folder=None if bundled else str(path.parent.resolve()))
    return ZooEntry(zoo["name"], sidecar["config"], cfg)


def _register_entry(entry: ZooEntry, path: Path) -> None:
    """Register ``entry`` (read from ``path``) as a model: a CoDA-Net of its size, T and norm,
    or the package's B-cos network; a name already taken is one line."""
    if entry.name in MODELS.names():
        raise CheckpointError(f"{path}: model {entry.name!r} is already registered: rename "
                              "the zoo entry or remove the folder from $ATTRIB_BENCH_ZOO")
    architecture = entry.config["model"]
    if architecture in BCOS_CONFIGS:
        _register_bcos(entry.name, architecture, entry.cfg)
    else:
        _register_trained(entry.name, architecture.removesuffix("-coda"),
                          float(entry.config["temperature"]), entry.config["norm"], entry.cfg)


def register_zoo_folder(folder: str | Path, bundled: bool = False) -> list[str]:
    """Register every ``*.json`` sidecar with a ``"zoo"`` section in ``folder``; returns names.

    The one way weights join the zoo, the package's own included (:func:`read_zoo_sidecar`):
    a CoDA-Net sidecar (config model ``<size>-coda``) becomes ``build_coda(size, norm, T)``, a
    B-cos one (config model ``bcos-resnet20``) the package's network, with the weights' sha256
    checked at load; its ``registered_dataset`` (which `attrib-bench train` records) is the
    entry's dataset. A name that is already registered, or a sidecar without
    ``registered_dataset``, is one line. The folder joins :func:`zoo_folders`.
    """
    folder = Path(folder)
    names = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        entry = read_zoo_sidecar(path, bundled)
        if entry is None:
            continue
        _register_entry(entry, path)
        names.append(entry.name)
    if folder.resolve() not in {f.resolve() for f in _FOLDERS}:
        _FOLDERS.append(folder)
    return names


register_zoo_folder(BUNDLED_DIR, bundled=True)
for _folder in filter(None, os.environ.get(ZOO_ENV_VAR, "").split(os.pathsep)):
    register_zoo_folder(_folder)
