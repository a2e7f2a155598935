"""Which MNIST recipe gives the best samples per CPU-hour: a sweep of examples/train.py runs, scored as they train.

    python benchmarks/recipes.py --data ../shared/data/mnist --parallel 8 --minutes 6    # all recipes at once
    python benchmarks/recipes.py --only small-b64-lr2e-3-snr5                              # one of them

Every recipe runs with a constant learning rate after warmup, so its score at step N is the score of a run that
stops at N: one run draws the whole quality-vs-compute curve. Each scores 1,000 DDIM-50 EMA samples with the
committed MNIST classifier (``--eval_steps``) every 32,000 training images. What a recipe costs on a CPU is its
images divided by the CPU's training images/s for that model and batch (``--cpu_rates``, measured with
``benchmarks/run.py``-style timing on the CPU in question); GPUs only make the sweep quick, the images are the same.
Writes ``benchmarks/recipes/results.{json,md}``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "recipes"

MODELS = {
    "tiny": "tiny",
    "slim": "slim",
    "small": "small",
    "wide": {"block_out_channels": [48, 96, 192], "time_embedding_dim": 192, "norm_num_groups": 8},
    "base": {"block_out_channels": [64, 128, 256], "time_embedding_dim": 256, "norm_num_groups": 8},
    # small with self-attention at its lowest resolution (a preset), and with a middle residual block after it
    "small-attn": "small-attn",
    "small-attn-mid": {"block_out_channels": [32, 64, 128], "time_embedding_dim": 128, "norm_num_groups": 8,
                       "add_attention": True, "add_mid_block": True},
}

# name -> (model, batch, learning rate, Min-SNR gamma or None[, more train.py flags])
RECIPES = {
    "small-b64-lr1e-3": ("small", 64, 1e-3, None),
    "small-b64-lr2e-3": ("small", 64, 2e-3, None),
    "small-b64-lr2e-3-snr5": ("small", 64, 2e-3, 5.0),
    "small-b64-lr4e-3-snr5": ("small", 64, 4e-3, 5.0),
    "small-b32-lr1e-3-snr5": ("small", 32, 1e-3, 5.0),
    "small-b128-lr2e-3-snr5": ("small", 128, 2e-3, 5.0),
    "wide-b64-lr2e-3-snr5": ("wide", 64, 2e-3, 5.0),
    # narrower than small: fewer FLOPs per image, so more images per CPU-minute
    "slim-b32-lr1e-3-snr5": ("slim", 32, 1e-3, 5.0),
    "tiny-b32-lr1e-3-snr5": ("tiny", 32, 1e-3, 5.0),
    "base-b64-lr1e-3-snr5": ("base", 64, 1e-3, 5.0),
    # class labels (scored guided at DEFAULT_GUIDANCE, every class asked for equally often), and v-prediction
    "small-b32-lr1e-3-snr5-labels": ("small", 32, 1e-3, 5.0, ("--class_conditional",)),
    "small-b32-lr1e-3-snr5-labels-v": ("small", 32, 1e-3, 5.0, ("--class_conditional", "--prediction_type",
                                                                "v_prediction")),
    # the bottom of the UNet: self-attention at the lowest resolution, then also a middle residual block
    "small-attn-b32-lr1e-3-snr5-labels": ("small-attn", 32, 1e-3, 5.0, ("--class_conditional",)),
    "small-attn-mid-b32-lr1e-3-snr5-labels": ("small-attn-mid", 32, 1e-3, 5.0, ("--class_conditional",)),
}
EVAL_IMAGES = 32_000  # training images between two scores
MAX_IMAGES = 384_000  # about an hour of the small model on a 2-core CPU


def measure_cpu_rates(path: Path, names: list[str], resolution: int, rounds: int = 5) -> dict:
    """Training images/s of the models and batches of recipes ``names`` on this machine's CPU (fwd + bwd + AdamW
    step with Min-SNR weighting at ``resolution``), saved as JSON for ``--cpu_rates``. The models take turns
    (``common.interleaved``) for ``rounds`` rounds of at least 640 images each and the median counts, so drift hits
    them all alike."""
    import torch
    from common import interleaved, median  # benchmarks/common.py: imports torch, so not at the top

    from ddpmkit import ConvUNet2DModel, LinearDDPMScheduler, model_preset
    from ddpmkit.training import diffusion_loss

    scheduler, cases, images = LinearDDPMScheduler(), {}, {}
    for model, batch in sorted({RECIPES[name][:2] for name in names}):
        config = model_preset(MODELS[model]) if isinstance(MODELS[model], str) else MODELS[model]
        torch.manual_seed(0)
        unet = ConvUNet2DModel(sample_size=resolution, in_channels=1, **config)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
        x = torch.rand(batch, 1, resolution, resolution) * 2 - 1
        steps = max(3, 640 // batch)

        def run(unet=unet, x=x, optimizer=optimizer, steps=steps):
            for _ in range(steps):
                diffusion_loss(unet, scheduler, x, snr_gamma=5.0).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        key = f"{model}-b{batch}"
        cases[key], images[key] = run, steps * batch
    times = interleaved(cases, rounds, warmup=1)
    rates = {key: round(images[key] / median(seconds), 1) for key, seconds in times.items()}
    for key, rate in rates.items():
        rounds_seen = [round(images[key] / t) for t in times[key]]
        print(f"{key} at {resolution}x{resolution}: {rate:.1f} images/s (rounds {rounds_seen})")
    path.write_text(json.dumps(rates, indent=1) + "\n")
    return rates


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=str, default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--only", type=str, default=None, help="Comma-separated recipe names (default: all).")
    parser.add_argument("--parallel", type=int, default=1, help="Runs at once (a GPU fits several small ones).")
    parser.add_argument("--minutes", type=float, default=None, help="Stop every run after this long; keep scores.")
    parser.add_argument("--max_images", type=int, default=MAX_IMAGES, help="Training images per recipe.")
    parser.add_argument("--eval_samples", type=int, default=1000, help="Images scored at each evaluation.")
    parser.add_argument("--eval_images", type=int, default=EVAL_IMAGES, help="Training images between two scores.")
    parser.add_argument("--output", type=str, default=str(OUT / "results"),
                        help="Where the table goes, without suffix (.json and .md).")  # fmt: skip
    parser.add_argument("--work_dir", type=str, default=str(ROOT / "runs" / "recipes"))
    parser.add_argument("--cpu_rates", type=str, default=None,
                        help="JSON of 'model-bBATCH' -> CPU training images/s, to express costs in CPU-minutes.")
    parser.add_argument("--measure_cpu_rates", action="store_true",
                        help="Only measure this CPU's training images/s of the --only recipes (default all) "
                        "into --cpu_rates (default recipes/cpu_rates.json).")
    parser.add_argument("--resolution", type=int, default=28,
                        help="Image size of --measure_cpu_rates: 28, MNIST's own and the training default.")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More examples/train.py arguments.")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",")] if args.only else list(RECIPES)
    bad = [n for n in args.names if n not in RECIPES]
    if bad:
        parser.error(f"--only names unknown recipes {bad}; use some of {list(RECIPES)}")
    if not (Path(args.data) / "train.parquet").is_file():
        parser.error(f"--data {args.data} has no train.parquet; point it at a folder like ../shared/data/mnist")
    return args


def command(args, name: str, work: Path) -> list[str]:
    model, batch, lr, gamma, *more = RECIPES[name]
    config = MODELS[model]
    if isinstance(config, dict):
        path = work / f"{model}.json"
        path.write_text(json.dumps(config))
        config = str(path)
    cmd = [
        sys.executable, str(ROOT / "examples" / "train.py"), "--dataset", "mnist",
        "--train_data_files", str(Path(args.data) / "train.parquet"), "--output_dir", str(work / name),
        "--model_config", config, "--train_batch_size", str(batch), "--learning_rate", str(lr),
        "--lr_scheduler", "constant", "--lr_warmup_steps", str(max(1, 12_800 // batch)),
        "--max_train_steps", str(args.max_images // batch), "--eval_steps", str(args.eval_images // batch),
        "--eval_samples", str(args.eval_samples), "--eval_data", args.data, "--checkpointing_steps", "1000000",
        "--save_images_steps", "1000000", "--report_to", "none", "--logging_steps", "50",
        "--ddpm_num_inference_steps", "100",
    ]  # fmt: skip
    if gamma is not None:
        cmd += ["--snr_gamma", str(gamma)]
    return cmd + [flag for flags in more for flag in flags] + list(args.extra)


def collect(args, work: Path, seconds: dict) -> dict:
    rates = json.loads(Path(args.cpu_rates).read_text()) if args.cpu_rates else {}
    results = {}
    for name in args.names:
        model, batch, lr, gamma, *more = RECIPES[name]
        path = work / name / "eval_history.json"
        history = json.loads(path.read_text()) if path.exists() else []
        rate = rates.get(f"{model}-b{batch}")
        for row in history:
            row["images"] = row["step"] * batch
            row["cpu_minutes"] = None if rate is None else row["images"] / rate / 60
        results[name] = {"model": model, "batch": batch, "learning_rate": lr, "snr_gamma": gamma,
                         "flags": [flag for flags in more for flag in flags], "cpu_images_per_s": rate,
                         "wall_seconds": seconds.get(name), "history": history}  # fmt: skip
    return results


def markdown(results: dict) -> str:
    images = sorted({row["images"] for r in results.values() for row in r["history"]})
    marks = [i for i in images if i % 64_000 == 0] or images
    head = "| recipe | CPU img/s | " + " | ".join(f"FD @ {i // 1000}k img" for i in marks) + " | best FD (CPU min) |"
    lines = [head, "|---" * (len(marks) + 3) + "|"]
    for name, r in results.items():
        by_images = {row["images"]: row for row in r["history"]}
        cells = [f"{by_images[i]['classifier_fd']:.1f}" if i in by_images else "" for i in marks]
        best = min(r["history"], key=lambda row: row["classifier_fd"], default=None)
        best_cell = ""
        if best is not None:
            minutes = f", {best['cpu_minutes']:.0f}" if best["cpu_minutes"] is not None else ""
            best_cell = f"{best['classifier_fd']:.1f} ({best['images'] // 1000}k img{minutes})"
        rate = f"{r['cpu_images_per_s']:.0f}" if r["cpu_images_per_s"] else ""
        lines.append(f"| {name} | {rate} | " + " | ".join(cells) + f" | {best_cell} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.measure_cpu_rates:
        path = Path(args.cpu_rates or OUT / "cpu_rates.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        return measure_cpu_rates(path, args.names, args.resolution)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    deadline = time.time() + args.minutes * 60 if args.minutes else None
    pending, running, seconds = list(args.names), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            log = open(work / f"{name}.log", "w")
            running[name] = (subprocess.Popen(command(args, name, work), stdout=log, stderr=log, env=env),
                             time.time(), log)  # fmt: skip
            print(f"started {name}", flush=True)
        for name, (proc, start, log) in list(running.items()):
            if proc.poll() is not None or (deadline is not None and time.time() > deadline):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)
                seconds[name] = round(time.time() - start, 1)
                log.close()
                del running[name]
                print(f"{name}: exit {proc.returncode} after {seconds[name]:.0f}s", flush=True)
        if deadline is not None and time.time() > deadline:
            pending.clear()
        time.sleep(2)
    results = collect(args, work, seconds)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    output.with_suffix(".md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
