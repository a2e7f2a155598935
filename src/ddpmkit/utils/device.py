"""What the machine is: a device's name for records and cards, whether the CPU multiplies bf16 natively, and
whether other work already keeps its cores busy."""

import glob
import os
import statistics
import time

import torch


def _cpu_info() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none): torch and ``platform``
    report neither the CPU's model name nor its bf16 flags on Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            info = {}
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
            return info
    except OSError:
        return {}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). torch has no public query for it, and its
    mkldnn check also says yes for AVX-512 without bf16, where bf16 is emulated and slower."""
    flags = _cpu_info().get("flags", "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_vector_units() -> str | None:
    """The widest vector and matrix units the CPU has, as the speed of training depends on them (``"AVX2"``,
    ``"AVX-512"``, ``"AVX512-BF16/AMX"``), or ``None`` where ``/proc/cpuinfo`` does not say."""
    flags = set(_cpu_info().get("flags", "").split())
    if "amx_bf16" in flags:
        return "AVX512-BF16/AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else None


def describe_device(device: torch.device | str) -> str:
    """``"cuda (NVIDIA H100 80GB HBM3)"`` or ``"cpu (Intel(R) Xeon(R) Processor, AVX512-BF16/AMX, 2 threads)"``:
    what a measured time was measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    name = _cpu_info().get("model name") or platform.processor() or platform.machine()
    units = cpu_vector_units()
    threads = torch.get_num_threads()
    return f"{device.type} ({name}{f', {units}' if units else ''}, {threads} thread{'s' if threads > 1 else ''})"


def _threads_running_elsewhere(readings: int = 5, interval: float = 0.02) -> float | None:
    """How many threads of other processes are running or waiting for a core right now (Linux; ``None``
    elsewhere): the median of a few readings of the kernel's runnable count in ``/proc/loadavg``, less this
    process's own runnable threads. Unlike the load average, it does not still count work that has just ended."""
    counts = []
    for i in range(readings):
        try:
            with open("/proc/loadavg") as f:
                runnable = int(f.read().split()[3].partition("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        own = 0
        for stat in glob.glob("/proc/self/task/*/stat"):
            try:
                with open(stat) as f:
                    own += f.read().rpartition(")")[2].split()[0] == "R"
            except (OSError, IndexError):  # a thread that ended between the listing and the read
                pass
        counts.append(max(0, runnable - own))
        if i + 1 < readings:
            time.sleep(interval)
    return statistics.median(counts)


def busy_cpu_warning(threads: int | None = None) -> str | None:
    """A warning when ``threads`` torch threads (default: this process's) and the work already running on the
    machine add up to at least one core more than this process may use, else ``None``. OpenMP threads then wait
    at every operation for a partner that is descheduled: two 2-thread trainings side by side on 2 cores ran at
    half the speed of two 1-thread ones on a 2-core AMD EPYC (README, "CPU threads"), about 15x slower on another
    machine. The work already there is the threads other processes have running now (Linux), else the 1-minute
    load average, which also counts work that has just ended; the margin of one core keeps that from warning."""
    threads = threads or torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
        load = _threads_running_elsewhere()
        load = os.getloadavg()[0] if load is None else load
    except (AttributeError, OSError):  # no affinity or load average on this system
        return None
    if threads < 2 or load + threads < cores + 1:
        return None
    share = max(1, min(threads, round(cores - load)))
    return (f"{threads} CPU threads on {cores} cores that other work already keeps busy ({load:.1f} cores' worth "
            f"running): threads that wait for each other can slow this run 2x or more; pass --num_threads {share} "
            "(or set OMP_NUM_THREADS), and give each job beside it its share too")
