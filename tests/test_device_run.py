"""The prepared GPU call, rehearsed on the CPU: results/gpu/device_run.sh then unpack.py.

The same script that runs on the H200 (results/gpu/README.md) runs here with DEVICE=cpu, a tiny
CoDA-Net, a tiny packed dataset (conftest's packed_signal_sets), a training budget capped at one
epoch and n = 2: it must leave exactly the documented $OUT files, and unpack.py must turn them
into a zoo entry that `attrib-bench eval` loads by name.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "results" / "gpu" / "device_run.sh"
NAME = "rehearsal-xs-coda"


def test_script_fits_the_device_limits():
    """The device tool takes a command of at most 2000 characters; the documented one fits."""
    readme = (ROOT / "results" / "gpu" / "README.md").read_text()
    command = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert "device_run.sh" in command
    assert len(command) < 2000


@pytest.mark.slow
@pytest.mark.device_rehearsal  # about a minute: run before each device call (docs/gpu.md)
def test_cpu_rehearsal_produces_the_documented_out_and_a_loadable_zoo_entry(packed_signal_sets,
                                                                          tmp_path):
    # 32 train images: two steps of 16 (what the rehearsal checks is the script, not training)
    data = packed_signal_sets(tmp_path / "data", n_train=32, n_test=40)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "DEVICE": "cpu",
           "MODEL": "xs-coda", "T": "10", "NAME": NAME, "DATA": str(data),
           "WHEELS": str(tmp_path / "no-wheels"), "RESUME": str(tmp_path / "no-resume"),
           "PY": sys.executable, "STAGES": "probe,train,eval,protocol",
           # a budget a loaded machine's setup cannot exhaust; one epoch (2 steps) caps the time
           "TRAIN_BUDGET": "90", "EPOCHS": "1", "BATCH": "16", "LR": "2e-3",
           "WARMUP": "0.5", "PROBE_SECONDS": "0.2",
           "PROBE_ARGS": "--no-compile --precisions fp32", "PROTOCOL_BUDGET": "120",
           "N_SAMPLES": "2", "RUN_BATCH": "2", "GRADIENT_METHODS": "inherent,ixg",
           "PERTURBATION_METHODS": "occ9", "METRICS": "pixel-removal"}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["log.txt", "stages.csv", "probe.json", f"{NAME}.safetensors",
                            f"{NAME}.json", f"{NAME}.history.csv", "tables.tar.gz"])
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)  # the tool's limits
    with open(out / "stages.csv", newline="") as handle:
        stages = {row["stage"]: int(row["rc"]) for row in csv.DictReader(handle)}
    assert stages == {"probe": 0, "train": 0, "zoo": 0, "eval": 0, "protocol": 0}
    sidecar = json.loads((out / f"{NAME}.json").read_text())
    assert sidecar["plan"]["budget_s"] == 90.0
    assert sidecar["plan"]["epochs"] == 1.0  # EPOCHS caps the schedule inside the budget
    assert sidecar["steps"] == sidecar["plan"]["planned_steps"]  # the schedule completed
    assert json.loads((out / "probe.json").read_text())["chosen"].startswith("--amp")

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import unpack
    finally:
        sys.path.remove(str(SCRIPT.parent))
    zoo, tables = tmp_path / "zoo", tmp_path / "tables"
    code = unpack.main([str(out), "--name", NAME, "--published", "-1", "--zoo-dir", str(zoo),
                        "--tables-dir", str(tables), "--resume-dir", str(tmp_path / "resume"),
                        "--readme", "", "--data-root", str(data)])
    assert code == 0
    entry = json.loads((zoo / f"{NAME}.json").read_text())
    assert entry["zoo"]["name"] == NAME and 0 <= entry["zoo"]["accuracy"] <= 100
    assert (tables / "gradient" / "results.parquet").exists()
    assert (tables / "perturbation" / "results.parquet").exists()

    shown = subprocess.run([sys.executable, "-m", "attrib_bench", "eval", "--model", NAME,
                            "--data-root", str(data)], env={**os.environ,
                                                            "ATTRIB_BENCH_ZOO": str(zoo)},
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"top-1 {entry['zoo']['accuracy']:.2f} %" in shown.stdout


def test_unpack_puts_the_zoo_row_into_the_readme_table_once(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import unpack
    finally:
        sys.path.remove(str(SCRIPT.parent))
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "docs" / "models.md").read_text())  # the zoo table
    for accuracy in ("91.00", "92.50"):
        unpack.update_readme(readme, "s-coda-sq-t1000", f"| `s-coda-sq-t1000` | {accuracy} |")
    lines = readme.read_text().splitlines()
    mine = [i for i, line in enumerate(lines) if line.startswith("| `s-coda-sq-t1000` |")]
    assert len(mine) == 1 and lines[mine[0]].endswith("92.50 |")
    first = next(i for i, line in enumerate(lines) if line.startswith("| `xs-coda-sq-t"))
    last = next(i for i in range(first, len(lines)) if not lines[i].startswith("|")) - 1
    assert mine[0] == last  # the last row of the zoo table (the first table of zoo rows)
