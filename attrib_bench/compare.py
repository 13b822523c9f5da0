"""Which method is better, on the same samples, with what certainty.

A *family* is one ranking question: (dataset, model, metric, variant, stat), e.g. xs-coda-sq-t1000's
pixel-removal least-first prob-auc. Its methods are compared on the units they share; the unit is
the metric's own: a (grid, cell) for localisation and DiFull, an image (its AUC) for pixel
removal. Randomisation is a sanity check, not a ranking (its metric says ``ranks=False``): it is
left out.

- :func:`pairwise` — per family and method pair, on the units both have: n, the mean difference
  (a − b) with its paired percentile-bootstrap 95 % CI (``scipy.stats.bootstrap``,
  ``paired=True``, seeded), the Wilcoxon signed-rank p (``scipy.stats.wilcoxon``), p adjusted
  by Holm within the family (statsmodels' ``multipletests``), the matched-pairs rank-biserial
  correlation as effect size, and ``better``: the method ahead in the metric's direction when
  the Holm-adjusted p < 0.05 *and* the CI excludes 0 on that side, else ``none``.
- :func:`rankings` — per family, on the units every method has: each method's mean rank with a
  95 % bootstrap CI and the probability of ranking first (the units resampled together, so the
  ranks stay paired), and letter groups: methods sharing a letter are not separated by the
  Holm-adjusted paired tests (a compact letter display; written here, since neither scipy nor
  statsmodels offers one for arbitrary pairwise decisions).
- :func:`agreement` — Kendall's τ (``scipy.stats.kendalltau``) between the method rankings of two
  families, with a bootstrap CI (units resampled within each family).
- :func:`prefix_check` — whether a part's first samples (the protocol draws the most confident
  grids first) differ from the rest; :func:`precision` — the CI half-width against n.

Inputs are per-sample values as a results store holds them (:mod:`attrib_bench.store`); a run
folder's rows are reduced the same way (:func:`attrib_bench.store.per_sample_values`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

#: Family columns, in order.
FAMILY = ["dataset", "model", "metric", "variant", "stat"]
#: Columns of :func:`pairwise`'s table.
PAIR_COLUMNS = [*FAMILY, "method_a", "method_b", "n", "mean_diff", "ci_low", "ci_high", "p",
                "p_holm", "effect", "better"]
ALPHA = 0.05
RESAMPLES = 2000
#: A part of a family: its method with the family's columns but the dataset.
PART_KEY = ["model", "method", "metric", "variant", "stat"]
#: First samples compared with the rest by :func:`prefix_check`.
PREFIX = 32


@dataclass(frozen=True)
class Family:
    """One ranking question: its key, the direction (higher/lower) and the per-unit values,
    a (units × methods) frame with NaN where a method lacks a unit."""

    key: tuple[str, str, str, str, str]
    direction: str
    table: pd.DataFrame

    @property
    def sign(self) -> float:
        """+1 when higher is better, −1 when lower is."""
        return 1.0 if self.direction == "higher" else -1.0


def ranks_methods(metric: str) -> bool:
    """Whether ``metric`` ranks methods (its registry metadata ``ranks``, default True)."""
    from attrib_bench.core.registry import METRICS

    return bool(METRICS.get(metric).metadata.get("ranks", True)) if metric in METRICS else True


def _finite(values: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``values`` whose value is finite (``flag`` empty)."""
    return values[values["flag"].fillna("").astype(str) == ""] if "flag" in values else values


def _per_sample(values: pd.DataFrame) -> Iterator[tuple[tuple[Any, ...], np.ndarray]]:
    """Per part (model, method, metric, variant, stat): its finite samples' values in sample
    order (the protocol's drawing order), a sample's value its mean over keys (a grid's cells),
    as in the summary."""
    for key, part in _finite(values).groupby(PART_KEY):
        yield key, part.groupby("sample")["value"].mean().sort_index().to_numpy(np.float64)


