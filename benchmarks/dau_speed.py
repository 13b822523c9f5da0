"""DAU speed benchmark: bilinear vs materialised DAU layers in a CoDA-Net, forward + backward.

Run on demand (never in CI):

    python benchmarks/dau_speed.py [--batch-size 32] [--device cpu|cuda] [--repeats 5] [--size s]
                                   [--warmup 1] [--threads N] [--seed 0] [--json PATH]

Both formulations run in ONE process on the SAME weights: the model is built once from a fixed
seed and ``DAUConv2d.formulation`` (a plain attribute) is switched between measurements. One step
is: logits = model(x); logits.sum().backward(), with gradients to every parameter and to x.

Reported, per formulation:
  * wall time per fwd+bwd: warm-up steps first, then the median of ``--repeats`` timed steps,
    the two formulations interleaved so that a change of machine load hits both;
  * peak memory of one fwd+bwd above the baseline (model, input and libraries already loaded):
    on CPU in a fresh child process per formulation (peak RSS, Linux VmHWM after resetting it
    through /proc/self/clear_refs), on CUDA with torch.cuda.max_memory_allocated;
  * the agreement of the two formulations in float32: max |difference| of the logits, of the
    evidence logits − b0 and of the input gradient, absolute and relative to the max |value| of
    the materialised (reference) result.

The numbers worth comparing across machines are the ratios materialised / bilinear. On a small
shared VM the timings depend on other processes: with several torch threads, each op waits for
the slowest thread, so a busy neighbour slows every op; the printed load average tells.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

# isort: split
from attrib_bench.core.evaluation import count_parameters
from attrib_bench.models.coda_net import CoDANet, build_coda
from attrib_bench.models.dau import DAUConv2d

FORMULATIONS = ("bilinear", "materialised")
SPEED_GOAL = 4.0  # the project's goal: bilinear >= 4x faster than materialised (fwd+bwd)
MEMORY_GOAL = 8.0  # ... and >= 8x less peak memory
CHILD_FLAG = "--_memory-child"  # hidden: run one memory measurement and print it as JSON


# ---------------------------------------------------------------------------------------------
# Model, input, one step


def set_formulation(model: torch.nn.Module, formulation: str) -> None:
    for module in model.modules():
        if isinstance(module, DAUConv2d):
            module.formulation = formulation


def make_model_and_input(size: str, batch_size: int, seed: int,
                         device: torch.device) -> tuple[CoDANet, torch.Tensor]:
    """The same weights and the same input for a given seed, in every process."""
    torch.manual_seed(seed)
    model = build_coda(size).to(device)
    side = model.config.image_size
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch_size, 3, side, side, generator=generator).to(device)
    return model, x


def fwd_bwd(model: CoDANet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One training-like step: gradients of logits.sum() to all parameters and to the input."""
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    logits = model(x)
    logits.sum().backward()
    assert x.grad is not None
    return logits.detach(), x.grad


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Time


