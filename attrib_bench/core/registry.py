"""One :class:`Registry` class, three instances: models, methods, metrics.

timm-style: ``@register_model("s-coda")`` on a factory, ``list_models("*coda*")`` with fnmatch
wildcards, ``create_model(name, pretrained=True)``. Unknown names raise one
:class:`UnknownNameError` line that lists the closest registered names. User code adds names
without forking through ``--plugin my_module`` or the ``attrib_bench.plugins`` entry-point group.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import fnmatch
import functools
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from attrib_bench.core.errors import (
    MethodError,
    NotApplicableError,
    PluginError,
    UnknownNameError,
)
from attrib_bench.core.hparams import check_settings

Patterns = str | Iterable[str]
#: What an unknown-name message adds about plugins ("" from Python: a script imports its own
#: plugin modules). The CLI sets it for the length of a command (:func:`plugin_hint`), since a
#: plugin's name is unknown exactly when ``--plugin MODULE`` was not given.
UNKNOWN_NAME_HINT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "attrib_bench_unknown_name_hint", default="")
#: A method's figure colour: "#rgb" or "#rrggbb".
_HEX_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}){1,2}")


@dataclass(frozen=True)
class Entry:
    """A registered factory and what the listings show about it."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Names to factories for one kind of thing ("model", "method", "metric" or "dataset").

    Besides names, a registry may resolve a **prefix** family: ``register_prefix("torchvision",
    factory)`` makes ``get("torchvision:resnet50")`` an entry whose factory is
    ``factory("resnet50", ...)`` — models by a library's own name, without registering each.
    """

    def __init__(self, kind: str, builtins: str | None = None, typed: bool = False) -> None:
        self.kind = kind
        #: check keyword arguments against the factory's type hints (methods, metrics)
        self.typed = typed
        self._entries: dict[str, Entry] = {}
        self._prefixes: dict[str, Entry] = {}
        self._builtins = builtins  # module whose import registers the built-in entries

    def _load_builtins(self) -> None:
        """Import the built-in entries on first lookup (not at import: keeps imports light)."""
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def register(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        override: bool = False,
        **metadata: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``factory`` under ``name`` (default: its ``__name__``).

        The description defaults to the first line of the factory's docstring. Registering a
        name twice is an error unless ``override=True`` (a plugin replacing a built-in on purpose).
        """

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            key = name or factory.__name__
            if key in self._entries and not override:
                raise ValueError(f"{self.kind} {key!r} is already registered; pass override=True")
            # the docstring's first paragraph on one line (its first line may end mid-sentence)
            summary = (factory.__doc__ or "").strip().split("\n\n")[0]
            text = description if description is not None else " ".join(summary.split())
            self._entries[key] = Entry(key, factory, text, dict(metadata))
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., Any], **kwargs: Any) -> None:
        """Register without decorator syntax."""
        self.register(name, **kwargs)(factory)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (e.g. a test's temporary entry); unknown names are ignored."""
        self._entries.pop(name, None)

    def names(
        self, pattern: Patterns = "*", exclude: Patterns = ()) -> list[str]:
        """Sorted names matching any fnmatch ``pattern`` and none of the ``exclude`` patterns."""
        self._load_builtins()
        include = [pattern] if isinstance(pattern, str) else list(pattern)
        excluded = [exclude] if isinstance(exclude, str) else list(exclude)
        return sorted(
            n
            for n in self._entries
            if any(fnmatch.fnmatchcase(n, p) for p in include)
            and not any(fnmatch.fnmatchcase(n, p) for p in excluded)
        )

    def register_prefix(self, prefix: str, factory: Callable[..., Any], description: str = "",
                        **metadata: Any) -> None:
        """Resolve ``"PREFIX:NAME"`` to ``factory(NAME, *args, **kwargs)`` (see the class doc).

        The entry's metadata holds ``prefix`` and ``arch`` (NAME) besides ``metadata``.
        """
        if not prefix.isidentifier():
            raise ValueError(f"{self.kind} prefix must be an identifier, got {prefix!r}")
        self._prefixes[prefix] = Entry(f"{prefix}:", factory, description, dict(metadata))

    def prefixes(self) -> dict[str, Entry]:
        """Registered prefixes → their entries (e.g. "torchvision", "timm" for models)."""
        self._load_builtins()
        return dict(self._prefixes)

    def get(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises one line listing close matches."""
        self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        prefix, colon, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
        if colon and prefix in self._prefixes:
            family = self._prefixes[prefix]
            if not rest:
                raise UnknownNameError(f"{self.kind} {name!r}: name one after the prefix, e.g. "
                                       f"{prefix}:resnet50")
            return Entry(name, functools.partial(family.factory, rest), family.description,
                         {**family.metadata, "prefix": prefix, "arch": rest})
        close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "none is close"
        families = (f"; or PREFIX:NAME with prefix {', '.join(sorted(self._prefixes))}"
                    if self._prefixes else "")
        plugin = UNKNOWN_NAME_HINT.get()
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}: {hint} "
            f"(`attrib-bench list {self.kind}s` shows all {len(self._entries)}{families})"
            + (f"; {plugin}" if plugin else ""))

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered under ``name``.

        In a typed registry, keyword arguments are first checked against the types and ranges
        of the factory's signature (:func:`attrib_bench.core.hparams.check_settings`):
        ``abs="False"`` or ``max_batch=0`` is refused in one line instead of meaning True or
        failing later.
        """
        factory = self.get(name).factory
        if self.typed:
            kwargs = check_settings(f"{self.kind} {name!r}", factory, kwargs)
        return factory(*args, **kwargs)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        if name in self._entries:
            return True
        prefix, colon, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
        return bool(colon and rest and prefix in self._prefixes)

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._entries)


def requirements(factory: Callable[..., Any]) -> tuple[str, ...]:
    """The model attributes a registered method factory needs (its class's ``requires``).

    Looks through ``functools.partial`` presets (``occ5`` is a partial of the Occlusion class).
    """
    while isinstance(factory, functools.partial):
        factory = factory.func
    return tuple(getattr(factory, "requires", ()))


#: The fix a method built directly names when it does not apply to a model; built by name, the
#: registry replaces it with the list of the methods that do apply.
LISTING_HINT = "`attrib-bench list methods` shows the methods"


class MethodRegistry(Registry):
    """Attribution methods. Besides method classes it takes a plain function
    ``f(model, inputs, target, **hparams) -> (B, H, W) or (B, C, H, W)``, which it wraps into a
    method class (:func:`attrib_bench.methods.base.function_method`); the decorator returns the
    function unchanged. A factory that builds a method object registers through :meth:`add`.

    Figures read two optional metadata keys, so a plugin's method is drawn as its author wants:
    ``label`` (the name shown in legends and axes, default the registered name) and ``colour``
    (a matplotlib colour such as ``"#123456"``, default the next spare colour), e.g.
    ``@register_method("mine", label="Mine", colour="#123456")``
    (see :func:`attrib_bench.plots.method_label` and :func:`attrib_bench.plots.method_colours`).
    """

    def register(self, name: str | None = None, **kwargs: Any
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a method class, or a plain function wrapped into one.

        Keyword arguments are the entry's description and metadata (``family``, ``label``,
        ``colour``, ...; see the class docstring).
        """
        register = super().register(name, **kwargs)

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            self._check_figure_metadata(name or factory.__name__, kwargs)
            if inspect.isfunction(factory):
                register(self._wrap_function(factory, name or factory.__name__))
            else:
                register(factory)
            return factory

        return decorator

    #: wraps a plain function into a method class; installed by the methods package
    _function_adapter: Callable[[Callable[..., Any], str], type] | None = None

    def set_function_adapter(self, adapter: Callable[[Callable[..., Any], str], type]) -> None:
        """Install ``adapter(function, name) -> method class``, which wraps a plain function.

        :mod:`attrib_bench.methods.base` installs :func:`~attrib_bench.methods.base.function_method`
        when it is imported: the registry is the foundation and imports no method module itself
        (the layers in ``pyproject.toml``), so the methods package hands it its adapter.
        """
        self._function_adapter = adapter

    def _wrap_function(self, function: Callable[..., Any], name: str) -> type:
        """``function`` wrapped into a method class by the adapter the methods package installs
        (importing the built-in methods first, which installs it)."""
        self._load_builtins()
        adapter = self._function_adapter
        if adapter is None:  # only if attrib_bench.methods failed to import
            raise RuntimeError("attrib_bench.methods.base was not imported: import "
                               "attrib_bench.methods before registering a function as a method")
        return adapter(function, name)

    def add(self, name: str, factory: Callable[..., Any], **kwargs: Any) -> None:
        """Register ``factory(model, **hparams) -> method`` as is (no function wrapping)."""
        self._check_figure_metadata(name, kwargs)
        Registry.register(self, name, **kwargs)(factory)

    def _check_figure_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        """``label`` a non-empty str no other method uses, ``colour`` a hex colour: checked when
        the method is registered, not when a figure is drawn (a bad colour would stop ``plot``
        with a matplotlib traceback; two equal labels make one legend entry ambiguous)."""
        label, colour = metadata.get("label"), metadata.get("colour")
        if label is not None:
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"method {name!r}: label must be a non-empty str, got {label!r}")
            for other, entry in self._entries.items():
                if other != name and entry.metadata.get("label") == label:
                    raise ValueError(f"method {name!r}: label {label!r} is already method "
                                     f"{other!r}'s: choose another label")
        if colour is not None and not (isinstance(colour, str)
                                       and _HEX_COLOUR.fullmatch(colour)):
            raise ValueError(f"method {name!r}: colour must be a hex colour such as '#1f77b4', "
                             f"got {str(colour)[:40]!r}")

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the method; an unknown hyper-parameter raises one :class:`MethodError` line.

        A :class:`NotApplicableError` from the method gets the registered methods that do apply
        to the model appended, so the line names the alternatives.
        """
        factory = self.get(name).factory
        try:
            inspect.signature(factory).bind(*args, **kwargs)
        except TypeError as exc:
            known = [p.name for p in inspect.signature(factory).parameters.values()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY]
            raise MethodError(f"method {name!r}: {exc}; its hyper-parameters are "
                              f"{', '.join(known) or 'none'}") from None
        try:
            return super().create(name, *args, **kwargs)
        except NotApplicableError as exc:
            model = args[0] if args else kwargs.get("model")
            if model is None:
                raise
            raise NotApplicableError(self._with_alternatives(str(exc), name, model)) from None

    def _with_alternatives(self, message: str, name: str, model: object) -> str:
        """``message`` ending with the registered methods other than ``name`` that apply to
        ``model``, instead of the generic listing hint a method built directly gives.

        Done here, not in the method class: a method built directly was not built by name, so
        it names :data:`LISTING_HINT` instead.
        """
        others = [n for n in self.applicable(model) if n != name]
        message = message.removesuffix(f"; {LISTING_HINT}")
        return f"{message}; methods that apply to it: {', '.join(others) or 'none'}"

    def applicable(self, model: object, example: Any = None) -> list[str]:
        """Registered method names that apply to ``model`` (sorted).

        A method applies when ``model`` has its required attributes and the method builds on it
        with its defaults (GradCAM refuses a model without an ``nn.Conv2d``). With ``example``
        (a (B, 3, H, W) batch in [0, 1]) each method's ``preflight`` checks also run on the first
        image, as the runner does before any work: a method that applies only to some models of
        a kind (DeepLift, which refuses a non-linearity module called twice in one forward, as in
        torchvision's ResNets) is then left out too.
        """
        names = [n for n in self.names()
                 if all(hasattr(model, attr) for attr in requirements(self.get(n).factory))]
        first = target = None
        if example is not None:
            import torch

            first = example[:1]
            target = torch.zeros(len(first), dtype=torch.long, device=first.device)
        kept = []
        for name in names:
            try:
                method = self.get(name).factory(model)
                if first is not None and callable(getattr(method, "preflight", None)):
                    method.preflight(first, target)
            except NotApplicableError:
                continue
            kept.append(name)
        return kept


MODELS = Registry("model", builtins="attrib_bench.models")
METHODS = MethodRegistry("method", builtins="attrib_bench.methods", typed=True)
METRICS = Registry("metric", builtins="attrib_bench.metrics", typed=True)
#: Datasets: ``factory(split="test", root=None, download=False, **options) -> image set``.
DATASETS = Registry("dataset", builtins="attrib_bench.data.datasets", typed=True)

register_model = MODELS.register
register_method = METHODS.register
register_metric = METRICS.register
register_dataset = DATASETS.register


def list_models(pattern: Patterns = "*", exclude: Patterns = ()) -> list[str]:
    """Registered model names matching ``pattern`` (fnmatch wildcards), e.g. ``"*coda*"``."""
    return MODELS.names(pattern, exclude)


def list_methods(pattern: Patterns = "*", exclude: Patterns = ()) -> list[str]:
    """Registered attribution-method names matching ``pattern``."""
    return METHODS.names(pattern, exclude)


def list_metrics(pattern: Patterns = "*", exclude: Patterns = ()) -> list[str]:
    """Registered metric names matching ``pattern``."""
    return METRICS.names(pattern, exclude)


def list_datasets(pattern: Patterns = "*", exclude: Patterns = ()) -> list[str]:
    """Registered dataset names matching ``pattern``."""
    return DATASETS.names(pattern, exclude)


def applicable_methods(model: object, example: Any = None) -> list[str]:
    """Registered method names that apply to ``model``: by its attributes, and with ``example``
    (a (B, 3, H, W) batch in [0, 1]) also by each method's checks on a real input
    (:meth:`MethodRegistry.applicable`)."""
    return METHODS.applicable(model, example)


def create_model(name: str, pretrained: bool | None = None, **kwargs: Any) -> Any:
    """Build the model registered as ``name``; ``pretrained=True`` loads its checked weights.

    ``pretrained=None`` (the default) follows the name: a name that stands for trained weights
    (metadata ``trained``, e.g. ``xs-coda-sq-t1000``, ``bcos-resnet20-cifar10``) loads them; an
    architecture name (``xs-coda``, ``resnet56``, ``torchvision:resnet18``) is randomly
    initialised, as in timm. ``pretrained=False`` on a trained name gives its architecture with
    random weights (what training or a randomisation baseline starts from).

    ``checkpoint=FILE`` always loads the file or raises: a factory that names a ``checkpoint``
    parameter loads it itself (the built-ins, ``torchvision:``/``timm:``); any other (a plugin's
    ``def f(pretrained=False, **kw)``) builds the architecture and the file is loaded here
    with :func:`~attrib_bench.core.checkpoints.load_into` (every key and shape must match). Raises
    :class:`~attrib_bench.core.errors.CheckpointError` when asked weights are missing or fail
    their sha256.
    """
    if pretrained is None:
        pretrained = bool(MODELS.get(name).metadata.get("trained", False))
    checkpoint = kwargs.get("checkpoint")
    if checkpoint is not None and not takes_checkpoint(MODELS.get(name).factory):
        # A factory that does not name ``checkpoint`` would drop it in its **kwargs (or end in
        # a TypeError): build the architecture, then load the file here, strictly.
        from attrib_bench.core.checkpoints import load_into, read_state_dict

        kwargs.pop("checkpoint")
        model = MODELS.create(name, pretrained=False, **kwargs)
        load_into(model, read_state_dict(checkpoint), checkpoint)
        return model.eval()
    return MODELS.create(name, pretrained=pretrained, **kwargs)


def takes_checkpoint(factory: Callable[..., Any]) -> bool:
    """Whether a model factory names a ``checkpoint`` parameter (and so loads the file itself,
    as the built-in and library factories do); ``**kwargs`` does not count."""
    try:
        parameter = inspect.signature(factory).parameters.get("checkpoint")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def create_method(name: str, model: Any, **hparams: Any) -> Any:
    """Build the attribution method ``name`` bound to ``model``."""
    return METHODS.create(name, model, **hparams)


def create_metric(name: str, **hparams: Any) -> Any:
    """Build the metric ``name``."""
    return METRICS.create(name, **hparams)


PLUGIN_GROUP = "attrib_bench.plugins"


#: Plugin modules imported by :func:`load_plugins` in this process (Dask workers import them too).
PLUGIN_MODULES: list[str] = []


def load_plugins(modules: Iterable[str] = (), entry_point_group: str = PLUGIN_GROUP, *,
                 debug: bool = False) -> list[str]:
    """Import user plugin modules and every installed entry point of the group.

    Importing a plugin runs its ``@register_*`` decorators. A plugin is a dotted module name
    (``my_methods``, ``mypkg.methods``) or the path of a ``.py`` file (``my_methods.py``,
    ``plugins/my_methods.py``), imported as the module named by its stem with its folder on
    ``sys.path`` (as ``python FILE`` would; :func:`_import_file`). The current folder is
    importable (put first on ``sys.path``, as ``python -m`` does), so ``--plugin my_module``
    finds ``./my_module.py``. A plugin that cannot be found, or raises while it is imported, is
    one :class:`PluginError` line naming it and its own error (``debug=True``: its traceback).
    Returns the names imported (a file as its absolute path, which Dask workers import too).
    """
    loaded = []
    cwd = os.getcwd()
    if modules and cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        if module.endswith(".py"):
            path = Path(module).expanduser().resolve()
            _import_plugin(module, lambda m=module, p=path: _import_file(m, p), debug)
            module = str(path)
        elif "/" in module or "\\" in module:
            raise PluginError(f"--plugin {module!r}: pass a module name (my_methods, "
                              "mypkg.methods) or the path of a .py file (plugins/my_methods.py)")
        else:
            _import_plugin(module, lambda m=module: importlib.import_module(m), debug)
        loaded.append(module)
        if module not in PLUGIN_MODULES:
            PLUGIN_MODULES.append(module)
    for ep in entry_points(group=entry_point_group):
        _import_plugin(f"{ep.value} (entry point {ep.name!r})", ep.load, debug)
        loaded.append(ep.value)
    return loaded


def _import_file(given: str, path: Path) -> None:
    """Import the plugin file ``path`` as the module named by its stem (``my_methods.py`` →
    ``my_methods``), once: a file already imported under that name (by its path or as a module
    from the current folder) is not run again, so its ``@register_*`` names are not registered
    twice. Its folder goes first on ``sys.path``, so it can import the modules beside it, and
    pickled classes (Dask) find it by name. Another module of the same name is one
    :class:`PluginError` line."""
    if not path.is_file():
        raise PluginError(f"--plugin {given!r}: no such file ({path}): pass an existing .py file "
                          "or a module name")
    name = path.stem
    known = sys.modules.get(name)
    if known is not None:
        origin = getattr(known, "__file__", None)
        if origin is not None and Path(origin).resolve() == path:
            return
        raise PluginError(f"--plugin {given!r}: a module named {name!r} is already imported "
                          f"(from {origin or 'a built-in'}): rename the file")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"--plugin {given!r}: {path} cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)  # as a failed import leaves no module behind
        raise


def plugin_hint(loaded: Iterable[str] = ()) -> str:
    """What an unknown name's message adds in the CLI (:data:`UNKNOWN_NAME_HINT`), given the
    ``--plugin`` modules ``loaded`` for this command."""
    names = [Path(m).stem if m.endswith(".py") else m for m in loaded]
    if names:
        return (f"if it is defined in another plugin module, pass that too: --plugin MODULE "
                f"(loaded: {', '.join(names)})")
    return ("if it is defined in a plugin module, pass --plugin MODULE (before the command: "
            "attrib-bench --plugin MODULE run ...)")


@contextlib.contextmanager
def unknown_name_hint(text: str) -> Iterator[None]:
    """Within the block, unknown-name messages end with ``text`` (:data:`UNKNOWN_NAME_HINT`)."""
    token = UNKNOWN_NAME_HINT.set(text)
    try:
        yield
    finally:
        UNKNOWN_NAME_HINT.reset(token)


def _import_plugin(name: str, load: Callable[[], Any], debug: bool) -> None:
    """Run ``load``; turn what it raises into one :class:`PluginError` line: a plugin that is
    not found names where it is looked for; a module the plugin itself imports that is missing
    (``import timm`` inside it) is the plugin's own error, like any other."""
    try:
        load()
    except PluginError:
        raise
    except ModuleNotFoundError as exc:
        if debug:
            raise
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise PluginError(f"cannot import plugin {name!r} ({exc}): run from the folder "
                              "that holds it, put it on PYTHONPATH, install it, or pass the "
                              "path of its .py file") from None
        text = " ".join(str(exc).split())[:200]
        raise PluginError(f"plugin {name!r} failed while it was imported: "
                          f"{type(exc).__name__}: {text} (--debug shows its traceback)") \
            from None
    except Exception as exc:  # noqa: BLE001 - a plugin's own error, reported in one line
        if debug:
            raise
        text = " ".join(str(exc).split())[:200]
        raise PluginError(f"plugin {name!r} failed while it was imported: "
                          f"{type(exc).__name__}: {text} (--debug shows its traceback)") \
            from None


# ----------------------------------------------------------------------------- method order, labels

#: Methods in the order the paper lists them, then the ones it dropped on CIFAR-10.
METHOD_ORDER: tuple[str, ...] = ("inherent", "grad", "ixg", "intgrad", "deeplift", "gradcam",
                                 "occlusion", "occ5", "occ9", "rise", "lime")


def ordered_methods(names: Iterable[str]) -> list[str]:
    """The paper's order for known methods, then any others alphabetically."""
    names = set(names)
    return [m for m in METHOD_ORDER if m in names] + sorted(names - set(METHOD_ORDER))


#: Method name → {"label", "colour"} as the run being drawn recorded them (its manifest's
#: ``display``), set by :func:`recorded_display` while figures and reports are drawn.
_RECORDED_DISPLAY: contextvars.ContextVar[Mapping[str, Mapping[str, Any]] | None] = \
    contextvars.ContextVar("attrib_bench_recorded_display", default=None)


def method_display(names: Iterable[str]) -> dict[str, Any]:
    """What a run records so that its figures look the same wherever they are drawn, with or
    without its plugins loaded: ``{"methods": {name: {"label": str, "colour": str | None,
    "control": bool}}}``, each method's registered label (else its name), colour (None: the
    next spare colour, by the figure's method order) and whether it is a control (which
    ``compare`` flags when it ranks above a real method)."""
    found = {}
    for name in ordered_methods(names):
        metadata = METHODS.get(name).metadata if name in METHODS else {}
        found[name] = {"label": metadata.get("label", name), "colour": metadata.get("colour"),
                       "control": bool(metadata.get("control", False))}
    return {"methods": found}


@contextlib.contextmanager
def recorded_display(*displays: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, method labels and colours come from ``displays`` (runs' recorded
    :func:`method_display`; the first that names a method wins), then from the registry: a
    run is drawn as it was recorded, whichever plugins are loaded now."""
    merged: dict[str, Mapping[str, Any]] = {}
    for display in displays:
        for name, entry in ((display or {}).get("methods") or {}).items():
            if isinstance(entry, Mapping):
                merged.setdefault(str(name), entry)
    token = _RECORDED_DISPLAY.set(merged)
    try:
        yield
    finally:
        _RECORDED_DISPLAY.reset(token)


def _method_metadata(name: str) -> dict[str, Any]:
    """The metadata of method ``name`` that figures read (``label``, ``colour``): the drawn
    run's record (:func:`recorded_display`) first, then the registry's; empty when neither
    knows it (results written with a plugin that is not loaded now and recorded nothing still
    plot, under their names)."""
    registered = METHODS.get(name).metadata if name in METHODS else {}
    recorded = (_RECORDED_DISPLAY.get() or {}).get(name)
    if recorded is None:
        return registered
    label, colour = recorded.get("label"), recorded.get("colour")
    shown = {**registered, "label": label if isinstance(label, str) and label else name}
    shown["colour"] = colour if isinstance(colour, str) and _HEX_COLOUR.fullmatch(colour) \
        else None
    if isinstance(recorded.get("control"), bool):
        shown["control"] = recorded["control"]
    return shown


def method_label(name: str) -> str:
    """The name figures show for method ``name``: its recorded or registered ``label``
    (:func:`_method_metadata`), else the name."""
    return _method_metadata(name).get("label") or name
