"""Training: augmentation, schedule, loss decrease, exact resume after a kill, safe export."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from attrib_bench.cli import cli
from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.core.errors import CheckpointError, ChecksumError
from attrib_bench.core.registry import create_model
from attrib_bench.runners.train import (
    TrainConfig,
    augment,
    bce_one_hot,
    build_model,
    export,
    learning_rate,
    train,
)

TINY = dict(model="xs-coda", temperature=10.0, batch_size=16, lr=5e-3, crop_padding=2)


def test_augment_crops_and_flips_without_loops():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    same = augment(images, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(same, images)
    g = torch.Generator().manual_seed(3)
    out = augment(images, g, padding=1, flip=True)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(2):  # every output is a (possibly mirrored) 4×4 window of the padded image
        windows = [padded[i, :, y:y + 4, x:x + 4] for y in range(3) for x in range(3)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_learning_rate_schedules():
    step = TrainConfig(lr=1.0, lr_decay=2.0, lr_step=30)
    assert [learning_rate(step, e) for e in (0, 29.9, 30, 95)] == [1.0, 1.0, 0.5, 0.125]
    cosine = TrainConfig(lr=1.0, schedule="cosine", epochs=10, warmup_epochs=0)
    assert learning_rate(cosine, 0) == pytest.approx(1.0)
    assert learning_rate(cosine, 5) == pytest.approx(0.5)
    assert learning_rate(cosine, 10) == pytest.approx(0.0, abs=1e-12)


def test_two_steps_lower_the_loss(signal_set, tmp_path):
    data = signal_set(16)
    config = TrainConfig(**{**TINY, "crop_padding": 0, "flip": False}, epochs=2)
    x, y = data.float_images(), data.labels
    with torch.no_grad():
        before = bce_one_hot(build_model(config)(x), y).item()
    model = train(config, data, None, tmp_path, progress=False)  # 1 step per epoch
    with torch.no_grad():
        after = bce_one_hot(model(x), y).item()
    assert after < before


def test_resume_after_kill_gives_the_same_weights(signal_set, tmp_path):
    data = signal_set(32)
    config = TrainConfig(**TINY, epochs=3)
    straight = train(config, data, data, tmp_path / "a", progress=False)
    train(config, data, data, tmp_path / "b", progress=False, stop_after_epochs=1)  # "killed"
    resumed = train(config, data, data, tmp_path / "b", resume=True, progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with open(tmp_path / "b" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_resume_may_change_how_steps_run_but_not_what_is_trained(signal_set, tmp_path):
    """channels_last (and compile) are execution settings: a resumed run may switch them."""
    data = signal_set(16)
    train(TrainConfig(**TINY, epochs=2), data, None, tmp_path, stop_after_epochs=1,
          progress=False)
    train(TrainConfig(**TINY, epochs=2, channels_last=True), data, None, tmp_path, resume=True,
          progress=False)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_a_budgeted_run_resumed_without_a_budget_keeps_its_plan(signal_set, tmp_path):
    """--time-budget is per call: a run planned under a budget, resumed without one, runs the
    planned steps to the end of the planned cosine, with no deadline to guard (it stopped with
    a TypeError from the guard, and would have taken the epochs' cosine length)."""
    data = signal_set(32)  # 2 steps an epoch
    budget = dict(TINY, epochs=3, schedule="cosine", warmup_epochs=0)
    train(TrainConfig(**budget, time_budget=20.0), data, None, tmp_path, stop_after_epochs=1,
          progress=False)
    planned = json.loads((tmp_path / "plan.json").read_text())["planned_steps"]
    train(TrainConfig(**budget), data, None, tmp_path, resume=True, progress=False)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert int(rows[-1]["step"]) == int(rows[-1]["planned_steps"]) == planned
    epochs = planned / 2
    last_lr = learning_rate(TrainConfig(**budget), (planned - 1) / 2, epochs)
    assert float(rows[-1]["lr"]) == pytest.approx(last_lr, rel=1e-4)


def test_resume_with_other_options_is_refused(signal_set, tmp_path):
    data = signal_set(16)
    train(TrainConfig(**TINY, epochs=1), data, None, tmp_path, progress=False)
    with pytest.raises(Exception, match="another config"):
        train(TrainConfig(**{**TINY, "lr": 1e-4}, epochs=1), data, None, tmp_path, resume=True,
              progress=False)


def test_export_sidecar_and_tampered_file(tmp_path):
    config = TrainConfig(**TINY, epochs=1)
    model = build_model(config)
    path = tmp_path / "xs.safetensors"
    sidecar = export(model, config, path, dataset="tiny", test_accuracy=12.5, epochs_done=1)
    assert sidecar["sha256"] == sha256_file(path)
    assert json.loads(path.with_suffix(".json").read_text())["config"]["temperature"] == 10.0
    loaded = create_model("xs-coda", checkpoint=path, sha256=sidecar["sha256"], temperature=10)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as info:
        create_model("xs-coda", checkpoint=path, sha256=sidecar["sha256"])
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------- GPU recipe options (on the CPU)


def test_peak_lr_scaling_rules():
    assert TrainConfig(lr=1e-3, batch_size=256, lr_scaling="sqrt").peak_lr == pytest.approx(4e-3)
    assert TrainConfig(lr=1e-3, batch_size=64, lr_scaling="linear").peak_lr == pytest.approx(4e-3)
    assert TrainConfig(lr=1e-3, batch_size=256).peak_lr == 1e-3
    cosine = TrainConfig(lr=1.0, schedule="cosine", warmup_epochs=0)
    assert learning_rate(cosine, 5, total_epochs=10) == pytest.approx(0.5)


def test_time_budget_plans_a_schedule_that_fits_and_completes(packed_signal_sets, tmp_path):
    """`train --time-budget 20 --epochs 2`: the plan (written to plan.json) is the longest
    schedule of at most 2 epochs that its own measurements fit into the budget (setup, steps,
    evaluations, checkpoints, export and margin), the cosine schedule ran to its end, the export
    loads. The budget is checked on the plan, not on the clock: a loaded machine's setup may
    take any time (plan_budget's arithmetic, with a budget that binds, has its own test below;
    the guard that shortens a plan has its own test too). The epoch cap keeps this test at a
    few seconds rather than the whole budget."""
    from attrib_bench.runners.train import BudgetPlan, plan_budget

    data = packed_signal_sets(tmp_path / "data", n_train=64, n_test=32)  # 4 steps an epoch
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--model", "xs-coda", "--temperature", "10", "--time-budget", "20",
        "--epochs", "2", "--batch-size", "16", "--lr", "2e-3", "--warmup-epochs", "0.5",
        "--data-root", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    measured = BudgetPlan(**plan)
    first = plan["replans"][0]["planned_steps"] if plan["replans"] else None
    # the plan as made: plan_budget on the plan's own measurements (before any guard shortened it)
    config = TrainConfig(model="xs-coda", temperature=10, epochs=2, time_budget=20.0,
                         schedule="cosine", eval_every=1)
    again = plan_budget(config, 4, measured.step_s, measured.eval_s, measured.checkpoint_s,
                        measured.setup_s, measured.probe_steps)
    assert first is None or first < again.planned_steps
    assert again.planned_steps <= 2 * 4  # at most --epochs 2
    if first is None:
        assert plan["planned_steps"] == again.planned_steps
    # what the plan keeps for the rest fits the budget
    steps = plan["planned_steps"]
    epochs = -(-steps // 4)
    cost = measured.setup_s + steps * measured.step_s + measured.reserve(epochs, epochs)
    assert cost <= 20.0, (cost, plan)
    with open(out / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    assert int(last["step"]) == int(last["planned_steps"]) == plan["planned_steps"] >= 1
    # the last step ran at the cosine's last value for the planned length: it completed
    steps, epochs = plan["planned_steps"], plan["epochs"]
    schedule = TrainConfig(model="xs-coda", lr=2e-3, schedule="cosine", warmup_epochs=0.5)
    last_lr = learning_rate(schedule, (steps - 1) * epochs / steps, epochs)
    assert float(last["lr"]) == pytest.approx(last_lr, rel=1e-4)
    assert last_lr < 0.5 * 2e-3 or steps < 3
    assert float(last["test_accuracy"]) >= 0
    sidecar = json.loads((out / "xs-coda-sq-t10.json").read_text())
    assert sidecar["steps"] == plan["planned_steps"] and sidecar["plan"]["budget_s"] == 20
    assert sidecar["registered_dataset"] == "cifar10"  # a zoo folder registers it for this data
    model = create_model("xs-coda", checkpoint=out / "xs-coda-sq-t10.safetensors",
                         sha256=sidecar["sha256"], temperature=10)
    assert torch.isfinite(model(torch.rand(2, 3, 32, 32))).all()


def test_budget_too_small_is_one_line(signal_set, tmp_path):
    from attrib_bench.core.errors import TrainError

    data = signal_set(64, 32)
    config = TrainConfig(**{**TINY, "schedule": "cosine"}, time_budget=0.05)
    with pytest.raises(TrainError, match="leaves no time to train") as info:
        train(config, data, data, tmp_path, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(TrainError, match="--schedule cosine"):
        TrainConfig(time_budget=10).check()


def test_guard_shortens_the_plan_so_the_schedule_still_ends(tmp_path):
    from attrib_bench.runners.train import BudgetPlan, _guard

    config = TrainConfig(**{**TINY, "schedule": "cosine"}, time_budget=100, eval_every=0)
    plan = BudgetPlan(100, 5, 5, 0.1, 2.0, 0.1, 1.0, planned_steps=900, epochs=9.0)
    # on time: 900 steps at 0.1 s from t=5 end at 95 < 100 - reserve
    assert _guard(plan, 0, 800, 0.1, now=5.0, deadline=100.0, steps_per_epoch=100,
                  config=config, epoch=0) == 800
    # steps became twice as slow: the rest is cut to what fits before the deadline
    shorter = _guard(plan, 100, 900, 0.2, now=30.0, deadline=100.0, steps_per_epoch=100,
                     config=config, epoch=1)
    reserve = plan.reserve(1, 8)
    assert shorter == 100 + int((100 - 30 - reserve) // 0.2) < 900
    assert plan.replans == [{"at_step": 100, "planned_steps": shorter, "seconds_per_step": 0.2}]
    assert learning_rate(config, shorter / 100, shorter / 100) == pytest.approx(0, abs=1e-12)


def _completeness_error(model, x: torch.Tensor) -> float:
    """max |Σ contributions − (logit − b0)| / max |logit − b0| of the target class 0."""
    target = torch.zeros(len(x), dtype=torch.long)
    maps = model.contributions(x, target)
    with torch.no_grad():
        evidence = model.evidence_encoded(model.encode(x))[:, 0]
    return ((maps.sum((1, 2, 3)) - evidence).abs().max() / evidence.abs().max()).item()


def _losses(out) -> list[float]:
    with open(out / "history.csv", newline="") as handle:
        return [float(r["train_loss"]) for r in csv.DictReader(handle)]


def test_amp_bf16_trains_and_the_float32_export_is_complete(signal_set, tmp_path):
    data = signal_set(32, 16)
    gentle = {**TINY, "lr": 1e-3}
    train(TrainConfig(**gentle, epochs=3), data, None, tmp_path / "fp32", progress=False)
    config = TrainConfig(**gentle, epochs=3, amp="bf16")
    model = train(config, data, None, tmp_path / "bf16", progress=False)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    # bf16 convolutions follow the float32 run's losses to bf16 accuracy (~1 % per step)
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "bf16")),
                               torch.tensor(_losses(tmp_path / "fp32")), rtol=0.05, atol=0)
    path = tmp_path / "amp.safetensors"
    sidecar = export(model, config, path, dataset="tiny", test_accuracy=None, epochs_done=3,
                     dtype=torch.float32)
    loaded = create_model("xs-coda", checkpoint=path, sha256=sidecar["sha256"], temperature=10)
    assert _completeness_error(loaded, data.float_images()[:8]) < 1e-4


def test_channels_last_trains_like_nchw(signal_set, tmp_path):
    """The same steps in channels_last memory: the same losses (to float32 rounding; weights
    after Adam steps are not compared: Adam's normalised update turns rounding noise in
    near-zero gradients into lr-sized differences), exported in the standard layout."""
    data = signal_set(32, 16)
    gentle = {**TINY, "lr": 1e-3}
    train(TrainConfig(**gentle, epochs=3), data, None, tmp_path / "a", progress=False)
    last = train(TrainConfig(**gentle, epochs=3, channels_last=True), data, None, tmp_path / "b",
                 progress=False)
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "b")),
                               torch.tensor(_losses(tmp_path / "a")), rtol=1e-4, atol=0)
    assert all(value.is_contiguous() for value in last.state_dict().values())


