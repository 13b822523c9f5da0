"""A results store: one folder per dataset that holds a reproduction as one set of tables.

A run folder (``attrib-bench run --out DIR``) keeps every row its metrics wrote, among them each
pixel-removal curve point of each image (129 points × 2 orders × 2 stats per image and method:
nine tenths of the bytes). A store keeps what the figures and the statistics need, for every
part (model, method, metric) it holds, whichever run computed it:

- ``values.parquet``: the per-sample values. A metric whose rows are per-sample values already
  (localisation and DiFull: one row per grid cell; randomisation: per sample and layer) keeps
  its rows as the run wrote them; a metric that writes a curve per sample
  (:attr:`~attrib_bench.metrics.base.Metric.curve_key`, pixel removal) keeps each sample's
  value from :meth:`~attrib_bench.metrics.base.Metric.summarise` (its AUC), the value the run's
  summary and any paired comparison use.
- ``curves.parquet``: per (model, method, metric, variant, stat) and curve point, the mean over
  the part's samples with a seeded percentile-bootstrap 95 % band
  (:func:`~attrib_bench.metrics.base.mean_band`) and n:
  what the pixel-removal figure draws. The per-sample points themselves stay in the run folder.
- ``summary.csv``: the runs' own summary rows of the parts held.
- ``manifest.json``: ``parts`` (each part's run, n, seconds, commit, clean tree or not,
  hardware), ``superseded`` (parts a later run replaced, with what replaced them), ``runs``
  (each contributing run's manifest), the merged ``models`` and ``samples``, and the tables'
  sha256.

:func:`add_runs` (``attrib-bench store --into DIR RUN...``) adds finished run folders; a part
the store holds already is replaced by the new run's (a re-run at a larger n), never duplicated.
:func:`load_run` reads a store like a run folder (and :mod:`attrib_bench.plots` draws from
either).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrib_bench.core.errors import PlotError

#: The ``format`` key of a store's manifest (a run folder's manifest has none).
STORE_FORMAT = "attrib-bench store 1"
VALUES, CURVES, SUMMARY, MANIFEST = "values.parquet", "curves.parquet", "summary.csv", \
    "manifest.json"
PART = ["model", "method", "metric"]
RESULT_COLUMNS: tuple[str, ...] = ("model", "method", "metric", "sample", "key", "variant",
                                   "stat", "value", "flag", "metric_config")
SUMMARY_COLUMNS: tuple[str, ...] = ("model", "method", "metric", "variant", "stat", "mean",
                                    "ci_low", "ci_high", "n", "direction")
#: Columns of ``curves.parquet`` after the part and (variant, stat) columns.
CURVE_COLUMNS = ("probability", "x", "mean", "low", "high", "n")
#: What a run manifest keeps when it becomes one of the store's ``runs`` (the rest, such as the
#: cache folder or the table digests, describes the run folder, not the results).
_RUN_KEYS = ("config", "samples", "models", "git_commit", "device", "hardware", "cuda_float32",
             "versions", "executor", "wall_seconds_this_run", "seconds_per_part_all_runs",
             "skipped", "superseded", "annotations", "parts", "display", "built")
_UNCOMMITTED = "(uncommitted changes)"


def curve_key(metric: str) -> str | None:
    """The curve column of a registered metric (None: its rows are per-sample values, or the
    metric is not registered here, e.g. a plugin not loaded)."""
    from attrib_bench.core.registry import METRICS

    if metric not in METRICS:
        return None
    factory = METRICS.get(metric).factory
    return getattr(factory, "curve_key", None)


def _metric(name: str, hparams: Mapping[str, Any]) -> Any:
    from attrib_bench.core.registry import METRICS

    return METRICS.create(name, **dict(hparams))


def per_sample_values(results: pd.DataFrame, metric_hparams: Mapping[str, Mapping[str, Any]]
                      ) -> pd.DataFrame:
    """The store's rows of ``results`` (a run's tidy rows): per-sample rows as they are; a curve
    metric's rows reduced to one value per (sample, variant, stat) by its ``summarise``, with the
    part's columns and the probability its "prob" rows held (``metric_hparams``: metric name →
    the run's hyper-parameters, to build the metric)."""
    pieces = []
    for (model, method, name), rows in results.groupby(PART, sort=True):
        if curve_key(str(name)) is None:
            pieces.append(rows)
            continue
        from attrib_bench.metrics.base import ROW_COLUMNS

        per = _metric(str(name), metric_hparams.get(str(name), {})).summarise(
            rows[list(ROW_COLUMNS)])
        first = rows.iloc[0]
        prob = rows.loc[rows["stat"] == "prob", "probability"] if "probability" in rows \
            else pd.Series(dtype=object)
        kind = str(prob.iloc[0]) if len(prob) else ""
        pieces.append(per.assign(
            model=model, method=method, metric=name, key="",
            flag=np.where(np.isfinite(per["value"].to_numpy(np.float64)), "", "nonfinite"),
            probability=np.where(per["stat"].astype(str).str.startswith("prob"), kind, ""),
            **{c: first[c] for c in ("dataset", "seed", "method_config", "metric_config")
               if c in rows}))
    if not pieces:
        return results.iloc[:0]
    out = pd.concat(pieces, ignore_index=True)
    columns = [c for c in results.columns if c in out.columns and c != "removed"]
    return out[columns + [c for c in out.columns if c not in columns]]


