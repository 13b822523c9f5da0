"""Paired comparisons, ranks with uncertainty, agreement and the control maps, with known answers
and against scipy, statsmodels and scikit-image called directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from statsmodels.stats.multitest import multipletests
from torch import nn

from attrib_bench.compare import (
    ALPHA,
    PAIR_COLUMNS,
    RESAMPLES,
    agreement,
    holm,
    letter_groups,
    paired_test,
    precision,
    prefix_check,
    rankings,
)
from attrib_bench.core.errors import MethodError
from attrib_bench.core.registry import create_method
from attrib_bench.methods.controls import image_ids


def _values(means: dict[str, float], n: int = 40, noise: float = 0.05, seed: int = 0,
            metric: str = "localisation", model: str = "m") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-sample values of methods on the same n units: a shared per-unit level plus each
    method's offset and its own noise; the summary gives the direction (higher)."""
    rng = np.random.default_rng(seed)
    level = rng.normal(0.5, 0.2, n)
    rows = [pd.DataFrame({"model": model, "method": m, "metric": metric, "sample": np.arange(n),
                          "key": "0", "variant": "", "stat": "score", "flag": "",
                          "dataset": "toy", "value": level + mu + noise * rng.normal(size=n)})
            for m, mu in means.items()]
    summary = pd.DataFrame({"model": model, "method": list(means), "metric": metric,
                            "variant": "", "stat": "score", "direction": "higher"})
    return pd.concat(rows, ignore_index=True), summary


def test_the_paired_ci_and_wilcoxon_are_scipys():
    rng = np.random.default_rng(3)
    a = rng.normal(0.6, 0.1, 50)
    b = a - 0.02 + rng.normal(0, 0.03, 50)
    got = paired_test(a, b, seed=7)
    ci = stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True,
                         vectorized=True, n_resamples=RESAMPLES, method="percentile",
                         rng=np.random.default_rng(7)).confidence_interval
    assert (got["ci_low"], got["ci_high"]) == (ci.low, ci.high)
    assert got["p"] == stats.wilcoxon(a, b).pvalue
    assert got["mean_diff"] == pytest.approx(np.mean(a - b)) and got["n"] == 50
    # rank-biserial: all differences positive → 1; by hand on a small case
    assert paired_test(a + 1, a)["effect"] == 1.0
    # d = [1, -2, 3]: ranks of |d| 1, 2, 3 → (1 + 3 − 2) / 6
    assert paired_test(np.array([1.0, -2, 3]), np.zeros(3))["effect"] == pytest.approx(2 / 6)


def test_holm_is_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    expected = multipletests(p[:4], method="holm")[1]
    np.testing.assert_array_equal(holm(p)[:4], expected)
    assert np.isnan(holm(p)[4])
    # by hand: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.2, then the
    # running maximum, in the original order
    np.testing.assert_allclose(expected, [0.04, 0.09, 0.09, 0.2])


def test_a_method_better_by_construction_ranks_first_and_separates():
    values, summary = _values({"good": 0.2, "mid": 0.0, "bad": -0.2})
    pairs, ranks = rankings(values, summary, "toy")
    assert list(pairs.columns) == PAIR_COLUMNS and len(pairs) == 3
    first = ranks.iloc[0]
    assert first["method"] == "good" and first["p_first"] == 1.0
    assert (first["rank_low"], first["rank_high"]) == (1.0, 1.0)
    assert dict(zip(ranks["method"], ranks["group"], strict=True)) == {
        "good": "a", "mid": "b", "bad": "c"}
    row = pairs[(pairs.method_a == "bad") & (pairs.method_b == "good")].iloc[0]
    assert row["better"] == "good" and row["mean_diff"] < 0 and row["p_holm"] < ALPHA
    # lower is better: the same values rank the other way round
    _, flipped = rankings(values, summary.assign(direction="lower"), "toy")
    assert flipped.iloc[0]["method"] == "bad"


def test_two_identical_methods_are_never_separated():
    values, summary = _values({"a": 0.0, "b": 0.1})
    twin = values[values.method == "a"].assign(method="twin")
    values = pd.concat([values, twin], ignore_index=True)
    summary = pd.concat([summary, summary.iloc[[0]].assign(method="twin")], ignore_index=True)
    pairs, ranks = rankings(values, summary, "toy")
    same = pairs[pairs.method_a.isin(["a", "twin"]) & pairs.method_b.isin(["a", "twin"])]
    assert len(same) == 1
    row = same.iloc[0]
    assert (row["mean_diff"], row["ci_low"], row["ci_high"], row["p"]) == (0, 0, 0, 1.0)
    assert row["better"] == "none"
    groups = dict(zip(ranks["method"], ranks["group"], strict=True))
    assert groups["a"] == groups["twin"] != groups["b"]


def test_methods_are_compared_on_the_units_both_have():
    values, summary = _values({"a": 0.1, "b": 0.0}, n=40)
    few = values[(values.method == "b") & (values["sample"] < 10)]
    values = pd.concat([values[values.method == "a"], few], ignore_index=True)
    pairs, ranks = rankings(values, summary, "toy")
    assert pairs.iloc[0]["n"] == 10 and set(ranks["n_common"]) == {10}


def test_letter_groups_chain_like_a_compact_letter_display():
    means = {"a": 3.0, "b": 2.0, "c": 1.0}
    only_ends = {frozenset(("a", "c"))}
    assert letter_groups(means, only_ends, 1.0) == {"a": "a", "b": "ab", "c": "b"}
    assert letter_groups(means, set(), 1.0) == {"a": "a", "b": "a", "c": "a"}


