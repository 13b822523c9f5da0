"""The command line: listings, eval, and one-line errors without tracebacks."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from attrib_bench.cli import cli
from attrib_bench.core.registry import list_models


def _run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_list_models_verbose_shows_parameter_counts():
    result = _run("list", "models", "--verbose")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[2:]}
    assert "7.78 M" in rows["s-coda"] and "7.8 M" in rows["s-coda"]
    assert "27.72 M" in rows["m-coda"] and "47.52 M" in rows["l-coda"]
    assert "62.85 M" in rows["xl-coda"] and "93.39 %" in rows["resnet56"]


def test_a_tiny_model_is_counted_in_thousands_not_zero_millions():
    """1 389 parameters read "1.4 k", not "0.00 M"; from 5 000 on, millions as before."""
    from attrib_bench.cli import _parameter_count

    assert _parameter_count(1389) == "1.4 k"
    assert _parameter_count(4999) == "5.0 k" and _parameter_count(5000) == "0.01 M"
    assert _parameter_count(1_020_000) == "1.02 M"


def test_list_with_pattern_and_all():
    result = _run("list", "models", "*coda*")
    assert result.exit_code == 0
    coda = list_models("*coda*")  # xs..xl plus the shipped xs-coda-sq-t* models
    assert len(coda) >= 7 and "xs-coda-sq-t10" in coda
    assert f"models ({len(coda)}):" in result.output and "resnet56" not in result.output
    result = _run("list")
    assert all(f"{kind} (" in result.output for kind in ("models", "methods", "metrics"))


def test_unknown_model_is_one_line():
    _assert_one_line_error(_run("eval", "--model", "resnt56"), "did you mean resnet56")


def test_missing_data_root_is_one_line(tmp_path):
    result = _run("eval", "--model", "xs-coda", "--checkpoint", str(tmp_path / "none.pt"))
    _assert_one_line_error(result, "does not exist")
    result = _run("eval", "--model", "resnet56", "--data-root", str(tmp_path / "nowhere"))
    _assert_one_line_error(result, "--data-root")


def test_untrained_model_without_weights_is_one_line():
    _assert_one_line_error(_run("eval", "--model", "s-coda"), "attrib-bench train", "--checkpoint")


def test_cuda_without_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _assert_one_line_error(_run("eval", "--model", "resnet56", "--device", "cuda"), "--device cpu")


def test_missing_plugin_is_one_line():
    _assert_one_line_error(_run("--plugin", "no_such_plugin_xyz", "list"), "PYTHONPATH")


@pytest.mark.real
def test_eval_resnet56_subset(data_root, weights_root):
    result = _run("eval", "--model", "resnet56", "--limit", "200", "--data-root", str(data_root))
    assert result.exit_code == 0, result.output
    assert "resnet56 on cifar10-test (200 images): top-1" in result.output


@pytest.mark.real
def test_resnet56_classifies_the_test_set_as_recorded_with_its_published_accuracy(
        data_root, weights_root):
    """The shared weights score exactly their published 93.39 % on the original test set: the
    recorded predictions (tests/data/test_set_predictions.json, keyed by the weights' sha256)
    score 9339/10000 on the real labels, and the model classifies every 20th test image as
    recorded (the full pass: `-m full_pass`, below)."""
    from reference_predictions import check_recorded, load

    from attrib_bench.core.registry import create_model
    from attrib_bench.data import load_cifar10

    assert load("resnet56")["correct"] == 9339
    check_recorded("resnet56", create_model("resnet56", pretrained=True),
                   load_cifar10("test", root=data_root))


@pytest.mark.real
@pytest.mark.full_pass
def test_eval_resnet56_full_test_set_matches_published_accuracy(data_root, weights_root):
    """The shared weights score exactly their published 93.39 % on the original test set, every
    image classified as recorded (a full pass: about a minute, so `-m full_pass` only)."""
    from reference_predictions import check_recorded

    from attrib_bench.core.registry import create_model
    from attrib_bench.data import load_cifar10

    check_recorded("resnet56", create_model("resnet56", pretrained=True),
                   load_cifar10("test", root=data_root), full=True)
    result = _run("eval", "--model", "resnet56", "--data-root", str(data_root))
    assert result.exit_code == 0, result.output
    assert "top-1 93.39 % (9339/10000)" in result.output


def test_train_help_states_each_recipes_defaults_from_recipes():
    from attrib_bench.runners.train import RECIPES

    text = " ".join(CliRunner().invoke(cli, ["train", "--help"], terminal_width=400).output.split())
    for family, label in (("coda", "CoDA-Nets and others"), ("bcos", "B-cos")):
        recipe = RECIPES[family]
        for value in (recipe.epochs, recipe.batch_size, recipe.lr, recipe.schedule):
            assert f"{value} for {label}" in text, (family, value)
