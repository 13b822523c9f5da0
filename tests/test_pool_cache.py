"""Sample selection paid once: the pool logits (a model's logits on the whole test set, which the
grid localisations rank) are cached by (weights, dataset) and shared between metrics and runs,
and computed at the inference batch whatever the run's chunk size (issue 17, point 5)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from test_localisation import LabelReader, _synthetic

from attrib_bench.data.predict import INFERENCE_BATCH
from attrib_bench.metrics.base import SelectContext
from attrib_bench.metrics.localisation import Localisation
from attrib_bench.runners import cache as cache_module
from attrib_bench.runners.benchmark import run
from attrib_bench.runners.cache import PoolLogits, write_shipped_logits


def _localise(out, cache, **kw):
    return run({"reader": LabelReader()}, "grad", "localisation", dataset=_synthetic(),
               out=out, cache=cache, n_samples=3, progress=False,
               metric_hparams={"localisation": {"n": 2}}, **kw)


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_second_run_with_the_same_cache_does_no_pool_pass(tmp_path, monkeypatch):
    batches: list[int] = []
    real = cache_module.predict_logits

    def spy(model, images, batch_size, *args, **kwargs):
        batches.append(batch_size)
        return real(model, images, batch_size, *args, **kwargs)

    monkeypatch.setattr(cache_module, "predict_logits", spy)
    shared = tmp_path / "cache"
    first = _localise(tmp_path / "a", shared, chunk_size=1)
    # one pass over the 300 images, at the inference batch, not the chunk size of 1
    assert batches == [INFERENCE_BATCH]
    assert _manifest(tmp_path / "a")["pool_logits_cache"]["misses"] == 1
    assert list((shared / "logits").rglob("*.safetensors"))
    second = _localise(tmp_path / "b", shared, chunk_size=2)
    assert batches == [INFERENCE_BATCH]  # no second pass
    pool = _manifest(tmp_path / "b")["pool_logits_cache"]
    assert (pool["hits"], pool["misses"], pool["seconds"]) == (1, 0, 0.0)
    keys = ["model", "method", "metric", "sample", "key", "variant", "stat", "value"]
    assert first[keys].equals(second[keys])


def test_localisation_and_difull_share_one_pass():
    data, model = _synthetic(), LabelReader()
    pool = PoolLogits(None, torch.device("cpu"))
    ctx = SelectContext(torch.device("cpu"), pool.predict)
    a = Localisation(n=2).select(model, data, 4, ctx)
    b = Localisation(n=2).select(model, data, 4, ctx)
    assert (pool.stats.misses, pool.stats.hits) == (1, 1)
    assert a.ids.tolist() == b.ids.tolist()
    # the cached logits are the plain ones: the same grids as an uncached selection
    plain = Localisation(n=2).select(model, data, 4, SelectContext())
    assert torch.equal(a.fetch(a.ids)[1], plain.fetch(plain.ids)[1])


def test_a_corrupt_pool_entry_is_recomputed(tmp_path):
    shared = tmp_path / "cache"
    _localise(tmp_path / "a", shared)
    entry = next((shared / "logits").rglob("*.safetensors"))
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    _localise(tmp_path / "b", shared)
    pool = _manifest(tmp_path / "b")["pool_logits_cache"]
    assert (pool["corrupt"], pool["misses"]) == (1, 1)


def test_dry_run_writes_nothing_but_an_explicit_cache_keeps_its_pool_pass(tmp_path):
    _localise(tmp_path / "dry", None, dry_run=True)
    assert not (tmp_path / "dry").exists()
    shared = tmp_path / "cache"
    _localise(tmp_path / "dry", shared, dry_run=True)
    assert not (tmp_path / "dry").exists()
    assert [p.parent.parent.name for p in shared.rglob("*.safetensors")] == ["logits"]
    _localise(tmp_path / "real", shared)  # the real run reuses the dry run's pass
    pool = _manifest(tmp_path / "real")["pool_logits_cache"]
    assert (pool["hits"], pool["misses"]) == (1, 0)


def test_manifest_counts_samples_and_times_the_whole_run(tmp_path):
    _localise(tmp_path / "a", None)
    manifest = _manifest(tmp_path / "a")
    info = manifest["samples"]["reader/localisation"]
    assert (info["n"], info["grids"], info["grid_size"]) == (3, 3, 2)
    assert manifest["wall_seconds_this_run"] >= manifest["plan_seconds_this_run"] > 0


def test_batch_size_is_a_deprecated_alias_of_chunk_size(tmp_path):
    with pytest.warns(FutureWarning, match="chunk_size"):
        old = _localise(tmp_path / "old", None, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = _localise(tmp_path / "new", None, chunk_size=2)
    assert old.equals(new)
    assert _manifest(tmp_path / "old")["config"]["chunk_size"] == 2


def test_cli_batch_size_flag_still_works_with_a_warning(tmp_path):
    from click.testing import CliRunner

    from attrib_bench.cli import cli

    both = CliRunner().invoke(cli, ["run", "--model", "resnet56", "--batch-size", "2",
                                    "--chunk-size", "3", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2 and "old name of --chunk-size" in both.output
    old = CliRunner().invoke(cli, ["run", "--model", "resnet56", "--batch-size", "2",
                                   "--set", "broken", "--out", str(tmp_path / "x")])
    assert "--batch-size is now --chunk-size" in old.output
    assert old.exit_code == 1 and "NAME.KEY=VALUE" in old.output  # then the run goes on
    shown = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--chunk-size" in shown and "--batch-size" not in shown


@pytest.mark.parametrize("params", ["model, dataset, n_samples, device, batch_size",
                                    "model, dataset, n_samples, device"])
def test_a_metric_with_the_old_select_contract_is_one_line(tmp_path, params):
    from attrib_bench.core.errors import MetricError
    from attrib_bench.core.registry import METRICS, register_metric
    from attrib_bench.metrics.base import Metric

    namespace: dict = {}
    exec(f"def select(self, {params}):\n    raise AssertionError('not called')", namespace)
    register_metric("old-contract")(type("Old", (Metric,), {"select": namespace["select"]}))
    try:
        with pytest.raises(MetricError, match="old contract; take .model, dataset, n_samples, "
                                              "ctx. and use ctx.device"):
            run({"reader": LabelReader()}, "grad", "old-contract", dataset=_synthetic(),
                out=tmp_path / "x", progress=False)
    finally:
        METRICS.remove("old-contract")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- shipped logits


def _ship(folder, model, data, **kw):
    """A zoo folder in ``folder`` whose sidecar ships ``model``'s logits on ``data``."""
    folder.mkdir(parents=True, exist_ok=True)
    sidecar = folder / "reader.json"
    if not sidecar.exists():
        sidecar.write_text("{}\n")
    return write_shipped_logits(sidecar, model, data, **kw), sidecar