def families(values: pd.DataFrame, summary: pd.DataFrame, dataset: str = ""
             ) -> Iterator[Family]:
    """The ranking families of per-sample ``values`` (a store's values.parquet), the direction of
    each from ``summary``; families without a direction, or of a metric that ranks nothing, are
    left out."""
    direction = (summary.assign(variant=summary["variant"].fillna("").astype(str))
                 .groupby(["model", "metric", "variant", "stat"])["direction"]
                 .agg(lambda d: next((str(x) for x in d if str(x) in ("higher", "lower")), "")))
    finite = _finite(values)
    finite = finite.assign(variant=finite["variant"].fillna("").astype(str),
                           key=finite["key"].astype(str))
    for (model, metric, variant, stat), rows in finite.groupby(
            ["model", "metric", "variant", "stat"], sort=True):
        way = direction.get((model, metric, variant, stat), "")
        if way not in ("higher", "lower") or not ranks_methods(str(metric)):
            continue
        data = (str(rows["dataset"].iloc[0]) if "dataset" in rows and
                pd.notna(rows["dataset"].iloc[0]) else dataset)
        table = rows.pivot_table(index=["sample", "key"], columns="method", values="value",
                                 aggfunc="first")
        if table.shape[1] >= 2:
            yield Family((data, str(model), str(metric), variant, str(stat)), way, table)


def _rank_biserial(d: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of differences ``d``: (R+ − R−) / (R+ + R−),
    zeros dropped (Kerby 2014); 0 when every difference is 0."""
    from scipy.stats import rankdata

    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def paired_test(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The paired comparison of ``a`` and ``b`` (same units, same order): n, mean difference
    a − b, its percentile-bootstrap 95 % CI, Wilcoxon's two-sided p and the rank-biserial effect.

    Identical values give difference 0, CI [0, 0], p = 1 (Wilcoxon is undefined without a
    non-zero difference); fewer than two units give NaN CI and p.
    """
    from scipy.stats import bootstrap, wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    n = int(d.size)
    out = {"n": n, "mean_diff": float(d.mean()) if n else np.nan, "ci_low": np.nan,
           "ci_high": np.nan, "p": np.nan, "effect": _rank_biserial(d)}
    if n < 2:
        return out
    if np.all(d == d[0]):  # no spread: the bootstrap has nothing to resample
        out.update(ci_low=float(d[0]), ci_high=float(d[0]),
                   p=1.0 if d[0] == 0 else float(wilcoxon(d).pvalue))
        return out
    ci = bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True,
                   vectorized=True, n_resamples=RESAMPLES, method="percentile",
                   confidence_level=1 - ALPHA, rng=np.random.default_rng(seed)).confidence_interval
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), p=float(wilcoxon(a, b).pvalue))
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels' ``multipletests(method="holm")``); NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


def _better(row: Mapping[str, Any], sign: float) -> str:
    """The method ahead in the direction ``sign`` when the pair is separated, else "none"."""
    if not (np.isfinite(row["p_holm"]) and row["p_holm"] < ALPHA):
        return "none"
    low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    if low > 0:
        return str(row["method_a"])
    if high < 0:
        return str(row["method_b"])
    return "none"


def family_pairs(family: Family, seed: int = 0) -> pd.DataFrame:
    """Every method pair of ``family`` on the units both have (see :func:`pairwise`)."""
    methods = ordered(family.table.columns)
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            both = family.table[[a, b]].dropna()
            rows.append({**dict(zip(FAMILY, family.key, strict=True)), "method_a": a,
                         "method_b": b, **paired_test(both[a].to_numpy(), both[b].to_numpy(),
                                                      seed)})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy())
    table["better"] = [_better(r, family.sign) for r in table.to_dict("records")]
    return table[PAIR_COLUMNS]


def ordered(methods: Iterable[str]) -> list[str]:
    """Methods in the figures' order (the paper's, then the others a–z)."""
    from attrib_bench.core.registry import ordered_methods

    return ordered_methods(methods)


