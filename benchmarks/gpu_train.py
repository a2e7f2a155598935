"""Training throughput where people train: ddpmkit's step against stock diffusers' step, on one device, in one run.

For each preset (32x32, one channel) it times ddpmkit's training step (``diffusion_loss`` with Min-SNR-5, AdamW,
the EMA update) and stock diffusers' own step (``UNet2DModel`` at matched training FLOPs, ``DDPMScheduler.add_noise``,
MSE, AdamW, ``EMAModel``) at the same precision and batch, interleaved, and prints images/s and the share of the
device's measured bf16 matrix peak. Made to run as one GPU job of a few minutes:

    python benchmarks/gpu_train.py                                   # on a GPU: small, base, tutorial
    python benchmarks/gpu_train.py --device cpu --presets tiny --batch_sizes 8 --seconds 1 --peak_size 512  # smoke

Writes ``gpu_train/results.json`` and ``gpu_train/results.md`` beside this file (or ``--out``).
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from common import DIFFUSERS_MATCHES, RESOLUTION, ddpmkit_unet, diffusers_unet, flops_per_image

HERE = Path(__file__).resolve().parent
DEFAULT_BATCH = {"tiny": 256, "small": 1024, "base": 512, "tutorial": 256}


def measured_peak(device: torch.device, size: int, dtype=torch.bfloat16, repeats: int = 20) -> float:
    """FLOP/s of a large square matrix multiply in ``dtype``: the ceiling a model's convolutions can approach."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def matched_diffusers_channels(preset: str) -> tuple[int, ...]:
    """The diffusers UNet2DModel channels whose training FLOPs per image are closest to the preset's (searched
    over (c, 2c, 4c, ...) in multiples of 4 with as many levels, unless common.py already holds a match)."""
    if preset in DIFFUSERS_MATCHES:
        return DIFFUSERS_MATCHES[preset]["flops"]
    target = flops_per_image(lambda device: ddpmkit_unet(preset, device))["forward_backward"]
    levels = len(ddpmkit_unet(preset, "meta").config.block_out_channels)
    best = None
    for base in range(8, 257, 4):
        channels = tuple(base * 2**i for i in range(levels))
        flops = flops_per_image(lambda device, c=channels: diffusers_unet(c, device))["forward_backward"]
        if best is None or abs(flops - target) < abs(best[1] - target):
            best = (channels, flops)
        if flops > 1.5 * target:
            break
    return best[0]


def ddpmkit_step(preset: str, batch: int, device: torch.device, dtype, channels_last: bool):
    """One optimizer step of ``ddpmkit train``: Min-SNR-5 loss, fused AdamW on CUDA, the foreach EMA update."""
    from diffusers.training_utils import EMAModel

    from ddpmkit import LinearDDPMScheduler
    from ddpmkit.training import diffusion_loss

    model = ddpmkit_unet(preset, device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, foreach=True)
    scheduler = LinearDDPMScheduler()
    images = _images(batch, device, channels_last)
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = diffusion_loss(model, scheduler, images, generator, snr_gamma=5.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step, model


def diffusers_step(channels: tuple[int, ...], batch: int, device: torch.device, dtype, channels_last: bool):
    """One optimizer step of diffusers' ``train_unconditional.py``: add_noise, MSE, AdamW, EMAModel."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    model = diffusers_unet(channels, device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    images = _images(batch, device, channels_last)

    def step():
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        noisy = scheduler.add_noise(images, noise, timesteps)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.mse_loss(model(noisy, timesteps).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step, model


def _images(batch: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.rand(batch, 1, RESOLUTION, RESOLUTION, device=device) * 2 - 1
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(steps: dict, batch: int, device: torch.device, seconds: float, warmup: int) -> dict:
    """Each step function run ``warmup`` times, then in turn (A B A B ...) for about ``seconds`` each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    done = {name: 0 for name in steps}
    spent = {name: 0.0 for name in steps}
    while min(spent.values()) < seconds:
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(5):
                step()
            _sync(device)
            spent[name] += time.perf_counter() - start
            done[name] += 5
    return {name: done[name] * batch / spent[name] for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", default=["small", "base", "tutorial"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=None, help="one per preset")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per side and preset")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak_size", type=int, default=8192, help="side of the matmul that measures the peak")
    parser.add_argument("--no_channels_last", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "gpu_train")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    batches = args.batch_sizes or [DEFAULT_BATCH.get(p, 256) for p in args.presets]
    peak = measured_peak(device, args.peak_size, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{name}: measured {args.dtype} matmul peak {peak / 1e12:.1f} TFLOP/s ({args.peak_size}^3)")
    rows = []
    for preset, batch in zip(args.presets, batches):
        channels = matched_diffusers_channels(preset)
        flops = {
            "ddpmkit": flops_per_image(lambda d, p=preset: ddpmkit_unet(p, d))["forward_backward"],
            "diffusers": flops_per_image(lambda d, c=channels: diffusers_unet(c, d))["forward_backward"],
        }
        ours, _ = ddpmkit_step(preset, batch, device, dtype, not args.no_channels_last)
        theirs, _ = diffusers_step(channels, batch, device, dtype, not args.no_channels_last)
        rates = images_per_second({"ddpmkit": ours, "diffusers": theirs}, batch, device, args.seconds, args.warmup)
        row = {"preset": preset, "batch": batch, "diffusers_channels": list(channels)}
        for side in ("ddpmkit", "diffusers"):
            row[side] = {"images_per_s": round(rates[side], 1), "gflop_per_image": round(flops[side] / 1e9, 3),
                         "share_of_peak": round(rates[side] * flops[side] / peak, 4)}  # fmt: skip
        row["ratio"] = round(rates["ddpmkit"] / rates["diffusers"], 3)
        rows.append(row)
        print(f"{preset:>9} batch {batch:>5}: ddpmkit {rates['ddpmkit']:9.0f} img/s "
              f"({row['ddpmkit']['share_of_peak']:.1%} of peak), diffusers {list(channels)} "
              f"{rates['diffusers']:9.0f} img/s ({row['diffusers']['share_of_peak']:.1%}), ratio {row['ratio']:.2f}",
              flush=True)  # fmt: skip
        del ours, theirs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"device": name, "dtype": args.dtype, "peak_flops": peak, "torch": torch.__version__, "rows": rows,
              "command": "python benchmarks/gpu_train.py " + " ".join(__import__("sys").argv[1:])}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Training throughput on {name} ({args.dtype}, measured peak {peak / 1e12:.1f} TFLOP/s)", "",
             "| preset | batch | ddpmkit img/s | share of peak | diffusers (matched FLOPs) img/s | share | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['ddpmkit']['images_per_s']:.0f} | "
                     f"{r['ddpmkit']['share_of_peak']:.1%} | {r['diffusers']['images_per_s']:.0f} | "
                     f"{r['diffusers']['share_of_peak']:.1%} | {r['ratio']:.2f} |")  # fmt: skip
    (args.out / "results.md").write_text("\n".join(lines) + f"\n\n`{record['command']}`\n")
    print(f"wrote {args.out / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
