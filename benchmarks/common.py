"""Shared pieces of the benchmarks: models on both sides, FLOP counting, interleaved timing and the CPU's peak."""

import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit import ConvUNet2DModel, model_preset

RESOLUTION = 32
CHANNELS = 1
PRESETS = ("tiny", "small", "tutorial")

# Stock diffusers UNet2DModels (DownBlock2D/UpBlock2D, no attention anywhere, layers_per_block=2 as in diffusers'
# train_unconditional.py, GroupNorm with 4 groups) whose parameter count or training FLOPs per 32x32 grayscale
# image are closest to each ddpmkit preset. Found by a search over channel tuples in multiples of 4 with the same
# number of levels; run.py prints both counts of every pair, so a drift shows.
DIFFUSERS_MATCHES: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": {"params": (8, 12, 24), "flops": (8, 16, 24)},
    "small": {"params": (12, 24, 52), "flops": (16, 28, 56)},
    "tutorial": {"params": (24, 52, 100, 200, 400), "flops": (32, 64, 128, 240, 480)},
}


def ddpmkit_unet(preset: str, device: str | torch.device = "cpu") -> ConvUNet2DModel:
    with torch.device(device):
        return ConvUNet2DModel(**model_preset(preset, sample_size=RESOLUTION, in_channels=CHANNELS))


def diffusers_unet(channels: tuple[int, ...], device: str | torch.device = "cpu"):
    from diffusers import UNet2DModel

    levels = len(channels)
    with torch.device(device):
        return UNet2DModel(
            sample_size=RESOLUTION, in_channels=CHANNELS, out_channels=CHANNELS, block_out_channels=channels,
            layers_per_block=2, down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
            add_attention=False, norm_num_groups=4,
        )  # fmt: skip


def build_unet(kind: str, preset: str, device: str | torch.device = "cpu"):
    """``kind`` is ``"ddpmkit"``, ``"diffusers-params"`` or ``"diffusers-flops"``."""
    if kind == "ddpmkit":
        return ddpmkit_unet(preset, device)
    elif kind in ("diffusers-params", "diffusers-flops"):
        return diffusers_unet(DIFFUSERS_MATCHES[preset][kind.split("-")[1]], device)
    else:
        raise ValueError(f"unet kind {kind!r} must be one of ddpmkit, diffusers-params, diffusers-flops")


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model_factory: Callable[[str], torch.nn.Module]) -> dict[str, float]:
    """Forward and forward+backward FLOPs of one 32x32 image, counted on the meta device (no compute).

    ``torch.utils.flop_counter`` counts matrix multiplies and convolutions (2 FLOPs per multiply-add); norms,
    activations and the optimizer are not counted, as is usual for model FLOPs."""
    model = model_factory("meta")
    x = torch.empty(1, CHANNELS, RESOLUTION, RESOLUTION, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x, t)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(x, t).sample.sum().backward()
    return {"forward": float(forward), "forward_backward": float(counter.get_total_flops())}


def interleaved(cases: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Times each case ``repeats`` times in turn, after ``warmup`` untimed rounds, so that load from other processes
    hits every case alike. The order turns around every round (A B C, C B A, A B C, ...) so that no case always runs
    right after the same other one. Returns the seconds of each run."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for round_ in range(repeats):
        for name, fn in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """Relative half-range, (max - min) / (2 * median): how noisy a median is."""
    return (max(values) - min(values)) / (2 * statistics.median(values)) if values else float("nan")


# --- the CPU --------------------------------------------------------------------------------------------------------


def cpu_info() -> dict:
    """This CPU's model, cores, clock and vector flags, and its FP32 peak:

    ``peak = cores x clock x (SIMD width / 32 bits) x 2 (an FMA is two FLOPs) x FMA units per core``

    over the cores that torch's threads can use, with 2 FMA units per core for AVX2 and AVX-512 (Zen 2-4,
    Skylake-SP and later server parts). The clock is
    the nominal one /proc/cpuinfo reports; turbo can exceed it, so the fraction of peak is an upper estimate."""
    text = _read("/proc/cpuinfo")
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    model = _first(r"^model name\s*:\s*(.*)$", text) or platform.processor() or "unknown"
    mhz = float(_first(r"^cpu MHz\s*:\s*([\d.]+)$", text) or 0.0)
    lscpu = _run(["lscpu"])
    max_mhz = _first(r"^CPU max MHz:\s*([\d.]+)$", lscpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads_per_core = int(_first(r"^Thread\(s\) per core:\s*(\d+)$", lscpu) or 1)
    physical = max(1, cores // threads_per_core)
    if "avx512f" in flags:
        lanes, simd = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, simd = 8, "AVX2+FMA"
    elif "avx" in flags:
        lanes, simd = 8, "AVX"
    else:
        lanes, simd = 4, "SSE"
    fma_units = 2 if lanes >= 8 and "fma" in flags else 1
    flops_per_cycle = lanes * 2 * fma_units if "fma" in flags else lanes * 2
    clock_ghz = (mhz or float(max_mhz or 0)) / 1000
    used = min(physical, torch.get_num_threads())  # cores the benchmarks' threads can use
    peak = used * clock_ghz * 1e9 * flops_per_cycle
    return {
        "model": model, "cores": physical, "torch_threads": torch.get_num_threads(), "clock_ghz": clock_ghz,
        "max_mhz_lscpu": float(max_mhz) if max_mhz else None, "simd": simd, "fp32_lanes": lanes,
        "fma_units": fma_units, "flops_per_cycle_per_core": flops_per_cycle, "fp32_peak_flops": peak,
        "cores_used": used,
        "formula": f"{used} cores x {clock_ghz:.3f} GHz x {lanes} lanes x 2 (FMA) x {fma_units} FMA units "
        f"= {peak / 1e9:.1f} GFLOP/s",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }  # fmt: skip


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _first(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.M)
    return match.group(1).strip() if match else None