def pairwise(values: pd.DataFrame, summary: pd.DataFrame, dataset: str = "",
             metric: str | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per family and method pair (:data:`PAIR_COLUMNS`); see the module docstring."""
    found = [family_pairs(f, seed) for f in families(values, summary, dataset)
             if metric is None or f.key[2] == metric]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=PAIR_COLUMNS)


def letter_groups(means: Mapping[str, float], separated: set[frozenset[str]], sign: float
                  ) -> dict[str, str]:
    """Compact letter display: methods sorted best first; each maximal run of consecutive
    methods that no test separates gets a letter, so two methods share a letter exactly when
    they fall in a common run (Piepho 2004 for the consecutive case)."""
    order = sorted(means, key=lambda m: -sign * means[m])
    runs: list[set[str]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and all(frozenset((order[k], order[j + 1])) not in separated
                                         for k in range(i, j + 1)):
            j += 1
        run = set(order[i:j + 1])
        if not any(run <= other for other in runs):
            runs.append(run)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {m: "".join(letters[k] for k, run in enumerate(runs) if m in run) for m in order}


def family_ranking(family: Family, pairs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Each method's mean over the family's common units, mean rank (1 = best) with a 95 %
    bootstrap CI, P(rank 1), and its letter group."""
    common = family.table.dropna()
    methods = ordered(family.table.columns)
    n = len(common)
    out = pd.DataFrame({"method": methods, "n_common": n,
                        "mean": [float(common[m].mean()) if n else np.nan for m in methods]})
    # the letters order methods by these means; with no common unit, by each one's own
    means = dict(zip(methods, out["mean"] if n else family.table[methods].mean(), strict=True))
    if n >= 1:
        values = common[methods].to_numpy(np.float64)  # (n, M)
        counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=RESAMPLES)
        boot = counts @ values / n  # (B, M)
        from scipy.stats import rankdata

        ranks = rankdata(-family.sign * boot, axis=1, method="average")
        out["rank_mean"] = ranks.mean(axis=0)
        out["rank_low"], out["rank_high"] = np.percentile(ranks, [2.5, 97.5], axis=0)
        out["p_first"] = (ranks == 1).mean(axis=0) + 0.0
    else:
        out["rank_mean"] = out["rank_low"] = out["rank_high"] = out["p_first"] = np.nan
    separated = {frozenset((r["method_a"], r["method_b"])) for r in pairs.to_dict("records")
                 if r["better"] != "none"}
    groups = letter_groups(means, separated, family.sign)
    out["group"] = out["method"].map(groups)
    for column, value in zip(FAMILY, family.key, strict=True):
        out.insert(FAMILY.index(column), column, value)
    out.insert(len(FAMILY), "direction", family.direction)
    out["control"] = out["method"].map(is_control)
    return out.sort_values("rank_mean", kind="stable", ignore_index=True)


def is_control(method: str) -> bool:
    """Whether ``method`` is a control (``control=True`` in its metadata): as the drawn run
    recorded it (:func:`attrib_bench.core.registry.recorded_display`), else as registered."""
    from attrib_bench.core.registry import _method_metadata

    return bool(_method_metadata(method).get("control"))


