"""Recorded test-set predictions of the shared and shipped pretrained models.

A full pass over the 10,000 CIFAR-10 test images costs 25-60 s per model on the 2-core CPU, so
the default suite does not classify the whole set. It checks instead (``test_cli.py``,
``test_bcos.py``) that

- the recorded predictions belong to the weights the registry loads (their sha256, which
  loading checks against the file),
- the recorded predictions score exactly the model's recorded (published) top-1 on the real
  labels, and
- the model classifies every ``STRIDE``-th test image (500 images, spread over the whole file)
  as recorded.

``pytest -m full_pass`` runs the full passes and compares all 10,000 predictions with the record
(the old default tests' strength). ``python tests/reference_predictions.py [NAME ...]`` re-records
after a deliberate change of weights (it needs ../shared, as the real tests do).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

RECORD = Path(__file__).parent / "data" / "test_set_predictions.json"
#: Every STRIDE-th test image is classified in the default suite.
STRIDE = 20
#: The models recorded: the shared ResNet-56 and the shipped B-cos ResNet-20.
NAMES = ("resnet56", "bcos-resnet20-cifar10")


def load(name: str) -> dict:
    return json.loads(RECORD.read_text())[name]


def predictions(entry: dict) -> torch.Tensor:
    return torch.tensor([int(c) for c in entry["predictions"]])


def strided(test_set, stride: int = STRIDE):
    """Every ``stride``-th image of ``test_set`` (an in-memory ImageSet) and its indices."""
    from attrib_bench.data import ImageSet

    index = torch.arange(0, len(test_set), stride)
    return ImageSet(test_set.images[index], test_set.labels[index], test_set.class_names,
                    f"{test_set.name}-every-{stride}"), index


def check_recorded(name: str, model, test_set, full: bool = False) -> torch.Tensor:
    """Assert that the record of ``name`` belongs to its registered weights and scores its
    recorded top-1 on ``test_set``'s labels, and that ``model`` classifies every
    :data:`STRIDE`-th image of ``test_set`` (``full``: every image) as recorded. Returns the
    model's logits on the images it classified."""
    from attrib_bench.core.registry import MODELS
    from attrib_bench.data.predict import predict_logits

    entry = load(name)
    cfg = MODELS.get(name).metadata["pretrained_cfg"]
    # loading checks the file against this sha256, so the record is of the weights that load
    assert entry["weights_sha256"] == cfg.sha256, f"re-record: python {__file__} {name}"
    assert (entry["dataset"], entry["images"]) == (test_set.name, len(test_set))
    recorded = predictions(entry)
    correct = int((recorded == test_set.labels).sum())
    assert correct == entry["correct"]
    assert 100 * correct / len(test_set) == pytest.approx(cfg.accuracy, abs=0.005)
    subset, index = (test_set, torch.arange(len(test_set))) if full else strided(test_set)
    logits = predict_logits(model, subset, progress=False)
    assert torch.equal(logits.argmax(1), recorded[index]), \
        f"{int((logits.argmax(1) != recorded[index]).sum())} of {len(index)} images differ"
    return logits


def record(names: tuple[str, ...] = NAMES) -> None:
    from attrib_bench.core.registry import MODELS, create_model
    from attrib_bench.data import load_cifar10
    from attrib_bench.data.predict import predict_logits

    content = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    test_set = load_cifar10("test")
    for name in names:
        model = create_model(name, pretrained=True).eval()
        logits = predict_logits(model, test_set, progress=False)
        top2 = logits.topk(2, dim=1).values
        margin = (top2[:, 0] - top2[:, 1])[::STRIDE]
        predicted = logits.argmax(1)
        cfg = MODELS.get(name).metadata["pretrained_cfg"]
        content[name] = {
            "weights_sha256": cfg.sha256, "dataset": test_set.name, "images": len(test_set),
            "correct": int((predicted == test_set.labels).sum()),
            "smallest_strided_margin": round(float(margin.min()), 6),
            "predictions": "".join(str(int(p)) for p in predicted)}
        print(name, content[name]["correct"], content[name]["smallest_strided_margin"])
    RECORD.write_text(json.dumps(content, indent=1) + "\n")


if __name__ == "__main__":
    record(tuple(sys.argv[1:]) or NAMES)