def curve_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, metric, variant, stat) and curve point ``x`` of every curve metric in
    ``results``: the mean over samples with its bootstrap band
    (:func:`~attrib_bench.metrics.base.mean_band`, the figures' band) and n."""
    from attrib_bench.metrics.base import mean_band

    out = []
    for (model, method, name), rows in results.groupby(PART, sort=True):
        key = curve_key(str(name))
        if key is None:
            continue
        for (variant, stat), sub in rows.groupby(["variant", "stat"], sort=True):
            table = sub.pivot(index="sample", columns=key, values="value").sort_index(axis=1)
            mean, low, high = mean_band(table.to_numpy(np.float64))
            kind = sub["probability"].iloc[0] if "probability" in sub else ""
            out.append(pd.DataFrame({
                "model": model, "method": method, "metric": name, "variant": variant,
                "stat": stat, "probability": kind, "x": table.columns.to_numpy(np.int64),
                "mean": mean, "low": low, "high": high, "n": len(table)}))
    if not out:
        return pd.DataFrame(columns=[*PART, "variant", "stat", *CURVE_COLUMNS])
    return pd.concat(out, ignore_index=True)


def is_store(path: str | Path) -> bool:
    """Whether ``path`` holds a store (its manifest names :data:`STORE_FORMAT`)."""
    manifest = Path(path) / MANIFEST
    if not (Path(path) / VALUES).is_file() or not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == STORE_FORMAT
    except ValueError:
        return False


@dataclass
class Store:
    """A store's tables in memory (see the module docstring)."""

    values: pd.DataFrame
    curves: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


def empty_store(dataset: str) -> Store:
    """A store of ``dataset`` holding nothing yet."""
    return Store(pd.DataFrame(columns=[*PART, "sample", "key", "variant", "stat", "value"]),
                 curve_table(pd.DataFrame(columns=PART)), pd.DataFrame(columns=PART),
                 {"format": STORE_FORMAT, "dataset": dataset, "parts": [], "superseded": [],
                  "runs": {}, "models": {}, "samples": {}, "config": {"metrics": []},
                  "display": {"methods": {}}})


def read_store(path: str | Path) -> Store:
    """The store in ``path``, its tables checked against the manifest's sha256.

    Raises :class:`~attrib_bench.core.errors.PlotError` (one line) for a folder that is not a store
    or a table that changed after the store was written.
    """
    from attrib_bench.core.checkpoints import sha256_file

    path = Path(path)
    if not is_store(path):
        raise PlotError(f"{path} is not a results store: make one with attrib-bench store "
                        f"--into {path} RUN_FOLDER")
    manifest = json.loads((path / MANIFEST).read_text())
    for name, digest in manifest.get("tables_sha256", {}).items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise PlotError(f"{path / name} is missing or changed after the store was written "
                            "(its sha256 is not the manifest's): restore it with git checkout, "
                            "or rebuild the store with attrib-bench store")
    summary = pd.read_csv(path / SUMMARY, keep_default_na=False, na_values=[""],
                          dtype={"variant": str})
    summary["variant"] = summary["variant"].fillna("").astype(str)
    return Store(_read_parquet(path / VALUES), _read_parquet(path / CURVES), summary, manifest)


def _read_parquet(table: Path) -> pd.DataFrame:
    """A table with its text columns as plain Python strings (object dtype): pandas' Arrow
    strings copy the text through ``pyarrow.compute.take`` on every boolean selection (≈ 10 ×
    the object-dtype copy); the columns hold few distinct values, so reading them
    dictionary-encoded and expanding the small dictionaries is also the faster load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(table)
    text = [f.name for f in schema if pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)]
    frame = pq.read_table(table, read_dictionary=text).to_pandas()
    return frame.astype({name: object for name in text})


def _part_keys(frame: pd.DataFrame) -> set[tuple[str, str, str]]:
    if frame.empty:
        return set()
    return {tuple(map(str, k)) for k in frame[PART].drop_duplicates().itertuples(index=False)}


def _drop_parts(frame: pd.DataFrame, parts: set[tuple[str, str, str]]) -> pd.DataFrame:
    if frame.empty or not parts:
        return frame
    keys = pd.MultiIndex.from_frame(frame[PART].astype(str))
    return frame[~keys.isin(list(parts))].reset_index(drop=True)


def clean_tree(commit: str | None) -> bool | None:
    """Whether a manifest's ``git_commit`` says the run's code was committed (None: unknown)."""
    if not commit:
        return None
    return not str(commit).endswith(_UNCOMMITTED)


def last_call(manifest: Mapping[str, Any]) -> str:
    """Where a run's last call ran, as a chunk records it ("cpu x2": torch threads; the device
    for another), read from the manifest's ``hardware``."""
    hardware = str(manifest.get("hardware", ""))
    threads = re.search(r"(\d+) torch threads", hardware)
    device = re.search(r"device (\S+)", hardware)
    return (f"cpu x{int(threads.group(1)) if threads else 1}"
            if not device or device.group(1) == "cpu" else device.group(1))