def rankings(values: pd.DataFrame, summary: pd.DataFrame, dataset: str = "",
             metric: str | None = None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, ranks) of every family: :func:`pairwise`'s table and, per family and method, the
    mean rank with its CI, P(first), the letter group and whether it is a control; a control
    ranked above a real method (a better group) flags the family (``control_above``)."""
    pairs, ranks = [], []
    for family in families(values, summary, dataset):
        if metric is not None and family.key[2] != metric:
            continue
        p = family_pairs(family, seed)
        r = family_ranking(family, p, seed)
        r["control_above"] = _control_above(p)
        pairs.append(p)
        ranks.append(r)
    if not pairs:
        return pd.DataFrame(columns=PAIR_COLUMNS), pd.DataFrame(columns=[*FAMILY, "method"])
    return pd.concat(pairs, ignore_index=True), pd.concat(ranks, ignore_index=True)


def _control_above(pairs: pd.DataFrame) -> str:
    """"control > method" for each pair where a control beats a real method, joined."""
    found = []
    for r in pairs.to_dict("records"):
        winner = r["better"]
        loser = r["method_b"] if winner == r["method_a"] else r["method_a"]
        if winner != "none" and is_control(winner) and not is_control(loser):
            found.append(f"{winner} > {loser}")
    return ", ".join(found)


def _boot_means(family: Family, rng: np.random.Generator, resamples: int) -> pd.DataFrame:
    """(resamples × methods) means of ``family``'s methods over its units resampled together
    (each method over the resampled units it has), oriented so that higher is better."""
    x = family.table.to_numpy(np.float64)
    have = np.isfinite(x)
    n = len(x)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (counts @ np.where(have, x, 0.0)) / (counts @ have)
    return pd.DataFrame(family.sign * means, columns=family.table.columns)


def agreement(values: pd.DataFrame, summary: pd.DataFrame, dataset: str = "",
              seed: int = 0, resamples: int = 1000) -> pd.DataFrame:
    """Kendall's τ between the method rankings (means, oriented so higher is better) of two
    families that share three or more methods and either the model (metrics agree?) or the
    metric, variant and stat (models and temperatures agree?), with a 95 % bootstrap CI (each
    family's units resampled on their own, ``resamples`` times; 0: no CI)."""
    from scipy.stats import kendalltau

    fams = list(families(values, summary, dataset))
    rng = np.random.default_rng(seed)
    means = {f.key: f.sign * f.table.mean() for f in fams}
    boots = {f.key: _boot_means(f, rng, resamples) for f in fams}
    rows = []
    for i, f in enumerate(fams):
        for g in fams[i + 1:]:
            if f.key[1] != g.key[1] and f.key[2:] != g.key[2:]:
                continue
            common = ordered(set(f.table.columns) & set(g.table.columns))
            if len(common) < 3:
                continue
            tau = kendalltau(means[f.key][common], means[g.key][common]).statistic
            fb, gb = boots[f.key][common].to_numpy(), boots[g.key][common].to_numpy()
            taus = [kendalltau(fb[k], gb[k]).statistic for k in range(resamples)]
            low, high = np.nanpercentile(taus, [2.5, 97.5]) if resamples else (np.nan, np.nan)
            rows.append({**{f"a_{c}": v for c, v in zip(FAMILY, f.key, strict=True)},
                         **{f"b_{c}": v for c, v in zip(FAMILY, g.key, strict=True)},
                         "methods": ",".join(common), "tau": float(tau),
                         "ci_low": float(low), "ci_high": float(high)})
    return pd.DataFrame(rows)


def prefix_check(values: pd.DataFrame, prefix: int = PREFIX, seed: int = 0) -> pd.DataFrame:
    """Per part (model, method, metric, variant, stat) with more than 2 × ``prefix`` samples:
    the mean over the first ``prefix`` samples (by id: the protocol's drawing order), the mean
    over the rest, their difference's 95 % bootstrap CI (samples resampled within each side)
    and whether it excludes 0 (``differs``)."""
    rows = []
    rng = np.random.default_rng(seed)
    for key, per in _per_sample(values):
        if len(per) <= 2 * prefix:
            continue
        first, rest = per[:prefix], per[prefix:]
        diffs = (first[rng.integers(0, len(first), (RESAMPLES, len(first)))].mean(1)
                 - rest[rng.integers(0, len(rest), (RESAMPLES, len(rest)))].mean(1))
        low, high = np.percentile(diffs, [2.5, 97.5])
        rows.append({**dict(zip(PART_KEY, key, strict=True)), "n": len(per), "first": prefix,
                     "mean_first": float(first.mean()), "mean_rest": float(rest.mean()),
                     "ci_low": float(low), "ci_high": float(high),
                     "differs": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows)


#: Sample counts at which :func:`precision` gives the CI half-width.
SIZES = (16, 32, 64, 128, 256, 512, 1024)


def precision(values: pd.DataFrame, sizes: Iterable[int] = SIZES) -> pd.DataFrame:
    """Is n enough? Per part (model, method, metric, variant, stat): the 95 % CI half-width of
    the mean, 1.96 · s / √n′, over the first n′ samples (the protocol's drawing order) for each
    n′ of ``sizes`` below the part's n, and at n itself (columns ``hw_<n′>`` and ``hw_n``); a
    sample's value is its mean over keys (a grid's cells), as in the summary."""
    rows = []
    for key, per in _per_sample(values):
        row = dict(zip(PART_KEY, key, strict=True))
        row["n"] = len(per)
        for k in [*(k for k in sizes if k < len(per)), len(per)]:
            name = "hw_n" if k == len(per) else f"hw_{k}"
            row[name] = 1.96 * float(per[:k].std(ddof=1)) / np.sqrt(k) if k > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def tables_values(tables: Any) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(per-sample values, summary, dataset) of loaded tables
    (:class:`attrib_bench.store.RunTables`: a store's, or run folders' reduced as a store
    reduces them)."""
    from attrib_bench.store import STORE_FORMAT, per_sample_values

    if tables.manifest.get("format") == STORE_FORMAT:
        values = tables.results
    else:
        hparams: dict[str, Any] = {}
        for manifest in (tables.manifests or {"": tables.manifest}).values():
            hparams.update(manifest.get("config", {}).get("metric_hparams", {}))
        values = per_sample_values(tables.results, hparams)
    dataset = str(tables.manifest.get("dataset") or tables.manifest.get("config", {}).get(
        "dataset") or "")
    return values, tables.summary, dataset


def load_values(paths: str | Path | Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                    str]:
    """(per-sample values, summary, dataset) of run folders or stores (:func:`tables_values`)."""
    from attrib_bench.store import load_runs

    return tables_values(load_runs(paths))


def compare(results: str | Path | Iterable[str | Path], metric: str | None = None,
            seed: int = 0) -> pd.DataFrame:
    """The paired comparisons (:func:`pairwise`) of the run folders or stores ``results``."""
    values, summary, dataset = load_values(results)
    return pairwise(values, summary, dataset, metric, seed)


class Comparison(NamedTuple):
    """What :func:`compare_runs` finds: every method pair, every family's ranks, the verdict
    lines, and the runs' summary (for the rows no family ranks)."""

    pairs: pd.DataFrame
    ranks: pd.DataFrame
    verdict: list[str]
    summary: pd.DataFrame


def compare_runs(results: str | Path | Iterable[str | Path], metric: str | None = None,
                 seed: int = 0) -> Comparison:
    """The :class:`Comparison` of the run folders or stores ``results``, with method labels
    and controls as the runs recorded them (their manifests' ``display``), so a plugin's
    methods read the same without ``--plugin``."""
    from attrib_bench.store import load_runs

    tables = load_runs(results)
    values, summary, dataset = tables_values(tables)
    with tables.drawn_as_recorded():
        pairs, ranks = rankings(values, summary, dataset, metric, seed)
        return Comparison(pairs, ranks, verdict(ranks) if len(ranks) else [], summary)


#: What a family's unit is, by metric (others: "samples").
UNITS = {"localisation": "grid cells", "localisation-difull": "grid cells",
         "pixel-removal": "images"}


def _shown(ranks: pd.DataFrame) -> pd.DataFrame:
    """The families a verdict shows: a "logit-auc" family only where no "prob-auc" one of the
    same model, metric and variant exists (the paper reads the probability)."""
    keys = set(map(tuple, ranks[["model", "metric", "variant", "stat"]].drop_duplicates()
                   .to_numpy().tolist()))
    keep = [not (str(s).startswith("logit") and (m, k, v, str(s).replace("logit", "prob"))
                 in keys)
            for m, k, v, s in ranks[["model", "metric", "variant", "stat"]].to_numpy()]
    return ranks[keep]


def verdict(ranks: pd.DataFrame) -> list[str]:
    """A few lines per family: methods best first, "≈" between methods that share a letter
    group (not separated by the paired tests), ">" where the next is separated, each with its
    mean, group and mean rank [95 % CI]; a flag when a control ranks above a real method."""
    from attrib_bench.core.registry import method_label

    lines = []
    for key, fam in _shown(ranks).groupby(FAMILY, sort=False):
        _, model, metric, variant, stat = key
        fam = fam.sort_values("rank_mean", kind="stable")
        first = fam.iloc[0]
        head = " ".join(x for x in (metric, variant, stat) if x)
        lines.append(f"{head} · {model}: {int(first['n_common'])} shared "
                     f"{UNITS.get(metric, 'samples')}, {first['direction']} is better")
        text, previous = "", None
        for r in fam.to_dict("records"):
            if previous is not None:
                text += " ≈ " if set(previous) & set(r["group"]) else " > "
            text += (f"{method_label(r['method'])} {r['mean']:.3g} ({r['group']}; rank "
                     f"{r['rank_mean']:.1f} [{r['rank_low']:g}, {r['rank_high']:g}])")
            previous = r["group"]
        lines.append("  " + text)
        flagged = str(first.get("control_above", "") or "")
        if flagged:
            lines.append(f"  flag: a control ranks above a real method ({flagged})")
    return lines