def test_kendall_tau_is_scipys():
    means = {"a": 0.3, "b": 0.2, "c": 0.1, "d": 0.0}
    one, s1 = _values(means, seed=1)
    two, s2 = _values({"a": 0.0, "b": 0.1, "c": 0.2, "d": 0.3}, seed=2, model="m2")
    table = agreement(pd.concat([one, two]), pd.concat([s1, s2]), "toy", resamples=50)
    row = table.iloc[0]
    a = one.groupby("method")["value"].mean()
    b = two.groupby("method")["value"].mean()
    assert row["tau"] == pytest.approx(stats.kendalltau(a, b).statistic) == pytest.approx(-1.0)
    assert row["ci_low"] <= row["tau"] <= row["ci_high"]


def test_the_prefix_check_flags_first_samples_that_differ():
    values, _ = _values({"a": 0.0}, n=100, noise=0.01)
    values.loc[values["sample"] < 32, "value"] += 0.5
    found = prefix_check(values).iloc[0]
    assert found["differs"] and found["mean_first"] > found["mean_rest"]
    values.loc[values["sample"] < 32, "value"] -= 0.5
    values["value"] = 0.5 + np.random.default_rng(0).normal(0, 0.01, len(values))
    assert not prefix_check(values).iloc[0]["differs"]


class _Never(nn.Module):
    """A 10-class model that counts the images it sees: a control runs it only once, on one
    image, when the method checks that the targets are classes of the model."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        assert self.seen <= 1, "a control ran the model on its images"
        return torch.zeros(len(x), 10, dtype=x.dtype)


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.rand(4, 3, 12, 10, generator=torch.Generator().manual_seed(0))


def test_the_edges_control_is_scikit_images_sobel(images):
    from skimage.filters import sobel

    maps = create_method("edges", _Never()).attribute(images, torch.zeros(4, dtype=torch.long))
    for k in range(4):
        ref = sobel(images[k].double().mean(0).numpy())
        np.testing.assert_allclose(maps[k].double().numpy(), ref, atol=1e-6)


def test_the_random_control_is_seeded_and_per_image(images):
    method = create_method("random", _Never(), seed=3)
    target = torch.zeros(4, dtype=torch.long)
    first = method.attribute(images, target)
    again = method.attribute(images.flip(0), target).flip(0)  # another batch order
    torch.testing.assert_close(first, again)
    other = create_method("random", _Never(), seed=4).attribute(images, target)
    assert not torch.allclose(first, other)
    assert abs(float(first.mean())) < 0.2 and 0.8 < float(first.std()) < 1.2
    assert len(set(image_ids(images).tolist())) == 4


def test_the_centre_control_peaks_in_the_middle(images):
    maps = create_method("centre", _Never()).attribute(images, torch.zeros(4, dtype=torch.long))
    assert torch.equal(maps[0], maps[3])
    # the four pixels around the centre of a 12 × 10 image share the peak
    assert float(maps[0].max()) == float(maps[0][5, 4]) == float(maps[0][6, 5])
    assert float(maps[0][0, 0]) < float(maps[0][5, 4])
    with pytest.raises(MethodError, match="sigma must be a positive number"):
        create_method("centre", _Never(), sigma=0)


@pytest.mark.parametrize("name", ["random", "centre", "edges"])
def test_controls_land_at_chance_on_grid_localisation(name):
    """A map that ignores the target gives each cell of a grid the same share whichever cell is
    the target: the mean over the n² cells of a grid is 1/n² exactly."""
    from attrib_bench.metrics.localisation import localisation_scores

    grids = torch.rand(2, 3, 3 * 8, 3 * 8, generator=torch.Generator().manual_seed(1))
    method = create_method(name, _Never())
    cells = torch.arange(9).repeat(2)  # each grid explained for each cell's class
    maps = method.attribute(grids.repeat_interleave(9, dim=0), cells).reshape(2, 9, 24, 24)
    scores = localisation_scores(maps, 3)  # (2, 9): map k's share in cell k
    np.testing.assert_allclose(scores.mean(dim=1).numpy(), 1 / 9, rtol=1e-6)


def test_the_compare_command_writes_both_tables_and_prints_the_ranking(tmp_path):
    """`attrib-bench compare` on a run folder: the pairs and ranks CSVs and a verdict per
    family; a metric without two ranked methods is one line."""
    from click.testing import CliRunner
    from test_plots import synthetic_results, write_run

    from attrib_bench.cli import cli

    run = write_run(tmp_path / "run", synthetic_results(np.random.default_rng(0)))
    out = CliRunner().invoke(cli, ["compare", "--results", str(run), "--out",
                                   str(tmp_path / "pairs.csv"), "--ranks",
                                   str(tmp_path / "ranks.csv")])
    assert out.exit_code == 0, out.output
    pairs = pd.read_csv(tmp_path / "pairs.csv", keep_default_na=False)
    assert list(pairs.columns) == PAIR_COLUMNS
    assert set(pairs["metric"]) == {"localisation", "pixel-removal"}  # randomisation: a check
    assert "localisation score · toy-t10: 20 shared grid cells, higher is better" in out.output
    assert out.output.strip().splitlines()[-1].startswith(f"{len(pairs)} pairs in ")
    bad = CliRunner().invoke(cli, ["compare", "--results", str(run), "--metric", "nope"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1


def test_precision_gives_the_half_width_of_each_prefix_and_at_n():
    values, _ = _values({"a": 0.0}, n=40)
    row = precision(values, sizes=(16, 32)).iloc[0]
    per = values.sort_values("sample")["value"].to_numpy()
    for k, column in ((16, "hw_16"), (32, "hw_32"), (40, "hw_n")):
        assert row[column] == pytest.approx(1.96 * per[:k].std(ddof=1) / np.sqrt(k))
    assert row["n"] == 40 and "hw_64" not in row