def _part_record(run: str, manifest: Mapping[str, Any], part: tuple[str, str, str],
                 n: int) -> dict[str, Any]:
    """A part's provenance: its run, n, seconds summed over every call that computed it and
    where they ran (``seconds_by_compute``; chunks that recorded no place count as the run's
    last call), the method as built, the commit and whether the tree was clean."""
    model, method, metric = part

    def find(key: str) -> dict[str, Any]:
        return next((p for p in manifest.get(key, [])
                     if (p.get("model"), p.get("method"), p.get("metric")) == part), {})

    timing, built = find("seconds_per_part_all_runs"), find("parts")
    where: dict[str, float] = {}
    if "seconds" in timing:
        for label, seconds in (timing.get("seconds_by_compute")
                               or {"unknown": timing["seconds"]}).items():
            label = last_call(manifest) if label == "unknown" else label
            where[label] = where.get(label, 0.0) + float(seconds)
    commit = manifest.get("git_commit")
    return {"model": model, "method": method, "metric": metric, "run": run, "n": n,
            "seconds": timing.get("seconds"), "seconds_by_compute": where,
            "built": built.get("built"), "rows_taken_from": built.get("rows_taken_from"),
            "git_commit": str(commit).split(" ")[0] if commit else None,
            "clean_tree": clean_tree(commit), "hardware": manifest.get("hardware")}


