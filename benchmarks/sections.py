"""The benchmark sections. Each returns a JSON-able dict of rows; run.py prints and saves them.

Every comparison runs its cases interleaved (A B C C B A ...) in one process and reports medians, so the
ratios hold even when other processes load the machine; absolute numbers do not.
"""

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    CHANNELS,
    RESOLUTION,
    build_unet,
    flops_per_image,
    interleaved,
    median,
    num_params,
    spread,
)

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("ddpmkit", "diffusers-params", "diffusers-flops")
ADAMW = {"lr": 1e-4, "betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8}  # examples/train.py's defaults


@dataclass
class Settings:
    """How much work each section does; ``quick()`` is a smoke run, ``full()`` the published numbers."""

    presets: tuple[str, ...]
    train_batch: int
    train_steps: dict  # preset -> optimizer steps per timed run
    repeats: int
    sample_batch: int
    sample_timed_steps: dict  # method -> denoising steps actually run (scaled to the nominal count)
    overhead_batch: int
    overhead_steps: int
    overhead_logging_steps: int
    memory_train_batch: int
    memory_sample_batch: int

    @classmethod
    def full(cls) -> "Settings":
        return cls(
            presets=("tiny", "small", "tutorial"), train_batch=128,
            train_steps={"tiny": 8, "small": 2, "tutorial": 1}, repeats=3, sample_batch=100,
            sample_timed_steps={"DDPM-1000": 10, "DDIM-50": 20, "DPM-Solver++-20": 10}, overhead_batch=128,
            overhead_steps=40, overhead_logging_steps=5, memory_train_batch=128, memory_sample_batch=100,
        )  # fmt: skip

    @classmethod
    def quick(cls) -> "Settings":
        return cls(
            presets=("tiny", "small"), train_batch=32,
            train_steps={"tiny": 2, "small": 1, "tutorial": 1}, repeats=3, sample_batch=16,
            sample_timed_steps={"DDPM-1000": 4, "DDIM-50": 5, "DPM-Solver++-20": 4}, overhead_batch=32,
            overhead_steps=12, overhead_logging_steps=3, memory_train_batch=32, memory_sample_batch=16,
        )  # fmt: skip


NOMINAL_STEPS = {"DDPM-1000": 1000, "DDIM-50": 50, "DPM-Solver++-20": 20}


# --- 1. training throughput against stock diffusers ------------------------------------------------------------------


def noise_scheduler(kind: str):
    """ddpmkit's scheduler for ddpmkit's UNet, diffusers' DDPMScheduler for diffusers' (same linear schedule)."""
    if kind == "ddpmkit":
        from ddpmkit import LinearDDPMScheduler

        return LinearDDPMScheduler()
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def make_train_step(model, scheduler, batch: int, seed: int = 0, **optimizer_options):
    """One DDPM training step (eq. 14 of Ho et al. 2020) with AdamW, the same code for either library: draw t and
    eps, noise the batch, predict, MSE, backward, optimizer step. The loss stays on the device (no host sync)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW, **optimizer_options)
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, CHANNELS, RESOLUTION, RESOLUTION, generator=generator) * 2 - 1  # (B, C, H, W)

    def step():
        t = torch.randint(0, 1000, (batch,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        noisy = scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(model(noisy, t).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def repeat(fn, n: int):
    def run():
        for _ in range(n):
            fn()

    return run


def training(s: Settings, log) -> dict:
    rows = []
    for preset in s.presets:
        torch.manual_seed(0)
        models = {kind: build_unet(kind, preset) for kind in KINDS}
        counts = {kind: _counts(kind, preset, models[kind]) for kind in KINDS}
        cases = {
            kind: repeat(make_train_step(models[kind], noise_scheduler(kind), s.train_batch), s.train_steps[preset])
            for kind in KINDS
        }
        times = interleaved(cases, s.repeats)
        ips = {kind: s.train_batch * s.train_steps[preset] / median(times[kind]) for kind in KINDS}
        for kind in KINDS:
            row = {
                "preset": preset, "unet": kind,
                "channels": list(models[kind].config.block_out_channels), **counts[kind],
                "images_per_s": ips[kind], "spread": spread(times[kind]),
                "ratio_ddpmkit_over_this": ips["ddpmkit"] / ips[kind],
            }  # fmt: skip
            rows.append(row)
            log(f"training {preset:8s} {kind:17s} {row['params'] / 1e6:7.3f}M params "
                f"{row['train_gflops_per_image']:7.3f} GFLOP/img  {ips[kind]:8.1f} img/s  "
                f"ddpmkit/this {row['ratio_ddpmkit_over_this']:.3f}")  # fmt: skip
        del models, cases
    return {"batch": s.train_batch, "steps_per_run": s.train_steps, "repeats": s.repeats, "rows": rows}


def _counts(kind: str, preset: str, model) -> dict:
    flops = flops_per_image(lambda device: build_unet(kind, preset, device))
    return {
        "params": num_params(model), "forward_gflops_per_image": flops["forward"] / 1e9,
        "train_gflops_per_image": flops["forward_backward"] / 1e9,
    }  # fmt: skip


# --- 4. hardware efficiency -----------------------------------------------------------------------------------------


def efficiency(s: Settings, cpu: dict, log) -> dict:
    """Forward and forward+backward of ddpmkit's UNet alone (no optimizer), default layout and channels_last."""
    rows = []
    peak = cpu["fp32_peak_flops"]
    for preset in s.presets:
        torch.manual_seed(0)
        base = build_unet("ddpmkit", preset)
        fast = copy.deepcopy(base).to(memory_format=torch.channels_last)
        flops = flops_per_image(lambda device, preset=preset: build_unet("ddpmkit", preset, device))
        x = torch.randn(s.train_batch, CHANNELS, RESOLUTION, RESOLUTION)
        t = torch.randint(0, 1000, (s.train_batch,))

        def forward(model, x=x, t=t):
            def run():
                with torch.no_grad():
                    model(x, t)

            return run

        def forward_backward(model, x=x, t=t):
            def run():
                model(x, t).sample.square().mean().backward()
                model.zero_grad(set_to_none=True)

            return run

        cases = {
            ("forward", "default"): forward(base), ("forward_backward", "default"): forward_backward(base),
            ("forward", "channels_last"): forward(fast), ("forward_backward", "channels_last"): forward_backward(fast),
        }  # fmt: skip
        times = interleaved(cases, s.repeats)
        for (what, layout), ts in times.items():
            achieved = flops[what] * s.train_batch / median(ts)
            rows.append({
                "preset": preset, "pass": what, "layout": layout, "gflops_per_image": flops[what] / 1e9,
                "images_per_s": s.train_batch / median(ts), "achieved_gflops": achieved / 1e9,
                "fraction_of_peak": achieved / peak, "spread": spread(ts),
            })  # fmt: skip
            log(f"efficiency {preset:8s} {what:16s} {layout:13s} {achieved / 1e9:7.2f} GFLOP/s "
                f"= {100 * achieved / peak:5.1f}% of peak")  # fmt: skip
    return {"batch": s.train_batch, "peak_gflops": peak / 1e9, "peak_formula": cpu["formula"], "rows": rows}


# --- speed options: what each one is worth, A/B on the small preset ---------------------------------------------


def options(s: Settings, log, with_compile: bool = False) -> dict:
    preset = "small"
    torch.manual_seed(0)
    base = build_unet("ddpmkit", preset)
    scheduler = noise_scheduler("ddpmkit")

    def variant(memory_format=None, **optimizer_options):
        model = copy.deepcopy(base)
        if memory_format is not None:
            model = model.to(memory_format=memory_format)
        return repeat(make_train_step(model, scheduler, s.train_batch, **optimizer_options), s.train_steps[preset])

    cases = {
        "baseline (AdamW foreach)": variant(),
        "AdamW for-loop (foreach=False)": variant(foreach=False),
        "AdamW fused=True": variant(fused=True),
        "channels_last weights": variant(torch.channels_last),
        "channels_last + fused AdamW": variant(torch.channels_last, fused=True),
    }
    compile_seconds = None
    if with_compile:
        compiled = torch.compile(copy.deepcopy(base))
        step = make_train_step(compiled, scheduler, s.train_batch)
        start = time.perf_counter()
        step()  # the first call compiles
        compile_seconds = time.perf_counter() - start
        cases["torch.compile"] = repeat(step, s.train_steps[preset])
    times = interleaved(cases, s.repeats)
    reference = median(times["baseline (AdamW foreach)"])
    rows = []
    for name, ts in times.items():
        images_per_s = s.train_batch * s.train_steps[preset] / median(ts)
        rows.append({"what": "training step", "variant": name, "images_per_s": images_per_s,
                     "speedup": reference / median(ts), "spread": spread(ts)})  # fmt: skip
        log(f"options  train  {name:32s} speedup {reference / median(ts):.3f}")

    # sampling: no_grad (what both pipelines use) against inference_mode, and channels_last
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    fast = copy.deepcopy(base).eval().to(memory_format=torch.channels_last)
    base.eval()
    steps = s.sample_timed_steps["DDPM-1000"]  # per-step costs are what differ
    cases = {
        "bare loop, no_grad": lambda: bare_loop(base, ddim, s.sample_batch, steps, torch.no_grad),
        "bare loop, inference_mode": lambda: bare_loop(base, ddim, s.sample_batch, steps, torch.inference_mode),
        "bare loop, channels_last": lambda: bare_loop(fast, ddim, s.sample_batch, steps, torch.no_grad),
    }
    times = interleaved(cases, s.repeats)
    reference = median(times["bare loop, no_grad"])
    for name, ts in times.items():
        rows.append({"what": f"sampling DDIM-{steps}, batch {s.sample_batch}", "variant": name,
                     "images_per_s": s.sample_batch / median(ts), "speedup": reference / median(ts),
                     "spread": spread(ts)})  # fmt: skip
        log(f"options  sample {name:32s} speedup {reference / median(ts):.3f}")
    return {"preset": preset, "batch": s.train_batch, "compile_seconds": compile_seconds, "rows": rows}


# --- 3. sampling ----------------------------------------------------------------------------------------------------


def make_scheduler(method: str, base_config):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from ddpmkit import LinearDDPMScheduler

    if method == "DDPM-1000":
        return LinearDDPMScheduler.from_config(base_config)
    elif method == "DDIM-50":
        return DDIMScheduler.from_config(base_config)
    elif method == "DPM-Solver++-20":
        return DPMSolverMultistepScheduler.from_config(base_config, algorithm_type="dpmsolver++")
    else:
        raise ValueError(f"sampling method {method!r} must be one of {sorted(NOMINAL_STEPS)}")


def bare_loop(unet, scheduler, batch: int, steps: int, grad_mode=torch.no_grad, seed: int = 0) -> torch.Tensor:
    """The least a sampler must do: noise, then ``unet`` and ``scheduler.step`` per timestep."""
    generator = torch.Generator().manual_seed(seed)
    with grad_mode():
        x = torch.randn(batch, CHANNELS, RESOLUTION, RESOLUTION, generator=generator)
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
        return (x / 2 + 0.5).clamp(0, 1)


def sampling(s: Settings, log) -> dict:
    """Seconds per 100 images with the ``small`` UNet: ddpmkit's DDPMPipeline, stock diffusers.DDPMPipeline and a
    bare loop, each driving the same UNet and the same scheduler object."""
    import diffusers

    from ddpmkit import DDPMPipeline, LinearDDPMScheduler

    torch.manual_seed(0)
    unet = build_unet("ddpmkit", "small").eval()
    base_config = LinearDDPMScheduler().config
    rows = []
    for method, timed in s.sample_timed_steps.items():
        scheduler = make_scheduler(method, base_config)
        ours = DDPMPipeline(unet=unet, scheduler=scheduler)
        stock = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
        for pipe in (ours, stock):
            pipe.set_progress_bar_config(disable=True)

        def run(pipe, steps):
            return lambda: pipe(batch_size=s.sample_batch, generator=torch.Generator().manual_seed(0),
                                num_inference_steps=steps, output_type="np")  # fmt: skip

        cases = {
            "ddpmkit": run(ours, timed), "diffusers": run(stock, timed),
            "bare loop": lambda scheduler=scheduler, timed=timed: bare_loop(unet, scheduler, s.sample_batch, timed),
        }  # fmt: skip
        for warm in (run(ours, 2), run(stock, 2)):  # two steps warm up every kernel; the full run need not
            warm()
        times = interleaved(cases, s.repeats, warmup=0)
        scale = NOMINAL_STEPS[method] / timed * 100 / s.sample_batch
        per100 = {name: median(ts) * scale for name, ts in times.items()}
        row = {
            "method": method, "timed_steps": timed, "nominal_steps": NOMINAL_STEPS[method], "batch": s.sample_batch,
            "seconds_per_100_images": per100, "spread": {name: spread(ts) for name, ts in times.items()},
            "ratio_ddpmkit_over_diffusers": per100["ddpmkit"] / per100["diffusers"],
            # the two ran back to back in each round, so a round's ratio cancels the load that round saw
            "round_ratios": [a / b for a, b in zip(times["ddpmkit"], times["diffusers"])],
            "ddpmkit_overhead_over_bare": per100["ddpmkit"] / per100["bare loop"] - 1,
            "diffusers_overhead_over_bare": per100["diffusers"] / per100["bare loop"] - 1,
        }  # fmt: skip
        row["ratio_median_of_rounds"] = median(row["round_ratios"])
        rows.append(row)
        log(f"sampling {method:16s} s/100 img: ddpmkit {per100['ddpmkit']:8.2f} diffusers {per100['diffusers']:8.2f} "
            f"bare {per100['bare loop']:8.2f}  ratio {row['ratio_ddpmkit_over_diffusers']:.3f} "
            f"(per round {row['ratio_median_of_rounds']:.3f})")  # fmt: skip
    return {"unet": "small", "rows": rows}


def guidance(s: Settings, log) -> dict:
    """Classifier-free guidance against plain class-conditional sampling: seconds per 100 images with a
    class-conditional ``small`` UNet (10 classes and the null class), DDIM, the same steps and labels; beside them the
    UNet alone at the batch and at twice the batch, the least a guided step can cost."""
    from ddpmkit import ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler, model_preset
    from ddpmkit.pipelines.sampling import balanced_labels

    torch.manual_seed(0)
    unet = ConvUNet2DModel(sample_size=RESOLUTION, in_channels=CHANNELS, out_channels=CHANNELS, num_class_embeds=11,
                           id2label={str(i): str(i) for i in range(10)}, **model_preset("small")).eval()  # fmt: skip
    scheduler = make_scheduler("DDIM-50", LinearDDPMScheduler().config)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    batch, timed = s.sample_batch, s.sample_timed_steps["DDIM-50"]
    labels = balanced_labels(10, batch)

    def run(scale, steps=timed):
        return lambda: pipe(batch_size=batch, class_labels=labels, guidance_scale=scale, num_inference_steps=steps,
                            generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip

    def forward(n):
        x, t = torch.randn(n, CHANNELS, RESOLUTION, RESOLUTION), torch.full((n,), 500)
        y = torch.tensor((labels + labels)[:n])

        def go():
            with torch.no_grad():
                for _ in range(timed):
                    unet(x, t, class_labels=y)

        return go

    for warm in (run(1.0, 2), run(2.0, 2)):
        warm()
    single = forward(batch)

    def two_passes():
        single()
        single()

    cases = {"unguided": run(1.0), "guided (scale 2)": run(2.0), "UNet at the batch": single,
             "UNet at twice the batch": forward(2 * batch), "UNet twice at the batch": two_passes}  # fmt: skip
    times = interleaved(cases, s.repeats, warmup=0)
    scale = NOMINAL_STEPS["DDIM-50"] / timed * 100 / batch
    per100 = {name: median(ts) * scale for name, ts in times.items()}
    row = {
        "method": "DDIM-50", "timed_steps": timed, "batch": batch, "seconds_per_100_images": per100,
        "spread": {name: spread(ts) for name, ts in times.items()},
        "ratio_guided_over_unguided": per100["guided (scale 2)"] / per100["unguided"],
        "ratio_unet_double_over_single": per100["UNet at twice the batch"] / per100["UNet at the batch"],
        "ratio_unet_two_passes_over_single": per100["UNet twice at the batch"] / per100["UNet at the batch"],
    }  # fmt: skip
    log(f"guidance DDIM-50 s/100 img: unguided {per100['unguided']:.2f} guided {per100['guided (scale 2)']:.2f} "
        f"ratio {row['ratio_guided_over_unguided']:.3f} "
        f"(UNet 2B/B {row['ratio_unet_double_over_single']:.3f})")  # fmt: skip
    return {"unet": "small, class-conditional", "rows": [row]}


# --- 2. the training script's overhead over a bare loop -----------------------------------------------------------


def overhead(s: Settings, log, data_file: str) -> dict:
    """``examples/train.py`` (EMA, grad clipping, LR schedule, data batching, logging) against a bare
    fwd+bwd+AdamW loop on the same model config and batch size. train.py's own images/s (logged to TensorBoard
    every ``logging_steps``) is read back; its first interval (warmup) is dropped. Run A B A B."""
    script = ROOT / "examples" / "train.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} is missing; this section measures it")
    if not Path(data_file).is_file():
        raise FileNotFoundError(f"training data {data_file} is missing; pass --mnist_file")
    from ddpmkit.training import diffusion_loss  # the loss train.py uses

    torch.manual_seed(0)
    model = build_unet("ddpmkit", "small")
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)
    scheduler = noise_scheduler("ddpmkit")
    clean = torch.rand(s.overhead_batch, CHANNELS, RESOLUTION, RESOLUTION) * 2 - 1
    generator = torch.Generator().manual_seed(0)

    def bare_interval_speeds() -> list[float]:
        speeds, tick = [], time.perf_counter()
        for step in range(1, s.overhead_steps + 1):
            loss = diffusion_loss(model, scheduler, clean, generator, snr_gamma=5.0)  # train.py's default loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % s.overhead_logging_steps == 0:
                loss.item()  # train.py reads the loss back at the same points
                now = time.perf_counter()
                speeds.append(s.overhead_logging_steps * s.overhead_batch / (now - tick))
                tick = now
        return speeds[1:]

    script_speeds, bare_speeds, wall = [], [], []
    for _ in range(2):
        with tempfile.TemporaryDirectory(prefix="ddpmkit-bench-") as out:
            start = time.perf_counter()
            script_speeds += _train_script_speeds(script, out, data_file, s)
            wall.append(time.perf_counter() - start)
        bare_speeds += bare_interval_speeds()
    script_ips, bare_ips = median(script_speeds), median(bare_speeds)
    result = {
        "model": "small", "batch": s.overhead_batch, "steps": s.overhead_steps,
        "logging_steps": s.overhead_logging_steps, "train_py_images_per_s": script_ips,
        "bare_loop_images_per_s": bare_ips, "slowdown": 1 - script_ips / bare_ips,
        "train_py_wall_seconds": wall, "train_py_intervals": script_speeds, "bare_intervals": bare_speeds,
    }  # fmt: skip
    log(f"overhead train.py {script_ips:8.1f} img/s, bare loop {bare_ips:8.1f} img/s: "
        f"train.py {100 * result['slowdown']:+.1f}% slower")  # fmt: skip
    return result


