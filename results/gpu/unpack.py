"""Turn a device call's returned $OUT (results/gpu/device_run.sh) into a zoo entry and tables.

    python results/gpu/unpack.py OUT_DIR [--name s-coda-sq-t1000] [--published 93.2]

1. prints the call's stages and seconds (stages.csv);
2. checks NAME.safetensors against the sha256 in NAME.json;
3. measures the stored (float16) weights' top-1 here, on the original CIFAR-10 test set;
4. writes the zoo entry: NAME.safetensors, NAME.json (with a "zoo" section: accuracy,
   provenance) and NAME.history.csv into --zoo-dir (default: the package's models/weights, which
   registers it as a model at import), and the zoo row of docs/models.md (replaced if NAME has
   one);
5. unpacks tables.tar.gz into --tables-dir (default runs/gpu), one run folder per sweep, and
   says which sweeps are complete (add those to the store: attrib-bench store --into
   results/cifar10 runs/gpu/SWEEP); incomplete ones (and the weights) are staged in
   .carry/resume so that the next device call continues them instead of starting again.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stage_times(out: Path) -> list[dict[str, str]]:
    path = out / "stages.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def measure_accuracy(weights: Path, data_root: str | None, limit: int | None,
                     device: str) -> float:
    """Top-1 % of the stored weights on the original test set (or its first ``limit`` images)."""
    from attrib_bench.core.evaluation import top1_accuracy
    from attrib_bench.core.registry import create_model
    from attrib_bench.data import load_cifar10
    from attrib_bench.data.predict import predict_logits

    sidecar = json.loads(weights.with_suffix(".json").read_text())
    config = sidecar["config"]
    model = create_model(config["model"], checkpoint=weights, sha256=sidecar["sha256"],
                         temperature=config["temperature"], norm=config["norm"])
    test = load_cifar10("test", root=data_root).subset(limit)
    return top1_accuracy(predict_logits(model, test, 500, device, progress=False), test.labels)


def provenance(sidecar: dict, stages: list[dict[str, str]]) -> str:
    config, plan = sidecar["config"], sidecar.get("plan") or {}
    seconds = {row["stage"]: row["seconds"] for row in stages}
    flags = [f"amp {config.get('amp', 'none')}"] + [
        name for name in ("tf32", "channels_last", "compile") if config.get(name)]
    return (f"trained on {sidecar.get('device', '?')} with results/gpu/device_run.sh: "
            f"{sidecar.get('steps', '?')} steps ({sidecar.get('epochs_trained', '?')} epochs) "
            f"of batch "
            f"{config['batch_size']}, cosine from lr {config['lr']:g} at batch "
            f"{config.get('lr_reference_batch', 16)} ({config.get('lr_scaling', 'none')} "
            f"scaling), {', '.join(flags)}, time budget {plan.get('budget_s', '?')} s "
            f"(train stage {seconds.get('train', '?')} s); train data "
            f"{sidecar.get('train_data', sidecar.get('dataset'))}")


def parameter_count(weights: Path) -> int:
    """Numbers stored in a safetensors file (read from its header, no tensor loaded)."""
    import math

    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())


def readme_row(name: str, sidecar: dict, accuracy: float, published: float | None,
               stages: list[dict[str, str]], params: int) -> str:
    config = sidecar["config"]
    seconds = {row["stage"]: row["seconds"] for row in stages}
    paper = f"S-CoDA-SQ T=1000: {published:g} %" if published is not None else "–"
    return (f"| `{name}` | {params / 1e6:.2f} M | {config['temperature']:g} | "
            f"{config['norm'].upper()} | {sidecar.get('epochs_trained', sidecar['epochs'])} "
            f"(cosine, Adam, batch "
            f"{config['batch_size']}, {sidecar.get('steps', '?')} steps) | **{accuracy:.2f} %** "
            f"(float16 file; float32 {sidecar.get('test_accuracy')} %) | {paper} | "
            f"{seconds.get('train', '?')} s on {sidecar.get('device', '?')} |")


def update_readme(readme: Path, name: str, row: str) -> None:
    """Replace NAME's row of the zoo table, or add it after the table's last row."""
    lines = readme.read_text().splitlines()
    mine = [i for i, line in enumerate(lines) if line.startswith(f"| `{name}` |")]
    if mine:
        lines[mine[0]] = row
    else:
        start = next(i for i, line in enumerate(lines) if line.startswith("### Trained here"))
        first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
        end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")),
                   len(lines))
        lines.insert(end, row)
    readme.write_text("\n".join(lines) + "\n")


def unpack_tables(out: Path, tables_dir: Path) -> dict[str, bool]:
    """Extract the run folders; {sweep: complete (has results.parquet)}."""
    archive = out / "tables.tar.gz"
    if not archive.exists():
        return {}
    tables_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("runs/")]
        for member in members:
            member.name = member.name.removeprefix("runs/")
        tar.extractall(tables_dir, members=[m for m in members if m.name],
                       filter="data")
    return {p.name: (p / "results.parquet").exists() for p in sorted(tables_dir.iterdir())
            if p.is_dir()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="The returned $OUT folder.")
    parser.add_argument("--name", default="s-coda-sq-t1000")
    parser.add_argument("--published", type=float, default=93.2,
                        help="The paper's accuracy for this model (Table 1), or -1 for none.")
    parser.add_argument("--zoo-dir", type=Path, default=ROOT / "models" / "weights")
    parser.add_argument("--tables-dir", type=Path, default=ROOT / "runs" / "gpu")
    parser.add_argument("--resume-dir", type=Path, default=ROOT / ".carry" / "resume")
    parser.add_argument("--readme", default=str(ROOT / "docs" / "models.md"),
                        help="The Markdown page whose zoo table gets the row ('' for none).")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--limit", type=int, default=None, help="Test images (rehearsals).")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from attrib_bench.models.zoo import zoo_sidecar

    stages = stage_times(args.out)
    for row in stages:
        print(f"stage {row['stage']:9s} rc {row['rc']:>3s} {row['seconds']:>5s} s")
    weights = args.out / f"{args.name}.safetensors"
    if not weights.exists():
        print(f"{weights} is missing: the call did not finish training (see log.txt)")
        return 1
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    accuracy = measure_accuracy(weights, args.data_root, args.limit, args.device)
    published = None if args.published < 0 else args.published
    entry = zoo_sidecar(weights, args.name, args.zoo_dir, accuracy=round(accuracy, 2),
                        provenance=provenance(sidecar, stages), published_accuracy=published)
    history = args.out / f"{args.name}.history.csv"
    if history.exists():
        shutil.copyfile(history, args.zoo_dir / history.name)
    print(f"zoo entry {args.name}: {accuracy:.2f} % on the original test set "
          f"({'first ' + str(args.limit) if args.limit else 'all'} images); {entry}")
    row = readme_row(args.name, sidecar, accuracy, published, stages, parameter_count(weights))
    if args.readme:
        update_readme(Path(args.readme), args.name, row)
    print(row)
    sweeps = unpack_tables(args.out, args.tables_dir)
    for sweep, complete in sweeps.items():
        print(f"tables {args.tables_dir / sweep}: {'complete' if complete else 'INCOMPLETE'}"
              + (f" (add it: attrib-bench store --into results/cifar10 {args.tables_dir / sweep})"
                 if complete else ""))
    if not all(sweeps.values()):
        args.resume_dir.mkdir(parents=True, exist_ok=True)
        for path in (weights, weights.with_suffix(".json"), history, args.out / "tables.tar.gz"):
            if path.exists():
                shutil.copyfile(path, args.resume_dir / path.name)
        print(f"staged {args.resume_dir} for the next device call (carry it; see "
              "results/gpu/README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
