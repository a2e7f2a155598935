"""Peak memory of one measurement, in a process of its own: ``python memory_worker.py train|sample PRESET BATCH``.

Prints one JSON line. After the imports and the model are built, the process's peak resident set size is reset
(``/proc/self/clear_refs``, Linux), so ``VmHWM`` at the end is the peak of training or sampling itself, and the rise
over ``VmRSS`` before it is what they need on top of the built model.
"""

import json
import resource
import sys

import torch
from common import build_unet
from sections import make_train_step, noise_scheduler

STEPS = 2


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> bool:
    """Resets the peak RSS to the current RSS (Linux >= 4.0), so imports do not hide the peak we measure."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(what: str, preset: str, batch: int) -> dict:
    from ddpmkit import DDPMPipeline

    torch.manual_seed(0)
    unet = build_unet("ddpmkit", preset)
    import_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    reset = reset_peak()
    before = status_mib("VmRSS")
    if what == "train":
        step = make_train_step(unet, noise_scheduler("ddpmkit"), batch)
        for _ in range(STEPS):
            step()
    elif what == "sample":
        pipe = DDPMPipeline(unet=unet.eval(), scheduler=noise_scheduler("ddpmkit"))
        pipe.set_progress_bar_config(disable=True)
        pipe(batch_size=batch, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np")
    else:
        raise ValueError(f"measurement {what!r} must be train or sample")
    peak = status_mib("VmHWM")
    return {
        "preset": preset,
        "what": what,
        "batch": batch,
        "steps": STEPS,
        "after_build_mib": before,
        "peak_rss_mib": peak,
        "rise_mib": peak - before,
        "import_peak_mib": import_peak,
        "peak_was_reset": reset,
    }


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: python memory_worker.py train|sample PRESET BATCH", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
