"""What the machine is: a device's name for records and cards, and whether the CPU multiplies bf16 natively."""

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


def describe_device(device: torch.device | str) -> str:
    """``"cuda (NVIDIA H100 80GB HBM3)"`` or ``"cpu (Intel(R) Xeon(R) Processor, 2 threads)"``: what a
    measured time was measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    name = _cpu_info().get("model name") or platform.processor() or platform.machine()
    return f"{device.type} ({name}, {torch.get_num_threads()} threads)"