def _run_name(store: Store, folder: Path, manifest: Mapping[str, Any]) -> str:
    """The run's name in the store: its folder's name, made unique."""
    name, k = folder.name, 2
    while name in store.manifest["runs"]:
        if store.manifest["runs"][name].get("git_commit") == manifest.get("git_commit") and \
                store.manifest["runs"][name].get("config") == manifest.get("config"):
            return name  # the same run added again
        name, k = f"{folder.name}-{k}", k + 1
    return name


def add_run(store: Store, folder: str | Path) -> list[tuple[str, str, str]]:
    """Add the finished run in ``folder`` to ``store`` (in memory); returns the parts it held.

    Each of the run's parts (model, method, metric) replaces the store's part of the same name,
    which moves to ``superseded`` with the replacing run's name. Raises
    :class:`~attrib_bench.core.errors.PlotError` for a run of another dataset or an unfinished run.
    """

    folder = Path(folder)
    if is_store(folder):
        raise PlotError(f"{folder} is a store, not a run folder: add run folders")
    tables = load_run(folder)
    manifest = tables.manifest
    config = manifest.get("config", {})
    dataset = config.get("dataset")
    if dataset != store.manifest["dataset"]:
        raise PlotError(f"{folder} holds a run on {dataset!r}, the store holds "
                        f"{store.manifest['dataset']!r}: one store per dataset, pass another "
                        "--into")
    name = _run_name(store, folder, manifest)
    values = per_sample_values(tables.results, config.get("metric_hparams", {}))
    parts = sorted(_part_keys(values))
    taken = set(parts)
    old = {(p["model"], p["method"], p["metric"]): p for p in store.manifest["parts"]}
    for part in parts:
        if part in old:
            store.manifest["superseded"].append({**old[part], "superseded_by": name})
    store.manifest["parts"] = [p for key, p in old.items() if key not in taken]
    store.values = _concat(_drop_parts(store.values, taken), values)
    store.curves = _concat(_drop_parts(store.curves, taken), tables.curves)
    store.summary = _concat(_drop_parts(store.summary, taken), tables.summary)
    counts = values.groupby(PART)["sample"].nunique()
    for part in parts:
        store.manifest["parts"].append(_part_record(name, manifest, part, int(counts[part])))
    store.manifest["runs"][name] = {k: manifest[k] for k in _RUN_KEYS if k in manifest}
    store.manifest["models"].update(manifest.get("models", {}))
    # the methods' labels and colours as the run drew them (a later run's record replaces an
    # earlier one's), so the store draws them so without the run's plugins
    shown = store.manifest.setdefault("display", {}).setdefault("methods", {})
    shown.update((manifest.get("display") or {}).get("methods") or {})
    held = {(p["model"], p["metric"]) for p in store.manifest["parts"]
            if p["run"] == name}
    store.manifest["samples"].update({key: info for key, info in
                                      manifest.get("samples", {}).items()
                                      if tuple(key.rsplit("/", 1)) in held})
    for metric in config.get("metrics", []):
        if metric not in store.manifest["config"]["metrics"]:
            store.manifest["config"]["metrics"].append(metric)
    return parts