@pytest.mark.slow
def test_compile_flag_compiles_the_training_forward(signal_set, tiny_coda_plan, tmp_path,
                                                    monkeypatch):
    """--compile wraps the forward in torch.compile (here with the aot_eager backend, which
    traces forward and backward without a C++ toolchain) and trains to finite weights. The
    CoDA-Net is the 5-layer plan (conftest's TINY_CODA_PLAN): tracing costs per layer, and the
    XS plan's 9 layers took 15-35 s here."""
    calls = []
    real = torch.compile

    def compile_eagerly(model, **kwargs):
        calls.append(type(model).__name__)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    data = signal_set(32, 16)
    model = train(TrainConfig(**TINY, epochs=1, compile=True, model_kwargs=tiny_coda_plan), data,
                  None, tmp_path, progress=False)
    assert calls == ["CoDANet"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lambda_two_steps_lower_the_regularised_loss(signal_set, tmp_path):
    from attrib_bench.models.coda_net import lambda_penalty

    data = signal_set(16, 16)
    config = TrainConfig(**{**TINY, "crop_padding": 0, "flip": False}, epochs=2, lambda_reg=0.1)
    x, y = data.float_images(), data.labels

    def regularised(model) -> float:
        with torch.no_grad():
            bce = bce_one_hot(model(x), y).item()
        return bce + 0.1 * lambda_penalty(model, x, y).item()

    before = regularised(build_model(config))
    model = train(config, data, None, tmp_path, progress=False)  # 1 step per epoch
    assert regularised(model) < before
    with open(tmp_path / "history.csv", newline="") as handle:
        penalties = [float(r["lambda_penalty"]) for r in csv.DictReader(handle)]
    assert len(penalties) == 2 and all(p > 0 for p in penalties)


def test_lambda_needs_a_linear_map(signal_set, tmp_path):
    from attrib_bench.core.errors import TrainError

    data = signal_set(16, 32)
    with pytest.raises(TrainError, match="linear map"):
        train(TrainConfig(model="resnet56", epochs=1, lambda_reg=0.1), data, None, tmp_path,
              progress=False)


def test_warmup_never_outlasts_a_short_schedule():
    """A budget that allows 0.1 epoch with --warmup-epochs 1 still decays to 0 (warm-up capped
    at 20 % of the schedule), so a short budgeted run is never left at its peak rate."""
    config = TrainConfig(lr=1.0, schedule="cosine", warmup_epochs=1.0)
    assert learning_rate(config, 0.01, total_epochs=0.1) == pytest.approx(0.55)  # warming up
    assert learning_rate(config, 0.0199, total_epochs=0.1) == pytest.approx(1.0)  # never above
    assert learning_rate(config, 0.0999, total_epochs=0.1) < 1e-3
    assert learning_rate(config, 0.5, total_epochs=10) == pytest.approx(0.5 + 1e-3)  # unchanged


def test_checkpoint_sidecar_gives_the_trained_temperature(tmp_path):
    from attrib_bench.models.zoo import checkpoint_kwargs

    config = TrainConfig(**TINY, epochs=1)  # T = 10
    path = tmp_path / "xs.safetensors"
    export(build_model(config), config, path, dataset="tiny", test_accuracy=None, epochs_done=1)
    assert checkpoint_kwargs("xs-coda", path) == {"temperature": 10.0, "norm": "sq"}
    with pytest.raises(CheckpointError, match=r"was trained as xs-coda .*not resnet56: pass "
                                              r"--model xs-coda$"):
        checkpoint_kwargs("resnet56", path)
    for name in ("xs-coda", "xs-coda-sq-t1000"):  # a zoo name's own T is overridden, not doubled
        model = create_model(name, checkpoint=path, **checkpoint_kwargs(name, path))
        assert model.temperature == 10.0
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_the_temperature_defaults_to_the_models_own():
    """`train --model xl-coda` trains the paper's T = 6400 (Table 1), not the S models' 1000."""
    assert TrainConfig(model="xl-coda").temperature == 6400.0
    assert TrainConfig(model="l-coda").temperature == 1e5
    assert TrainConfig(model="xs-coda").temperature == 1000.0
    assert TrainConfig(model="xl-coda", temperature=50.0).temperature == 50.0
    assert TrainConfig(model="xl-coda").norm == "sq"


def test_models_other_than_coda_nets_have_no_temperature_or_norm():
    """A ResNet's config records neither T nor a DAU norm, and setting one is refused in one
    line (it would be recorded and mean nothing)."""
    from attrib_bench.core.errors import TrainError

    config = TrainConfig(model="resnet56")
    assert (config.temperature, config.norm) == (None, None)
    for wrong in ({"temperature": 10.0}, {"norm": "l2"}):
        with pytest.raises(TrainError, match="resnet56 is not a CoDA-Net: drop them"):
            TrainConfig(model="resnet56", **wrong).check()
    result = CliRunner().invoke(cli, ["train", "--model", "resnet56", "--temperature", "10"])
    assert result.exit_code != 0 and "not a CoDA-Net: drop them" in result.output
    assert "Traceback" not in result.output


def test_resume_of_a_run_that_recorded_the_old_unused_temperature(signal_set, tmp_path):
    """Runs of other models made before T and the norm became None for them recorded the
    CoDA-Net defaults (1000, "sq"); they still resume."""
    data = signal_set(16)
    config = TrainConfig(model="resnet56", epochs=2, batch_size=16, eval_every=0)
    train(config, data, None, tmp_path, stop_after_epochs=1, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["config"].update(temperature=1000.0, norm="sq")
    torch.save(state, tmp_path / "checkpoint.pt")
    train(config, data, None, tmp_path, resume=True, progress=False)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_the_budget_plan_is_the_longest_schedule_that_fits():
    """Hand-computed: 20 s budget, 3 s gone (17 s left), steps 0.5 s, an evaluation 2 s after
    every epoch, a checkpoint 0.25 s (one per epoch and one for the export), margin 0.5 s, 4 steps
    an epoch. A schedule reaching epoch e keeps 2e + 0.25(e + 1) + 0.5 s for the rest:
    e = 3: 9.5 s left, 19 steps, capped at the 12 of three epochs; e = 4: 7.25 s, 14 steps
    (> 12: they need the 4th epoch); e = 5: 5 s, 10 steps, fewer than 4 epochs' 16: stop. So 14
    steps, costing 7 + 8 + 1.25 + 0.5 = 16.75 s. The fixed-point iteration this replaced gave 28
    (7 epochs: 14 s of evaluations alone)."""
    from attrib_bench.runners.train import plan_budget

    config = TrainConfig(model="xs-coda", epochs=10, time_budget=20.0, schedule="cosine")
    plan = plan_budget(config, steps_per_epoch=4, step_s=0.5, eval_s=2.0, checkpoint_s=0.25,
                       elapsed_s=3.0, probe_steps=2)
    assert plan.planned_steps == 14 and 14 * 0.5 + plan.reserve(4, 4) <= 17.0
    every_third = TrainConfig(model="xs-coda", epochs=10, time_budget=20.0, schedule="cosine",
                              eval_every=3)
    plan = plan_budget(every_third, 4, 0.5, 2.0, 0.25, 3.0, 2)
    # e epochs: 0.5 steps + 2 (1 + (e − 1) // 3) + 0.25 (e + 1) + 0.5 ≤ 17: e = 5 with 20 steps
    # costs 10 + 4 + 1.5 + 0.5 = 16 s; e = 6 needs 21 steps: 10.5 + 4 + 1.75 + 0.5 = 16.75 s,
    # 22 steps 17.25 s: 21
    assert plan.planned_steps == 21


def test_each_family_trains_with_its_published_recipe_unless_told_otherwise():
    """Silent settings come from the family's recipe: the CoDA-Nets authors' (also for ResNets
    and library models) or the bcos package's CIFAR-10 one; given values win; --time-budget
    implies the cosine schedule."""
    from attrib_bench.runners.train import RECIPES

    coda, bcos = TrainConfig.for_model("xs-coda"), TrainConfig.for_model("bcos-resnet20")
    assert (coda.epochs, coda.batch_size, coda.lr, coda.schedule) == (200, 16, 2.5e-4, "step")
    assert (bcos.epochs, bcos.batch_size, bcos.lr, bcos.schedule) == (100, 64, 1e-3, "cosine")
    assert bcos.lr_reference_batch == 64 and bcos.peak_lr == 1e-3
    assert TrainConfig.for_model("resnet56").batch_size == RECIPES["coda"].batch_size
    mine = TrainConfig.for_model("bcos-resnet20", epochs=3, lr=None, batch_size=128,
                                 lr_scaling="sqrt")
    assert (mine.epochs, mine.lr, mine.batch_size) == (3, 1e-3, 128)
    assert mine.peak_lr == pytest.approx(1e-3 * 2 ** 0.5)  # scaled from the recipe's batch 64
    assert TrainConfig.for_model("xs-coda", time_budget=60.0).schedule == "cosine"
    assert TrainConfig.for_model("xs-coda").temperature == 1000.0  # __post_init__ still runs


@pytest.mark.parametrize(("name", "fix"), [
    ("xs-coda-sq-t1000", "--model xs-coda --temperature 1000 --norm sq"),
    ("bcos-resnet20-cifar10", "--model bcos-resnet20 "),
])
def test_training_a_trained_zoo_name_names_its_architecture(name, fix):
    """`train --model <trained name>` used to train that architecture from scratch under the
    trained name; now it is one line naming the architecture to train, before any data."""
    result = CliRunner().invoke(cli, ["train", "--model", name, "--data-root", "/nonexistent"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{name} names trained weights; train its architecture from scratch with {fix}" \
        in result.output


def test_cli_trains_a_bcos_network_with_the_bcos_recipe(packed_signal_sets, tmp_path):
    """`train --model bcos-resnet20` without recipe flags records the bcos package's batch,
    learning rate and schedule (it used to record the CoDA-Nets authors' batch 16, 2.5e-4)."""
    pytest.importorskip("bcos")
    data = packed_signal_sets(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--model", "bcos-resnet20", "--epochs", "1",
                                      "--limit", "64", "--test-limit", "16", "--quiet",
                                      "--data-root", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "bcos-resnet20.json").read_text())["config"]
    assert (config["batch_size"], config["lr"], config["schedule"], config["epochs"]) == (
        64, 1e-3, "cosine", 1)


def test_a_checkpoint_of_another_model_is_one_line_naming_the_model(tmp_path):
    """`eval --model xs-coda --checkpoint <a ResNet-56 export>` used to end in a traceback from
    the DAU (the sidecar's T and norm are None for other models); now one line."""
    config = TrainConfig(model="resnet56", epochs=1)
    path = tmp_path / "resnet56.safetensors"
    export(build_model(config), config, path, dataset="tiny", test_accuracy=None, epochs_done=1)
    for command in ("eval", "run"):
        args = [command, "--model", "xs-coda", "--checkpoint", str(path)]
        if command == "run":
            args += ["--method", "grad", "--metric", "pixel-removal", "--out",
                     str(tmp_path / "never")]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert f"{path} was trained as resnet56 (its sidecar resnet56.json), not xs-coda: " \
               "pass --model resnet56" in result.output