def _train_script_speeds(script: Path, out: str, data_file: str, s: Settings) -> list[float]:
    big = str(10**9)
    cmd = [
        sys.executable, str(script), "--dataset", "mnist", "--train_data_files", data_file, "--resolution",
        str(RESOLUTION), "--model_config", "small", "--train_batch_size", str(s.overhead_batch), "--max_train_steps",
        str(s.overhead_steps), "--output_dir", out, "--logging_steps", str(s.overhead_logging_steps),
        "--checkpointing_steps", big, "--save_images_steps", big, "--report_to", "tensorboard",
        "--ddpm_num_inference_steps", "1", "--eval_batch_size", "1", "--lr_warmup_steps", "0", "--cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"examples/train.py failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    speeds = []
    for events in Path(out).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        if "images_per_s" in acc.Tags().get("scalars", []):
            speeds = [e.value for e in sorted(acc.Scalars("images_per_s"), key=lambda e: e.step)]
    if len(speeds) < 2:
        raise RuntimeError(f"examples/train.py logged {len(speeds)} images_per_s values; expected at least 2")
    return speeds[1:]


# --- 5. peak memory -------------------------------------------------------------------------------------------------


def memory(s: Settings, log) -> dict:
    """Peak resident memory (``VmHWM``, reset after the imports) of a fresh process per measurement, and its rise
    over the same process right after importing torch, diffusers and ddpmkit and building the model."""
    rows = []
    worker = Path(__file__).with_name("memory_worker.py")
    for preset in s.presets:
        for what, batch in (("train", s.memory_train_batch), ("sample", s.memory_sample_batch)):
            cmd = [sys.executable, str(worker), what, preset, str(batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=worker.parent, env=_child_env())
            if proc.returncode != 0:
                raise RuntimeError(f"memory worker failed: {proc.stderr.strip()[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            log(f"memory   {preset:8s} {what:6s} batch {batch:4d}: peak {row['peak_rss_mib']:8.1f} MiB "
                f"(+{row['rise_mib']:.1f} MiB over the built model)")  # fmt: skip
    return {"method": "VmHWM of a fresh process, reset after imports and model build", "rows": rows}


def _child_env() -> dict:
    """Subprocesses use as many threads as this process."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