def _concat(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    if old.empty:
        return new.reset_index(drop=True)
    if new.empty:
        return old
    return pd.concat([old, new], ignore_index=True)


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    keys = [k for k in keys if k in frame.columns]
    return frame.sort_values(keys, kind="stable", ignore_index=True) if keys else frame


def write_store(store: Store, path: str | Path) -> Path:
    """Write ``store`` to the folder ``path`` (atomically per file; the manifest last, with the
    tables' sha256); returns the folder."""
    from attrib_bench.core.checkpoints import sha256_file
    from attrib_bench.runners.storage import atomic_write

    written_with = _code_version()  # before this writes into what may be a tracked folder
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    values = _sorted(store.values, [*PART, "variant", "stat", "sample", "key"])
    curves = _sorted(store.curves, [*PART, "variant", "stat", "x"])
    summary = _sorted(store.summary, [*PART, "variant", "stat"])
    for name, frame in ((VALUES, values), (CURVES, curves)):
        atomic_write(path / name, lambda tmp, f=frame: _write_parquet(f, tmp))
    atomic_write(path / SUMMARY, lambda tmp: summary.to_csv(tmp, index=False))
    manifest = dict(store.manifest)
    manifest["parts"] = sorted(manifest["parts"], key=lambda p: (p["model"], p["method"],
                                                                 p["metric"]))
    manifest["written_with"] = written_with
    manifest["tables_sha256"] = {name: sha256_file(path / name)
                                 for name in (VALUES, CURVES, SUMMARY)}
    text = json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n"
    atomic_write(path / MANIFEST, lambda tmp: tmp.write_text(text))
    return path


def _code_version() -> dict[str, Any]:
    """The commit of the code that wrote the store, and whether its tree was clean."""
    from attrib_bench.core.provenance import git_commit

    commit = git_commit()
    return {"git_commit": commit.split(" ")[0] if commit else None,
            "clean_tree": clean_tree(commit)}


def _write_parquet(frame: pd.DataFrame, target: Path) -> None:
    """zstd with dictionaries for the repeated text, byte-stream-split for the floats."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    pq.write_table(table, target, compression="zstd", compression_level=19,
                   use_dictionary=[f.name for f in table.schema if f.name not in floats],
                   column_encoding=dict.fromkeys(floats, "BYTE_STREAM_SPLIT"))


def add_runs(into: str | Path, folders: Iterable[str | Path], dataset: str | None = None
             ) -> list[tuple[str, str, str]]:
    """Add run ``folders`` (in order: a later run's part replaces an earlier one's) to the store
    in ``into`` (made if missing, for the runs' dataset or ``dataset``); returns the parts
    added. Nothing is written unless every folder is read and added."""

    into = Path(into)
    folders = [Path(f) for f in folders]
    if not folders:
        raise PlotError("no run folder given: attrib-bench store --into DIR RUN [RUN ...]")
    if is_store(into):
        store = read_store(into)
    elif into.exists() and any(into.iterdir()):
        raise PlotError(f"{into} exists and is not a results store: pass an empty or new "
                        "folder to --into")
    else:
        first = dataset or load_run(folders[0]).manifest.get("config", {}).get("dataset")
        store = empty_store(str(first))
    added = [part for folder in folders for part in add_run(store, folder)]
    write_store(store, into)
    return added


# ------------------------------------------------------------ reading run folders and stores


@dataclass
class RunTables:
    """A finished run's (or a store's) tables: ``results`` (tidy rows; a store's per-sample
    values), ``summary``, the ``manifest`` and ``curves`` (:func:`attrib_bench.store.curve_table`:
    the mean curves with their bands that the pixel-removal figure draws)."""

    path: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Each run folder's own manifest (folder → manifest), for per-run provenance and samples.
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: pd.DataFrame | None = None

    def temperatures(self) -> dict[str, float]:
        """Model name → T for the models that have one (CoDA-Nets), from the manifest."""
        return model_temperatures(self.manifest, self.results["model"].unique())

    def drawn_as_recorded(self) -> contextlib.AbstractContextManager[None]:
        """A context in which method labels and colours are those the runs recorded (their
        manifests' ``display``), then the registry's
        (:func:`attrib_bench.core.registry.recorded_display`): a run is drawn the same wherever
        it is opened, with or without ``--plugin``."""
        from attrib_bench.core.registry import recorded_display

        return recorded_display(self.manifest.get("display"),
                                *(m.get("display") for m in self.manifests.values()))


def model_temperatures(manifest: Mapping[str, Any] | None, names: Iterable[str]
                       ) -> dict[str, float]:
    """Model name → T for those of ``names`` whose manifest entry records a ``temperature``.

    The manifest is the one source: the runner records T for every model that has one, so
    figures need neither the model zoo nor a T parsed from a model's name.
    """
    info = (manifest or {}).get("models", {})
    found = {name: info.get(name, {}).get("temperature") for name in names}
    return {name: float(value) for name, value in found.items() if value is not None}


def load_run(path: str | Path) -> RunTables:
    """Read ``results.parquet``, ``summary.csv`` and ``manifest.json`` from a run folder, or a
    results store's tables (:mod:`attrib_bench.store`; ``manifests``: its runs').

    Raises :class:`PlotError` (one line, naming the fix) for a missing folder, an unfinished run,
    an empty summary, tables written by an older attrib-bench (missing columns or no
    ``tables_sha256`` in the manifest), or a table whose sha256 is not the one the run recorded
    in its manifest.
    """
    path = Path(path)
    if is_store(path):
        held = read_store(path)
        return RunTables(path, held.values, held.summary, held.manifest,
                         dict(held.manifest.get("runs", {})), held.curves)
    if not path.is_dir():
        raise PlotError(f"no results folder {path}: write one with attrib-bench run --out {path}")
    table = path / "results.parquet"
    if not table.is_file():
        hint = ("the run did not finish: re-run the same attrib-bench run command to resume"
                if (path / "parts").is_dir() else
                f"write one with attrib-bench run --out {path}")
        raise PlotError(f"no results.parquet in {path}: {hint}")
    try:
        results = _read_parquet(table)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise PlotError(f"{table} cannot be read ({type(exc).__name__}): re-run attrib-bench "
                        "run with --overwrite") from None
    _require_columns(results, RESULT_COLUMNS, table)
    summary_file = path / "summary.csv"
    if not summary_file.is_file():
        raise PlotError(f"no summary.csv in {path}: re-run the same attrib-bench run command "
                        "(it rewrites the tables from the finished chunks)")
    try:
        summary = pd.read_csv(summary_file, keep_default_na=False, na_values=[""],
                              dtype={"variant": str})
    except pd.errors.EmptyDataError:
        raise PlotError(f"{summary_file} is empty (the run has no rows left): leave {path} out "
                        "of --results, or re-run the same attrib-bench run command") from None
    summary["variant"] = summary["variant"].fillna("").astype(str)
    _require_columns(summary, SUMMARY_COLUMNS, summary_file)
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    if not manifest.get("tables_sha256"):
        raise PlotError(f"{path} has no manifest with the tables' sha256 (written by an older "
                        "attrib-bench, or not a run folder): re-run attrib-bench run")
    _check_tables(path, manifest["tables_sha256"])
    return RunTables(path, results, summary, manifest, curves=curve_table(results))


def _check_tables(path: Path, digests: Mapping[str, str]) -> None:
    """One :class:`PlotError` line for a results or summary table that differs from what the
    run wrote (its sha256 in the manifest)."""
    from attrib_bench.core.checkpoints import sha256_file

    for name in ("results.parquet", "results.csv", "summary.csv"):
        # results.csv is the parquet's readable copy: a committed run may leave it out
        if (name in digests and (path / name).is_file()
                and sha256_file(path / name) != digests[name]):
            raise PlotError(f"{path / name} changed after the run wrote it (its sha256 is not "
                            "the manifest's): re-run the same attrib-bench run command, which "
                            "rewrites the tables from the verified chunks")


def run_folders(path: str | Path) -> list[Path]:
    """``path`` itself if it holds a run, else its sub-folders that do (sorted), else [path]
    (so that :func:`load_run` names what is missing)."""
    path = Path(path)
    if (path / "results.parquet").is_file() or not path.is_dir():
        return [path]
    found = sorted(p.parent for p in path.glob("*/results.parquet"))
    return found or [path]


def load_runs(paths: str | Path | Iterable[str | Path]) -> RunTables:
    """One or more run folders (or parents of run folders) as one :class:`RunTables`.

    Runs may split a sweep by cost (e.g. gradient methods at the paper's n, perturbation methods
    at a smaller n); a (model, method, metric) found in two runs is an error, and so are runs
    whose rows cannot be compared (:func:`check_comparable`: another dataset, other weights
    under one model name, other settings of one metric). The merged tables keep the first path
    as their ``path`` (the default figure folder).
    """
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not given:
        raise PlotError("no results folder given: pass --results DIR")
    tables = [load_run(folder) for path in given for folder in run_folders(path)]
    if len(tables) == 1:
        only = tables[0]
        return RunTables(Path(given[0]), only.results, only.summary,
                         {**only.manifest, "runs": [str(only.path)]},
                         only.manifests or {str(only.path): only.manifest}, only.curves)
    check_comparable(tables, given)
    keys = pd.concat([t.results[["model", "method", "metric"]].drop_duplicates().assign(
        run=str(t.path)) for t in tables])
    clash = keys[keys.duplicated(["model", "method", "metric"], keep=False)]
    if not clash.empty:
        row = clash.iloc[0]
        raise PlotError(f"({row['model']}, {row['method']}, {row['metric']}) is in more than "
                        f"one run ({', '.join(sorted(set(clash['run'])))}): plot them separately")
    manifest: dict[str, Any] = {"runs": [str(t.path) for t in tables], "models": {},
                                "samples": {}, "config": {"metrics": []},
                                "display": {"methods": {}}}
    for t in tables:
        manifest["models"].update(t.manifest.get("models", {}))
        manifest["samples"].update(t.manifest.get("samples", {}))
        for name, shown in ((t.manifest.get("display") or {}).get("methods") or {}).items():
            manifest["display"]["methods"].setdefault(name, shown)
        for metric in t.manifest.get("config", {}).get("metrics", []):
            if metric not in manifest["config"]["metrics"]:
                manifest["config"]["metrics"].append(metric)
        for key in ("hardware", "git_commit", "versions"):
            manifest.setdefault(key, t.manifest.get(key))
    manifests: dict[str, dict[str, Any]] = {}
    for t in tables:
        manifests.update(t.manifests or {str(t.path): t.manifest})
    curves = [t.curves for t in tables if t.curves is not None and not t.curves.empty]
    return RunTables(Path(given[0]), pd.concat([t.results for t in tables], ignore_index=True),
                     pd.concat([t.summary for t in tables], ignore_index=True), manifest,
                     manifests, pd.concat(curves, ignore_index=True) if curves else None)


#: Metric settings that do not change a value (how work is batched), left out of
#: :func:`check_comparable`'s comparison, as is each metric's sample count.
_EXECUTION_SETTINGS = frozenset({"max_batch"})


def _sample_count_key(metric: str) -> str | None:
    """The setting that holds ``metric``'s sample count (None if unknown here)."""
    from attrib_bench.core.registry import METRICS

    return getattr(METRICS.get(metric).factory, "sample_count", None) \
        if metric in METRICS else None


def _runs_of(table: RunTables) -> dict[str, dict[str, Any]]:
    """Each run a table holds (folder or store run name → its manifest)."""
    return table.manifests or {str(table.path): table.manifest}


def _dataset_identity(manifest: Mapping[str, Any]) -> str | None:
    """"cifar10 test" (with its options, if any) of a run, None if it recorded none."""
    config = manifest.get("config", {})
    name = config.get("dataset") or manifest.get("dataset")
    if not name:
        return None
    options = config.get("dataset_options") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return " ".join(str(x) for x in (name, config.get("split") or "") if x) + \
        (f" ({shown})" if shown else "")


def _short(path: str, parents: list[Path]) -> str:
    """A run's folder as the user gave it: relative to the --results folder that held it."""
    for parent in parents:
        try:
            return str(Path(path).relative_to(parent)) if Path(path) != parent else str(path)
        except ValueError:
            continue
    return str(path)


def check_comparable(tables: list[RunTables], given: list[str | Path]) -> None:
    """One :class:`PlotError` line unless the runs of ``tables`` (found under ``given``) can be
    drawn and compared together: the same dataset (name, split, options), the same weights
    under each model name (the manifest's ``models[].sha256``), and the same settings of each
    metric they share apart from its sample count and execution settings (``max_batch``):
    another grid seed or pixel-removal baseline makes rows of the same sample id measure other
    things. Runs that recorded no such detail (an older attrib-bench) are not compared on it.
    The line names the runs on each side and how to pick them."""
    # each run by (its table: a run folder or a store, its folder or name in the store): a
    # store's own runs were accepted when it was built (a superseded run may differ), so only
    # differences between tables count
    runs = {(i, folder): manifest for i, t in enumerate(tables)
            for folder, manifest in _runs_of(t).items()}
    parents = [Path(p) for p in given]
    names = {key: _short(key[1], parents) for key in runs}
    fix = (f"pass --results one run folder, e.g. --results {tables[0].path}, or repeat "
           "--results for the runs that go together")

    def refuse(what: str, first: tuple[Any, list[Any]], second: tuple[Any, list[Any]]) -> None:
        sides = [f"{value} in {', '.join(names[f] for f in folders[:3])}"
                 + (f" (+{len(folders) - 3})" if len(folders) > 3 else "")
                 for value, folders in (first, second)]
        raise PlotError(f"{', '.join(map(str, given))} holds runs that cannot be compared "
                        f"({what}: {sides[0]}; {sides[1]}): {fix}")

    def check(what: str, values: dict[tuple[int, str], Any]) -> None:
        groups: dict[str, list[tuple[int, str]]] = {}
        shown: dict[str, Any] = {}
        for folder, value in values.items():
            key = json.dumps(value, sort_keys=True, default=str)
            groups.setdefault(key, []).append(folder)
            shown.setdefault(key, value)
        items = list(groups.items())
        for i, (a, fa) in enumerate(items):
            for b, fb in items[i + 1:]:
                if len({table for table, _ in fa + fb}) > 1:
                    refuse(what, (shown[a], fa), (shown[b], fb))

    check("datasets differ", {f: d for f, m in runs.items()
                              if (d := _dataset_identity(m)) is not None})
    models = sorted({name for m in runs.values() for name in m.get("models", {})})
    for model in models:
        check(f"model {model!r} has other weights (sha256)",
              {f: str(digest)[:12] for f, m in runs.items()
               if (digest := m.get("models", {}).get(model, {}).get("sha256"))})
        # the same weights in another forward (code, attributes, hooks): another model
        check(f"model {model!r} is another model under one name (its identity differs: "
              "code, attributes or hooks)",
              {f: str(identity)[:12] for f, m in runs.items()
               if (identity := m.get("models", {}).get(model, {}).get("identity"))})
    metrics = sorted({name for m in runs.values()
                      for name in m.get("config", {}).get("metric_hparams", {})})
    for metric in metrics:
        skip = _EXECUTION_SETTINGS | {_sample_count_key(metric)}
        settings = {f: {k: v for k, v in m["config"]["metric_hparams"][metric].items()
                        if k not in skip}
                    for f, m in runs.items()
                    if metric in m.get("config", {}).get("metric_hparams", {})}
        if len({json.dumps(v, sort_keys=True, default=str) for v in settings.values()}) > 1:
            keys = sorted({k for v in settings.values() for k in v
                           if len({json.dumps(x.get(k), default=str)
                                   for x in settings.values()}) > 1})
            check(f"metric {metric!r} ran with other settings",
                  {f: ", ".join(f"{k}={v.get(k)!r}" for k in keys) for f, v in settings.items()})


def _require_columns(table: pd.DataFrame, columns: Iterable[str], where: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PlotError(f"{where} lacks columns {', '.join(missing)}: it was written by an older "
                        "attrib-bench; re-run attrib-bench run with --overwrite")
