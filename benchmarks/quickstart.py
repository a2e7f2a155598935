"""The first run of a newcomer, side by side: the same 20 CPU-minutes of MNIST training with ddpmkit's quick-start
recipe and with a stock diffusers UNet2DModel, then 10x10 grids and the classifier metrics of both.

    python benchmarks/quickstart.py                       # both sides, 20 minutes each, then evaluation
    python benchmarks/quickstart.py --only diffusers      # one side; the other's earlier result is kept

ddpmkit's side is the README's quick-start command itself (``examples/train.py`` with ``QUICKSTART``), timed from
process start to the saved pipeline. diffusers' side is the loop of diffusers' ``train_unconditional.py`` reduced
to its essentials (a 32-64-128 ``UNet2DModel`` with one layer per block and no attention, 2.5M parameters, AdamW
1e-3, batch 128, EMA), trained until the same wall-clock budget is spent; its data is decoded before the clock
starts. Both are then sampled with DDIM-50 (1,000 images, seeds 0..999) and scored with the committed MNIST
classifier against the real-data floor. Writes ``benchmarks/quickstart/results.{json,md}`` and the grids.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parent
OUT = HERE / "quickstart"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"

# The quick-start recipe: examples/train.py's defaults (the slim preset, batch 32, AdamW 1e-3 with 200 warmup steps
# and cosine decay, Min-SNR-5, EMA), for as many steps as fit in 20 minutes on a 2-core CPU. Data and output folder
# are added by train_ddpmkit().
QUICKSTART = ["--max_train_steps", "4800"]
BATCH = 32  # examples/train.py's default --train_batch_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=20.0,
        help="diffusers' wall-clock budget with --only diffusers (with both sides it gets ddpmkit's measured time).",
    )  # fmt: skip
    parser.add_argument("--data", type=str, default=str(DEFAULT_DATA), help="Folder of MNIST {train,test}.parquet.")
    parser.add_argument("--only", choices=("ddpmkit", "diffusers", "both"), default="both")
    parser.add_argument("--num_samples", type=int, default=1000, help="Images scored per side.")
    parser.add_argument("--work_dir", type=str, default=str(ROOT / "runs" / "quickstart"), help="Trained models.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core).")
    parser.add_argument("--steps", type=int, default=None, help="Override the recipe's steps (smoke runs).")
    parser.add_argument("--skip_eval", action="store_true", help="Train only; score later with --eval_only.")
    parser.add_argument(
        "--eval_only",
        action="store_true",
        help="Score the models already trained in --work_dir (on a GPU if there is one).",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.num_samples < 2:
        parser.error(f"--minutes must be positive and --num_samples >= 2, got {args.minutes}, {args.num_samples}")
    if not (Path(args.data) / "train.parquet").is_file():
        parser.error(f"--data {args.data} has no train.parquet; point it at a folder like ../shared/data/mnist")
    return args


def train_ddpmkit(args, out_dir: Path) -> dict:
    recipe = list(QUICKSTART)
    if args.steps:
        recipe[recipe.index("--max_train_steps") + 1] = str(args.steps)
    command = [
        sys.executable, str(ROOT / "examples" / "train.py"), "--dataset", "mnist",
        "--train_data_files", str(Path(args.data) / "train.parquet"), "--output_dir", str(out_dir), *recipe,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    steps = int(recipe[recipe.index("--max_train_steps") + 1])
    relative = [os.path.relpath(c, ROOT) if c.startswith("/") else c for c in command[2:]]
    shown = ["python", "examples/train.py", *relative]
    return {"command": " ".join(shown), "train_seconds": seconds, "steps": steps, "batch": BATCH,
            "images_per_s": steps * BATCH / seconds}  # fmt: skip


def train_diffusers(args, out_dir: Path, budget: float) -> dict:
    """diffusers' train_unconditional.py loop (no accelerate wrapper, one process) for ``budget`` seconds."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    from ddpmkit.evaluation import load_labelled_images

    torch.manual_seed(0)
    data = torch.from_numpy(load_labelled_images(args.data, "train", 32, channels=1).images)  # uint8 (N, 1, 32, 32)
    model = UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
    )  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=UNet2DModel, model_config=model.config)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    steps, batch = 0, 128
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        index = torch.randint(0, len(data), (batch,), generator=generator)
        clean = data[index].float() / 127.5 - 1
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        loss = F.mse_loss(model(scheduler.add_noise(clean, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        steps += 1
        if steps % 25 == 0:
            print(f"diffusers step {steps} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s", flush=True)
    seconds = time.perf_counter() - start
    ema.copy_to(model.parameters())
    DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(out_dir)
    return {"train_seconds": seconds, "steps": steps, "batch": batch, "images_per_s": steps * batch / seconds,
            "params": sum(p.numel() for p in model.parameters())}  # fmt: skip


def evaluate(side: str, args, model_dir: Path) -> dict:
    import torch
    from diffusers import DDPMPipeline as StockPipeline

    from ddpmkit import DDPMPipeline
    from ddpmkit.evaluation import evaluate_pipeline
    from ddpmkit.utils.images import image_grid

    pipe = (DDPMPipeline if side == "ddpmkit" else StockPipeline).from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    results, images = evaluate_pipeline(
        pipe, args.data, args.num_samples, 50, "ddim", seed=0, fid=False, return_images=True
    )
    image_grid(images[:100].float() / 255, ncols=10, scale=1).save(OUT / f"grid-{side}.png")
    results["params"] = sum(p.numel() for p in pipe.unet.parameters())
    results["device"] = str(pipe.device)
    return results


def side_by_side() -> None:
    import PIL.Image
    import PIL.ImageDraw

    grids = [PIL.Image.open(OUT / f"grid-{side}.png").convert("L") for side in ("ddpmkit", "diffusers")]
    width, height = grids[0].width + grids[1].width + 20, max(g.height for g in grids) + 18
    canvas = PIL.Image.new("L", (width, height), 255)
    draw = PIL.ImageDraw.Draw(canvas)
    for x, grid, label in ((0, grids[0], "ddpmkit quick start"), (grids[0].width + 20, grids[1], "stock diffusers")):
        canvas.paste(grid, (x, 18))
        draw.text((x + 2, 3), label, fill=0)
    canvas.save(OUT / "side_by_side.png")


def markdown(results: dict) -> str:
    lines = [
        f"`python benchmarks/quickstart.py`: ddpmkit's quick-start command, then stock diffusers for the same "
        f"wall-clock time; both sampled with DDIM-50 ({results['num_samples']} samples) and scored with the committed "
        "MNIST classifier against real test images at the same resolution (the floor).",
        "",
        "| | trained | params | train s | steps x batch | img/s | classifier FD | floor | confidence "
        "| class entropy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side in ("ddpmkit", "diffusers"):
        if side not in results["sides"]:
            continue
        r = results["sides"][side]
        e = r["eval"]
        lines.append(
            f"| {side} | {r['date']}, {r['machine']} | {e['params'] / 1e6:.2f}M | {r['train_seconds']:.0f} | "
            f"{r['steps']} x {r['batch']} | {r['images_per_s']:.1f} | {e['classifier_fd']:.1f} | "
            f"{e['classifier_fd_floor']:.1f} | {e['confidence']:.3f} | {e['class_entropy']:.3f} |"
        )
    if "ddpmkit" in results["sides"]:
        lines += ["", f"ddpmkit's command: `{results['sides']['ddpmkit']['command']}`"]
    lines += ["", "![side by side](side_by_side.png)", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from common import cpu_info

    if args.threads:
        torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"sides": {}}
    results.update(date=datetime.date.today().isoformat(), num_samples=args.num_samples)
    if not args.eval_only:
        results.update(machine=f"{cpu_info()['model']}, {torch.get_num_threads()} torch threads")
    for side in ("ddpmkit", "diffusers"):
        if args.only not in (side, "both"):
            continue
        model_dir = work / side
        if args.eval_only:
            trained = results["sides"][side]
        elif side == "ddpmkit":
            shutil.rmtree(model_dir, ignore_errors=True)  # a fresh run, not a resumed one
            trained = train_ddpmkit(args, model_dir)
        else:  # the same wall-clock time as ddpmkit's whole run, when it ran now; else --minutes
            budget = results["sides"]["ddpmkit"]["train_seconds"] if args.only == "both" else args.minutes * 60
            trained = train_diffusers(args, model_dir, budget)
        if not args.eval_only:  # each side keeps when and where it trained: --only reruns one of them
            trained.update(date=results["date"], machine=results["machine"])
        if not args.skip_eval:
            trained["eval"] = evaluate(side, args, model_dir)
        results["sides"][side] = trained
        path.write_text(json.dumps(results, indent=2) + "\n")
        score = f", classifier FD {trained['eval']['classifier_fd']:.1f}" if "eval" in trained else ""
        print(f"{side}: {trained['steps']} steps in {trained['train_seconds']:.0f}s{score}", flush=True)
    if all((OUT / f"grid-{side}.png").exists() for side in ("ddpmkit", "diffusers")):
        side_by_side()
    if all("eval" in side for side in results["sides"].values()):
        (OUT / "results.md").write_text(markdown(results))
        print(markdown(results))
    return results


if __name__ == "__main__":
    main()