def test_shipped_logits_replace_the_pool_pass_and_give_the_same_tables(tmp_path, monkeypatch):
    model, data = LabelReader(), _synthetic()
    shipped, sidecar = _ship(tmp_path / "zoo", model, data)
    entry = json.loads(sidecar.read_text())["pool_logits"]["synthetic"]
    assert entry["file"] == shipped.name == "reader.synthetic.logits.safetensors"
    assert entry["key"] == PoolLogits(None, torch.device("cpu")).shipped_key(model, data)
    passes: list[int] = []
    real = cache_module.predict_logits
    monkeypatch.setattr(cache_module, "predict_logits",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    zoo_folders = cache_module._default_shipped_folders
    monkeypatch.setattr(cache_module, "_default_shipped_folders", lambda: [tmp_path / "zoo"])
    with_file = _localise(tmp_path / "a", tmp_path / "cache-a")
    assert passes == []  # no pass over the dataset
    pool = _manifest(tmp_path / "a")["pool_logits_cache"]
    assert (pool["shipped"], pool["misses"], pool["hits"]) == (1, 0, 0)
    assert not (tmp_path / "cache-a" / "logits").exists()  # not copied into the cache
    monkeypatch.setenv(cache_module.SHIPPED_ENV_VAR, "0")  # never read shipped logits
    monkeypatch.setattr(cache_module, "_default_shipped_folders", zoo_folders)
    assert zoo_folders() == []
    recomputed = _localise(tmp_path / "b", tmp_path / "cache-b")
    assert passes == [1]
    pool = _manifest(tmp_path / "b")["pool_logits_cache"]
    assert (pool["shipped"], pool["misses"]) == (0, 1)
    cached = next((tmp_path / "cache-b" / "logits").rglob("*.safetensors"))
    assert torch.equal(load_file(cached)["maps"], load_file(shipped)["logits"])
    assert with_file.equals(recomputed)
    assert (_manifest(tmp_path / "a")["tables_sha256"]
            == _manifest(tmp_path / "b")["tables_sha256"])


def _tamper_file(path, sidecar, model, data):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def _other_images(path, sidecar, model, data):  # same name, other content: another key
    write_shipped_logits(sidecar, model, _synthetic(seed=1))


def _stale_logits(path, sidecar, model, data):  # weights or code changed since: the rows differ
    write_shipped_logits(sidecar, model, data, logits=model(data.float_images()) + 0.5)


def _missing(path, sidecar, model, data):
    path.unlink()


@pytest.mark.parametrize(("spoil", "reason"), [
    (_tamper_file, "its sha256 is not the one recorded in reader.json"),
    (_other_images, "it was computed for other synthetic images or labels"),
    (_stale_logits, "images classified again differ from its rows by up to 0.5"),
    (_missing, "reader.synthetic.logits.safetensors is missing"),
])
def test_a_shipped_file_that_fails_a_check_is_one_line_and_the_pass_runs(tmp_path, capsys, spoil,
                                                                         reason):
    model, data = LabelReader(), _synthetic()
    path, sidecar = _ship(tmp_path, model, data)
    spoil(path, sidecar, model, data)
    pool = PoolLogits(None, torch.device("cpu"), shipped=[tmp_path])
    logits = pool.predict(model, data)
    assert torch.equal(logits, PoolLogits(None, torch.device("cpu"), shipped=[]).predict(model,
                                                                                         data))
    assert (pool.stats.shipped, pool.stats.misses) == (0, 1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and len(pool.refused) == 1
    assert lines[0].startswith("note: shipped logits reader.synthetic.logits.safetensors not "
                               "used: ") and lines[0].endswith("classifying synthetic instead")


def test_shipped_logits_of_other_weights_make_no_claim(tmp_path, capsys):
    class OtherReader(LabelReader):
        pass

    data = _synthetic()
    _ship(tmp_path, OtherReader(), data)
    pool = PoolLogits(None, torch.device("cpu"), shipped=[tmp_path])
    pool.predict(LabelReader(), data)
    assert (pool.stats.shipped, pool.stats.misses, pool.refused) == (0, 1, [])
    assert capsys.readouterr().err == ""


def test_the_cache_comes_first_and_a_shipped_read_is_counted(tmp_path):
    model, data = LabelReader(), _synthetic()
    _ship(tmp_path / "zoo", model, data)
    shipped = PoolLogits(tmp_path / "cache", torch.device("cpu"), shipped=[tmp_path / "zoo"])
    shipped.predict(model, data)
    shipped.predict(model, data)  # the second time from memory
    shipped.flush()  # nothing to store: shipped logits stay out of the cache
    assert shipped.stats.as_dict() == {"hits": 1, "misses": 0, "corrupt": 0, "shipped": 1}
    computed = PoolLogits(tmp_path / "cache", torch.device("cpu"), shipped=[])
    computed.predict(model, data)
    computed.flush()
    cached = PoolLogits(tmp_path / "cache", torch.device("cpu"), shipped=[tmp_path / "zoo"])
    cached.predict(model, data)
    assert cached.stats.as_dict() == {"hits": 1, "misses": 0, "corrupt": 0, "shipped": 0}
