"""Peak memory of a benchmark run on a file-backed ImageFolder set (issue 18, point 1).

Writes ``--images`` random ``--size``² JPEGs into a temporary ImageFolder tree of ``--classes``
classes, loads it as ``imagefolder`` at 224 px (a :class:`~attrib_bench.data.imageset.FileImageSet`:
nothing decoded), runs ``grad`` × ``pixel-removal`` (``--steps``, ``--n-samples``) on a ResNet-18
with random weights (``torchvision:resnet18`` from models/library.py, else a plain torchvision
ResNet-18), then one whole-dataset logits pass (the pass the grid localisations make), and prints
the process's peak RSS after each stage beside the size the decoded set would have had in memory.

    .venv/bin/python benchmarks/imagefolder_memory.py            # 2000 images, 10 classes
    .venv/bin/python benchmarks/imagefolder_memory.py --no-pass  # without the whole-set pass

The peak RSS is this process's (``ru_maxrss``); decoding runs in this process (workers 0) so that
it is counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attrib_bench.core.perf import peak_rss_mb
from attrib_bench.core.registry import MODELS, create_model
from attrib_bench.data import get_dataset
from attrib_bench.data.predict import predict_logits
from attrib_bench.runners.benchmark import run


def current_rss_mb() -> float:
    """This process's resident memory now, MB (Linux /proc/self/statm; else the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_tree(root: Path, images: int, classes: int, size: int, seed: int = 0) -> int:
    """``images`` JPEGs (quality 90) of ``size``² pixels, round-robin over ``classes`` folders;
    each a smooth random field plus noise (JPEG sizes like photos'). Returns the bytes written."""
    rng = np.random.RandomState(seed)
    total = 0
    for i in range(images):
        coarse = rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.int16) + rng.randint(-12, 13, (size, size, 3))
        path = root / f"class{i % classes:02d}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        total += path.stat().st_size
    return total


def resnet18(classes: int) -> tuple[torch.nn.Module, str]:
    """A random-weight ResNet-18 with ``classes`` outputs, and how it was built."""
    torch.manual_seed(0)
    if "torchvision:resnet18" in MODELS:
        return (create_model("torchvision:resnet18", pretrained=False, num_classes=classes),
                "torchvision:resnet18 (models/library.py wrapper, random weights)")
    import torchvision

    return (torchvision.models.resnet18(weights=None, num_classes=classes).eval(),
            "torchvision.models.resnet18(weights=None) (plain)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="generated JPEG side, px")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=256,
                        help="pixel-removal's max_batch (its default 256): the forward batch, "
                             "which sets the run's peak at 224 px")
    parser.add_argument("--no-pass", action="store_true",
                        help="skip the whole-dataset logits pass")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="imagefolder-memory-") as tmp:
        root = Path(tmp) / "tree"
        start = time.perf_counter()
        written = write_tree(root, args.images, args.classes, args.size)
        print(f"wrote {args.images} JPEGs ({args.size}x{args.size}, {args.classes} classes): "
              f"{written / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s")
        model, built = resnet18(args.classes)
        print(f"model: {built}")
        before = current_rss_mb()
        data = get_dataset("imagefolder", "val", root)  # 224 px, resize 256
        print(f"dataset: {type(data).__name__} {data.name}, {len(data)} images "
              f"{data.image_size}; decoded it would take {data.nbytes / 2**20:.1f} MiB as uint8, "
              f"{4 * data.nbytes / 2**20:.1f} MiB as float32")
        print(f"RSS before the run {before:.1f} MiB, after loading the set "
              f"{current_rss_mb():.1f} MiB, peak so far {peak_rss_mb():.1f} MiB")
        start = time.perf_counter()
        rows = run({"resnet18": model}, "grad", "pixel-removal", dataset=data,
                   n_samples=args.n_samples, out=Path(tmp) / "run", progress=False,
                   metric_hparams={"pixel-removal": {"steps": args.steps,
                                                     "max_batch": args.max_batch}})
        print(f"run grad x pixel-removal (steps {args.steps}, {args.n_samples} images, "
              f"max_batch {args.max_batch}): "
              f"{len(rows)} rows in {time.perf_counter() - start:.1f} s; RSS "
              f"{current_rss_mb():.1f} MiB, peak {peak_rss_mb():.1f} MiB")
        if not args.no_pass:
            start = time.perf_counter()
            logits = predict_logits(model, data, 100, progress=False, workers=0)
            print(f"whole-set logits pass ({len(data)} images, batch 100, decoded in this "
                  f"process): {tuple(logits.shape)} in {time.perf_counter() - start:.1f} s; "
                  f"RSS {current_rss_mb():.1f} MiB, peak {peak_rss_mb():.1f} MiB")
        peak = peak_rss_mb()
        print(f"peak RSS {peak:.1f} MiB = {peak - before:+.1f} MiB over the RSS before the run; "
              f"the decoded set alone would be {data.nbytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