def time_interleaved(model: CoDANet, x: torch.Tensor, warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Seconds per fwd+bwd, formulations alternating (A B, B A, ...) so that a change of
    machine load during the run hits both alike."""
    for formulation in FORMULATIONS:
        set_formulation(model, formulation)
        for _ in range(warmup):
            fwd_bwd(model, x)
    sync(x.device)
    times: dict[str, list[float]] = {f: [] for f in FORMULATIONS}
    for i in range(repeats):
        for formulation in FORMULATIONS[:: 1 if i % 2 == 0 else -1]:
            set_formulation(model, formulation)
            start = time.perf_counter()
            fwd_bwd(model, x)
            sync(x.device)
            times[formulation].append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return times


# ---------------------------------------------------------------------------------------------
# Peak memory
#
# tracemalloc cannot be used: it only sees allocations made through Python's allocator, while
# torch allocates tensor storage in C++ (malloc / its CPU allocator), invisible to it. On CPU we
# therefore measure the process's resident set size; on CUDA, torch's own allocator statistics.

MIB = 2.0**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _release_free_memory() -> None:
    """Return freed heap pages to the OS, so that the baseline RSS holds no reusable slack."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_peak_child(size: str, batch_size: int, seed: int, formulation: str) -> dict[str, Any]:
    """In a fresh process: RSS high-water mark of one fwd+bwd minus the RSS just before it."""
    model, x = make_model_and_input(size, batch_size, seed, torch.device("cpu"))
    set_formulation(model, formulation)
    # Warm up the libraries (thread pool, oneDNN / BLAS buffers) on a single image, so that
    # their one-time allocations are part of the baseline and not of the measured step.
    fwd_bwd(model, x[:1])
    model.zero_grad(set_to_none=True)
    _release_free_memory()
    baseline_kib = _status_kib("VmRSS")
    # Writing "5" to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        reset = _status_kib("VmHWM") <= baseline_kib + 1024
    except OSError:
        reset = False
    fwd_bwd(model, x)
    peak_kib = _status_kib("VmHWM")
    return {
        "formulation": formulation,
        "baseline_mib": baseline_kib / 1024,
        "peak_mib": peak_kib / 1024,
        "peak_increase_mib": (peak_kib - baseline_kib) / 1024,
        "hwm_reset": reset,  # False: VmHWM could not be reset; the increase is an upper bound
    }


def cpu_peak(args: argparse.Namespace, formulation: str) -> dict[str, Any]:
    """Run ``cpu_peak_child`` in a fresh interpreter (this script with a hidden flag)."""
    command = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, formulation,
               "--size", args.size, "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {formulation} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cuda_peak(model: CoDANet, x: torch.Tensor) -> dict[str, Any]:
    """Peak bytes held by torch's CUDA allocator during one fwd+bwd, above those held before."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.synchronize(x.device)
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    fwd_bwd(model, x)
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device)
    model.zero_grad(set_to_none=True)
    return {"baseline_mib": baseline / MIB, "peak_mib": peak / MIB,
            "peak_increase_mib": (peak - baseline) / MIB}


# ---------------------------------------------------------------------------------------------
# Agreement


def reference_outputs(model: CoDANet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits, input gradient and the evidence logits − b0 (summed last-layer map / T).

    The logits of a fresh model are dominated by the constant b0 = log(1/9), which hides
    differences below float32 resolution at |b0|; the evidence shows them.
    """
    captured: list[torch.Tensor] = []
    hook = model.layers.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        logits, grad = fwd_bwd(model, x)
    finally:
        hook.remove()
    model.zero_grad(set_to_none=True)
    evidence = captured[0].sum(dim=(2, 3)) / model.temperature
    return {"logits": logits.float().cpu(), "evidence": evidence.float().cpu(),
            "input_grad": grad.float().cpu()}


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    diff = (reference - other).abs().max().item()
    scale = reference.abs().max().item()
    return {"max_abs_diff": diff, "max_abs_reference": scale,
            "relative": diff / scale if scale > 0 else float("nan")}


# ---------------------------------------------------------------------------------------------
# Report


def hardware(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    # glibc malloc tuning changes CPU timings a lot (see benchmarks/README.md): record it.
    info["malloc_env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    return info


def code_version() -> str:
    """The repository's commit, and whether the model files differ from it (or "unknown")."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "models"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"git {commit}" + (" + uncommitted changes in models/" if dirty else "")


def format_report(result: dict[str, Any]) -> str:
    hw, cfg = result["hardware"], result["config"]
    t, m = result["time_s"], result["peak_memory_mib"]
    bil, mat = t["bilinear"], t["materialised"]
    gpu = f"{hw['gpu']} | " if "gpu" in hw else ""
    load = result["load_average_1min"]
    lines = [
        f"DAU formulations: {cfg['model']} ({cfg['parameters'] / 1e6:.2f} M params), fwd+bwd of "
        f"{cfg['loss']} to params and input, input {tuple(cfg['input_shape'])} {cfg['dtype']}",
        f"hardware: {gpu}{hw['cpu']} | {hw['cpu_count']} CPUs, {hw['torch_threads']} torch "
        f"threads | torch {hw['torch']} | python {hw['python']} | device {hw['device']}",
        f"code: {result['code']}"
        + "".join(f" | {k}={v}" for k, v in hw["malloc_env"].items()),
        f"timing: {cfg['warmup']} warm-up, then median of {cfg['repeats']} steps each, "
        f"interleaved; 1-min load average {load[0]:.2f} before, {load[1]:.2f} after",
        f"memory: {result['memory_method']}",
        "",
        f"{'':28s}{'bilinear':>14s}{'materialised':>16s}{'mat / bil':>11s}",
        f"{'fwd+bwd time, median [s]':28s}{bil['median']:14.3f}{mat['median']:16.3f}"
        f"{result['speed_ratio']:10.2f}x",
        f"{'  min .. max [s]':28s}{bil['min']:>8.3f}..{bil['max']:<4.3f}"
        f"{mat['min']:>10.3f}..{mat['max']:<4.3f}",
        f"{'peak memory increase [MiB]':28s}{m['bilinear']['peak_increase_mib']:14.1f}"
        f"{m['materialised']['peak_increase_mib']:16.1f}{result['memory_ratio']:10.2f}x",
    ]
    if not all(v.get("hwm_reset", True) for v in m.values()):
        lines.append("  (VmHWM could not be reset: memory increases are upper bounds)")
    lines += ["", "agreement in float32, bilinear vs materialised (the reference):"]
    for name, key in (("logits", "logits"), ("logits - b0", "evidence"),
                      ("input grad", "input_grad")):
        a = result["agreement"][key]
        lines.append(f"  {name:12s} max|diff| {a['max_abs_diff']:.2e}   "
                     f"max|ref| {a['max_abs_reference']:.2e}   relative {a['relative']:.2e}")
    speed_ok = result["speed_ratio"] >= SPEED_GOAL
    memory_ok = result["memory_ratio"] >= MEMORY_GOAL
    lines += ["", f"goals (bilinear vs materialised): >= {SPEED_GOAL:g}x faster "
                  f"{'met' if speed_ok else 'MISSED'}; >= {MEMORY_GOAL:g}x less peak memory "
                  f"{'met' if memory_ok else 'MISSED'}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per formulation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per formulation")
    parser.add_argument("--size", default="s", help="CoDA-Net config (default s: S-CoDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own default)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument(CHILD_FLAG, choices=FORMULATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be >= 1, --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    load_before = os.getloadavg()[0]
    code = code_version()
    model, x = make_model_and_input(args.size, args.batch_size, args.seed, device)

    outputs, memory = {}, {}
    for formulation in FORMULATIONS:
        set_formulation(model, formulation)
        outputs[formulation] = reference_outputs(model, x)
        if device.type == "cuda":
            memory[formulation] = cuda_peak(model, x)
        else:
            memory[formulation] = cpu_peak(args, formulation)
    steps = time_interleaved(model, x, args.warmup, args.repeats)
    times = {f: {"median": statistics.median(s), "min": min(s), "max": max(s), "all": s}
             for f, s in steps.items()}
    load_after = os.getloadavg()[0]

    ref, bil = outputs["materialised"], outputs["bilinear"]
    return {
        "benchmark": "dau_speed",
        "hardware": hardware(device),
        "code": code,
        "config": {"model": f"{args.size.upper()}-CoDA", "size": args.size,
                   "batch_size": args.batch_size, "input_shape": list(x.shape),
                   "parameters": count_parameters(model), "warmup": args.warmup,
                   "repeats": args.repeats, "seed": args.seed,
                   "loss": "logits.sum()", "dtype": str(x.dtype).removeprefix("torch.")},
        "load_average_1min": [load_before, load_after],
        "memory_method": ("torch.cuda.max_memory_allocated - memory_allocated before the step"
                          if device.type == "cuda" else
                          "peak RSS (VmHWM) - RSS before the step, a fresh child process each"),
        "time_s": times,
        "peak_memory_mib": memory,
        "speed_ratio": times["materialised"]["median"] / times["bilinear"]["median"],
        "memory_ratio": (memory["materialised"]["peak_increase_mib"]
                         / memory["bilinear"]["peak_increase_mib"]),
        "agreement": {key: agreement(ref[key], bil[key]) for key in ref},
        "goals": {"speed_ratio_min": SPEED_GOAL, "memory_ratio_min": MEMORY_GOAL},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    child = getattr(args, CHILD_FLAG.lstrip("-").replace("-", "_"))
    if child is not None:
        print(json.dumps(cpu_peak_child(args.size, args.batch_size, args.seed, child)))
        return
    result = run(args)
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
