"""Train a DDPM image generator and save it as a diffusers pipeline folder.

    accelerate launch examples/train.py --dataset mnist --train_data_files ../shared/data/mnist/train.parquet \\
        --model_config small --output_dir ddpm-mnist --max_train_steps 5000

Flags follow diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` where the meaning
matches. Run ``python examples/train.py --help`` for all of them.
"""

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from ddpmkit import MODEL_PRESETS, ConvUNet2DModel, DDPMPipeline, LinearDDPMScheduler, model_preset
from ddpmkit.data import (
    DATASET_PRESETS,
    add_dataset_args,
    check_dataset_args,
    check_resolution_for_unet,
    dataset_from_args,
    save_preview_grid,
)
from ddpmkit.hub import check_push_args, create_model_card, push_to_hub, save_model_card
from ddpmkit.pipelines.samplers import SAMPLERS
from ddpmkit.training import (
    EMAModel,
    LossMonitor,
    OutputDirLock,
    TrainingError,
    TrainingProgress,
    atomic_save_image,
    atomic_write_json,
    build_lr_scheduler,
    check_checkpoint_compatible,
    check_output_dir_model,
    cleanup_stale_tmp,
    diffusion_loss,
    epoch_permutation,
    fault_point,
    is_disk_full,
    list_checkpoints,
    micro_batch_indices,
    resolve_checkpoint,
    save_checkpoint,
    save_pipeline_atomically,
    step_generator,
    unwrap,
)

logger = logging.getLogger("ddpmkit.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a DDPM image generator (ddpmkit).")
    add_dataset_args(parser)

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model_config", type=str, default="small",
        help=f"UNet size: one of {', '.join(MODEL_PRESETS)} (tiny: tests; small: MNIST on a laptop CPU; base: "
        "CIFAR-10 on a GPU; tutorial: the 33M-parameter original, for a GPU), or a path to a ConvUNet2DModel "
        "config.json.",
    )  # fmt: skip
    group.add_argument("--ddpm_num_steps", type=int, default=1000, help="Diffusion steps T of training.")
    group.add_argument("--ddpm_beta_start", type=float, default=1e-4, help="First beta of the linear schedule.")
    group.add_argument("--ddpm_beta_end", type=float, default=0.02, help="Last beta of the linear schedule.")
    group.add_argument(
        "--prediction_type", type=str, default="epsilon", choices=("epsilon", "sample", "v_prediction"),
        help="What the model learns to predict; the tutorial's is epsilon (the noise).",
    )  # fmt: skip
    group.add_argument(
        "--ddpm_num_inference_steps", type=int, default=1000, help="Denoising steps of the sample grids."
    )

    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=str, default="ddpm-model", help="Where the pipeline and checkpoints go.")
    group.add_argument(
        "--train_batch_size", type=int, default=32,
        help="Images per process per micro-batch. Small batches learn the most per image (benchmarks/recipes).",
    )  # fmt: skip
    group.add_argument("--num_epochs", type=int, default=100, help="Epochs to train, unless --max_train_steps.")
    group.add_argument(
        "--max_train_steps", type=int, default=None, help="Optimizer steps to train; overrides --num_epochs."
    )
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    group.add_argument(
        "--learning_rate", type=float, default=1e-3,
        help="Peak learning rate (after warmup); 1e-3 suits the small presets, the tutorial's model took 1e-4.",
    )  # fmt: skip
    group.add_argument(
        "--lr_scheduler", type=str, default="cosine", choices=("cosine", "linear", "constant"),
        help="Decay after warmup: cosine (the tutorial's CosineAnnealingLR), linear, or constant.",
    )  # fmt: skip
    group.add_argument("--lr_warmup_steps", type=int, default=200, help="Steps of linear warmup from 0.")
    group.add_argument("--lr_min", type=float, default=1e-6, help="Learning rate at the end of the decay.")
    group.add_argument("--adam_beta1", type=float, default=0.95, help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    group.add_argument("--adam_weight_decay", type=float, default=1e-6, help="AdamW weight decay.")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables).")
    group.add_argument(
        "--snr_gamma", type=float, default=5.0,
        help="Min-SNR-gamma loss weighting (Hang et al. 2023): reaches a given sample quality in fewer steps "
        "(benchmarks/recipes). 0 trains with the plain DDPM loss of the tutorial.",
    )  # fmt: skip
    group.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, default=True,
        help="Keep an EMA of the weights; the saved pipeline uses it (--no-use_ema saves the raw weights).",
    )  # fmt: skip
    group.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warmup inverse gamma.")
    group.add_argument("--ema_power", type=float, default=3 / 4, help="EMA warmup power.")
    group.add_argument("--ema_max_decay", type=float, default=0.9999, help="Largest EMA decay.")
    group.add_argument(
        "--mixed_precision", type=str, default=None, choices=("no", "fp16", "bf16"),
        help="Mixed precision (fp16 needs a GPU). Default: what `accelerate config` says, else no.",
    )  # fmt: skip
    group.add_argument("--seed", type=int, default=0, help="Seed of weights, data order, noise and sample grids.")
    group.add_argument("--cpu", action="store_true", help="Train on the CPU even if a GPU is present.")
    group.add_argument(
        "--channels_last", action="store_true",
        help="Keep weights and activations in channels-last (NHWC) layout; faster convolutions on most CPUs and GPUs.",
    )  # fmt: skip

    group = parser.add_argument_group("checkpoints, samples and logs")
    group.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save the full training state every N steps."
    )
    group.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep only the newest K checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint", type=str, default=None,
        help="Continue from 'latest' (the newest checkpoint in --output_dir; starts fresh if none) or a path.",
    )  # fmt: skip
    group.add_argument(
        "--save_images_steps", type=int, default=1000,
        help="Save a grid of EMA samples to output_dir/samples/ (and TensorBoard) every N steps.",
    )  # fmt: skip
    group.add_argument("--eval_batch_size", type=int, default=16, help="Images in each sample grid.")
    group.add_argument(
        "--eval_steps", type=int, default=None,
        help="Every N steps (and at the end), score --eval_samples EMA samples with the dataset's classifier: "
        "classifier FD, confidence and class entropy go to TensorBoard, output_dir/eval_history.json and the card.",
    )  # fmt: skip
    group.add_argument("--eval_samples", type=int, default=500, help="Images scored at each --eval_steps.")
    group.add_argument(
        "--eval_sampler", type=str, default="ddim", choices=tuple(SAMPLERS),
        help="Sampler of the --eval_steps images, at its default number of steps (ddim: 50).",
    )  # fmt: skip
    group.add_argument(
        "--eval_data", type=str, default=None,
        help="Folder of {train,test}.parquet to score against (default: the folder of --train_data_files). The "
        "classifier is the one ddpmkit ships for the folder's name (mnist), or --eval_classifier.",
    )  # fmt: skip
    group.add_argument("--eval_classifier", type=str, default="auto", help="Classifier folder for --eval_steps.")
    group.add_argument(
        "--logging_steps", type=int, default=10,
        help="Read the loss back from the device, update the progress bar and log every N steps.",
    )  # fmt: skip
    group.add_argument(
        "--report_to", type=str, default=None, choices=("tensorboard", "none"),
        help="Where scalars and sample grids go; default tensorboard when it is installed.",
    )  # fmt: skip
    group.add_argument("--logging_dir", type=str, default="logs", help="TensorBoard folder, inside --output_dir.")
    group.add_argument(
        "--preview", action="store_true", help="Save a 10x10 grid of training images to output_dir/preview.png first."
    )

    group = parser.add_argument_group("sharing")
    group.add_argument("--push_to_hub", action="store_true", help="Upload the output folder to the Hub at the end.")
    group.add_argument("--hub_model_id", type=str, default=None, help="The repo, 'user/name' (default: folder name).")
    group.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    group.add_argument("--hub_token", type=str, default=None, help="Hub token; default: HF_TOKEN or the saved login.")
    group.add_argument("--license", type=str, default="apache-2.0", help="License in the model card metadata.")

    args = parser.parse_args(argv)
    args.command_line = _redact(list(sys.argv[1:] if argv is None else argv))
    if args.report_to is None:
        try:
            import tensorboard  # noqa: F401

            args.report_to = "tensorboard"
        except ImportError:
            args.report_to = "none"
    return args


def check_args(args: argparse.Namespace) -> None:
    """Checks every flag that can be checked without data; raises ``ValueError`` naming the value and the fix."""
    check_dataset_args(
        args.dataset, args.dataset_name, args.train_data_dir, args.train_data_files, args.resolution, args.channels,
        args.max_train_samples,
    )  # fmt: skip
    positive = (
        "train_batch_size", "num_epochs", "gradient_accumulation_steps", "checkpointing_steps", "save_images_steps",
        "eval_batch_size", "logging_steps", "ddpm_num_steps", "ddpm_num_inference_steps",
    )  # fmt: skip
    for name in positive:
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    for name in ("max_train_steps", "checkpoints_total_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if args.lr_warmup_steps < 0:
        raise ValueError(f"--lr_warmup_steps must be >= 0, got {args.lr_warmup_steps}")
    if not args.learning_rate > 0 or not math.isfinite(args.learning_rate):
        raise ValueError(f"--learning_rate must be a positive number, got {args.learning_rate}")
    if not 0 <= args.lr_min <= args.learning_rate:
        raise ValueError(f"--lr_min {args.lr_min} must be between 0 and --learning_rate {args.learning_rate}")
    if args.max_grad_norm < 0:
        raise ValueError(f"--max_grad_norm must be >= 0 (0 disables clipping), got {args.max_grad_norm}")
    if not (args.snr_gamma >= 0 and math.isfinite(args.snr_gamma)):
        raise ValueError(f"--snr_gamma must be >= 0 (5 is usual; 0 is the plain loss), got {args.snr_gamma}")
    if not 0 <= args.ema_max_decay < 1:
        raise ValueError(f"--ema_max_decay must be in [0, 1), got {args.ema_max_decay}")
    if args.mixed_precision == "fp16" and (args.cpu or not torch.cuda.is_available()):
        raise ValueError("--mixed_precision fp16 needs a GPU; on the CPU use --mixed_precision bf16 or no")
    check_push_args(args.push_to_hub, args.hub_model_id, args.hub_token)
    check_eval_args(args)
    unet_config(args, channels=args.channels or 1)  # the model config and the resolution, before any data is read


def check_eval_args(args: argparse.Namespace) -> None:
    """Fills ``args.eval_data`` from ``--train_data_files`` and checks the ``--eval_*`` flags."""
    if args.eval_steps is None:
        return
    if args.eval_steps < 1 or args.eval_samples < 2:
        raise ValueError(f"--eval_steps must be >= 1 and --eval_samples >= 2, got {args.eval_steps}, "
                         f"{args.eval_samples}")  # fmt: skip
    if args.eval_data is None and args.train_data_files:
        args.eval_data = str(Path(args.train_data_files[0]).parent)
    if args.eval_data is None or not (Path(args.eval_data) / "train.parquet").is_file():
        raise ValueError(
            f"--eval_steps scores samples against a local folder of train.parquet/test.parquet, and "
            f"{args.eval_data or 'none'} has no train.parquet; pass --eval_data DIR (e.g. ../shared/data/mnist)"
        )
    if args.eval_classifier == "auto":
        from ddpmkit.evaluation import bundled_classifier_path

        if bundled_classifier_path(Path(args.eval_data).name) is None:
            raise ValueError(
                f"ddpmkit ships no classifier for {Path(args.eval_data).name!r}; train one with `python -m "
                f"ddpmkit.evaluation train-classifier --dataset {args.eval_data} --output DIR` and pass "
                "--eval_classifier DIR"
            )
    elif not Path(args.eval_classifier).is_dir():
        raise ValueError(f"--eval_classifier {args.eval_classifier!r} is not a folder; pass a trained classifier")


def unet_config(args: argparse.Namespace, channels: int) -> dict:
    """The UNet config: a preset or a JSON file, with ``sample_size`` and ``in_channels`` from the data. Raises
    ``ValueError`` when the resolution does not suit the UNet's levels."""
    name = args.model_config
    if name in MODEL_PRESETS:
        config = model_preset(name)
    elif name.endswith(".json") or os.path.sep in name or os.path.exists(name):
        path = Path(name)
        if not path.is_file():
            raise ValueError(
                f"model config file {name!r} does not exist; use one of {sorted(MODEL_PRESETS)} or a path"
            )
        try:
            config = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"model config file {name!r} is not valid JSON ({error}); fix the file") from None
        if not isinstance(config, dict):
            raise ValueError(f"model config file {name!r} must hold a JSON object of ConvUNet2DModel arguments")
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    else:
        raise ValueError(f"unknown --model_config {name!r}; use one of {sorted(MODEL_PRESETS)} or a config.json path")
    config.update(sample_size=args.resolution, in_channels=channels, out_channels=None)
    check_resolution_for_unet(args.resolution, config)
    try:
        with torch.device("meta"):  # validates the config without allocating weights
            model = ConvUNet2DModel(**config)
    except TypeError as error:
        raise ValueError(f"--model_config {name!r} has an argument ConvUNet2DModel does not take: {error}") from None
    return dict(model.config)


def make_noise_scheduler(args: argparse.Namespace) -> LinearDDPMScheduler:
    return LinearDDPMScheduler(
        num_train_timesteps=args.ddpm_num_steps,
        beta_start=args.ddpm_beta_start,
        beta_end=args.ddpm_beta_end,
        prediction_type=args.prediction_type,
    )


def sample_grid(unet, noise_scheduler, args, device, num_images: int):
    """A grid of ``num_images`` samples (fixed seed, so grids of different steps compare) and the raw images."""
    from diffusers.utils import make_image_grid

    pipeline = DDPMPipeline(unet=unet, scheduler=noise_scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    images = pipeline(
        batch_size=num_images, generator=generator, num_inference_steps=args.ddpm_num_inference_steps,
        output_type="np",
    ).images  # fmt: skip
    cols = math.ceil(math.sqrt(num_images))
    rows = math.ceil(num_images / cols)
    pil = pipeline.numpy_to_pil(images)
    pil += [pil[0].copy().point(lambda _: 0)] * (rows * cols - len(pil))
    return make_image_grid(pil, rows=rows, cols=cols), images


def main(args: argparse.Namespace) -> Path:
    """Trains as ``args`` says and returns the output folder."""
    check_args(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (args.cpu or not torch.cuda.is_available()):
        os.environ["ACCELERATE_USE_CPU"] = "1"  # several processes without GPUs: gloo on the CPU
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        cpu=args.cpu,
    )
    _configure_logging(accelerator)
    lock = OutputDirLock(output_dir)
    if accelerator.is_main_process:
        lock.acquire()
    try:
        return _train(args, accelerator, output_dir)
    finally:
        accelerator.end_training()
        if accelerator.is_main_process:
            lock.release()


def _train(args: argparse.Namespace, accelerator, output_dir: Path) -> Path:
    from accelerate.utils import set_seed

    main_process = accelerator.is_main_process
    if main_process:
        cleanup_stale_tmp(output_dir)
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    accelerator.wait_for_everyone()

    # 1. data: decoded once per machine (and cached), then read from the cache by the other processes
    with accelerator.local_main_process_first():
        dataset = dataset_from_args(args)
    logger.info("Training data: %s", dataset)
    if args.preview and main_process:
        save_preview_grid(dataset, output_dir / "preview.png", nrow=10, seed=args.seed)
        logger.info("Saved a preview of the training images to %s", output_dir / "preview.png")

    # 2. the model config and the checks that need it, before any training
    config = unet_config(args, channels=dataset.num_channels)
    noise_scheduler = make_noise_scheduler(args)
    meta = {
        "unet": config,
        "scheduler": {k: v for k, v in noise_scheduler.config.items() if not k.startswith("_")},
        "data": {"resolution": dataset.resolution, "channels": dataset.num_channels},
        "train_batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_processes": accelerator.num_processes,
        "seed": args.seed,
        "use_ema": args.use_ema,
    }
    if checkpoint is not None:
        saved = check_checkpoint_compatible(checkpoint, meta)
        changed = [k for k in ("train_batch_size", "gradient_accumulation_steps", "num_processes", "seed", "use_ema")
                   if saved.get(k) != meta[k]]  # fmt: skip
        if "use_ema" in changed:
            raise ValueError(f"checkpoint {checkpoint} was trained with use_ema={saved.get('use_ema')}; pass the same")
        if changed:
            logger.warning("Resuming with other %s than %s: the run goes on, but not exactly", changed, checkpoint)
    check_output_dir_model(output_dir, config)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    steps_per_epoch = len(dataset) // total_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"the dataset has {len(dataset)} images, fewer than one step's {total_batch} (train_batch_size x "
            "processes x gradient_accumulation_steps); lower --train_batch_size or add images"
        )
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch

    # 3. model, optimizer, schedule, EMA
    set_seed(args.seed)
    model = ConvUNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )  # fmt: skip
    lr_scheduler = build_lr_scheduler(optimizer, args.lr_scheduler, args.lr_warmup_steps, max_train_steps, args.lr_min)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = None
    if args.use_ema:
        ema = EMAModel(unwrap(model), args.ema_max_decay, inv_gamma=args.ema_inv_gamma, power=args.ema_power)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(lr_scheduler, progress, *([ema] if ema else []))
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = progress.global_step  # a new --max_train_steps reshapes the decay from here on: say where it stands
        lr = lr_scheduler.base_lrs[0] * lr_scheduler.lr_lambdas[0](step)
        logger.info("Resuming from %s at step %d of %d, learning rate %.3g", checkpoint, step, max_train_steps, lr)
    elif args.resume_from_checkpoint == "latest":
        logger.info("No checkpoint in %s yet: starting a new run", output_dir)
    if len(dataset) * dataset.images[0].numel() < 2**31:
        dataset.images = dataset.images.to(accelerator.device)  # uint8 on the device: no host copy per step

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("train", config=_tracker_config(args))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Training %s (%.2fM parameters) for %d steps (%.1f epochs of %d steps), %d images per step on %d process(es)",
        args.model_config, n_params / 1e6, max_train_steps, max_train_steps / steps_per_epoch, steps_per_epoch,
        total_batch, accelerator.num_processes,
    )  # fmt: skip

    # 4. the loop
    monitor = LossMonitor()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=max_train_steps, initial=progress.global_step, disable=not accelerator.is_local_main_process,
        desc="train", dynamic_ncols=True,
    )  # fmt: skip
    tick, tick_step = time.perf_counter(), progress.global_step
    eval_unet = None
    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    try:
        while progress.global_step < max_train_steps:
            step = progress.global_step
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            permutation = epoch_permutation(len(dataset), args.seed, epoch)
            for micro in range(args.gradient_accumulation_steps):
                generator = step_generator(args.seed, step, rank, micro, device=accelerator.device)
                indices = micro_batch_indices(
                    permutation,
                    step_in_epoch,
                    micro,
                    rank,
                    args.train_batch_size,
                    world,
                    args.gradient_accumulation_steps,
                )
                flip = None
                if args.random_flip:
                    flip = torch.rand(len(indices), generator=generator, device=accelerator.device) < 0.5
                clean = dataset.batch(indices.to(dataset.images.device), accelerator.device, flip)  # (B, C, H, W)
                if args.channels_last:
                    clean = clean.contiguous(memory_format=torch.channels_last)
                last_micro = micro == args.gradient_accumulation_steps - 1
                sync = accelerator.no_sync(model) if not last_micro and world > 1 else _null()
                with sync, accelerator.autocast():
                    loss = diffusion_loss(model, noise_scheduler, clean, generator, snr_gamma=args.snr_gamma or None)
                    accelerator.backward(loss / args.gradient_accumulation_steps)
                monitor.add(step + 1, loss)
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr_scheduler.step()
            if ema is not None:
                ema.step(unwrap(model))
            progress.global_step += 1
            step = progress.global_step
            bar.update(1)
            fault_point("step", step)

            # 5. every few steps: read the loss back (the only host sync), log, checkpoint, sample
            checkpoint_now = step % args.checkpointing_steps == 0
            images_now = step % args.save_images_steps == 0
            if step % args.logging_steps == 0 or checkpoint_now or images_now or step == max_train_steps:
                lr = lr_scheduler.get_last_lr()[0]
                mean_loss = monitor.flush(lr, reduce=(lambda t: accelerator.reduce(t, "mean")) if world > 1 else None)
                now = time.perf_counter()
                speed = (step - tick_step) * total_batch / max(now - tick, 1e-9)
                tick, tick_step = now, step
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
                if args.report_to != "none":
                    accelerator.log(
                        {"loss": mean_loss, "lr": lr, "images_per_s": speed, "epoch": step / steps_per_epoch},
                        step=step,
                    )
            if checkpoint_now:
                path = save_checkpoint(accelerator, output_dir, step, meta, args.checkpoints_total_limit)
                logger.info("Saved %s", path)
            if images_now and step < max_train_steps:
                eval_unet = _save_samples(args, accelerator, model, ema, noise_scheduler, eval_unet, output_dir, step)
            if args.eval_steps and (step % args.eval_steps == 0 or step == max_train_steps):
                eval_unet = _evaluate(args, accelerator, model, ema, noise_scheduler, eval_unet, output_dir, step)
    finally:
        bar.close()

    # 6. the end: check the processes agree, then save the pipeline (EMA weights), samples and the model card
    if ema is not None and world > 1:
        checksums = accelerator.gather(ema.checksum().to(accelerator.device))
        if not torch.allclose(checksums, checksums[0].expand_as(checksums), rtol=1e-6, atol=0):
            raise TrainingError(f"EMA weights differ between processes ({checksums.tolist()}); this is a bug")
        logger.info("EMA weights identical on all %d processes (checksum %.6f)", world, checksums[0].item())
    accelerator.wait_for_everyone()
    if main_process:
        try:
            final_unet = _weights_for_saving(model, ema, config)
            pipeline = DDPMPipeline(unet=final_unet, scheduler=noise_scheduler)
            save_pipeline_atomically(pipeline, output_dir)
            grid, _ = sample_grid(final_unet.to(accelerator.device), noise_scheduler, args, accelerator.device,
                                  args.eval_batch_size)  # fmt: skip
            atomic_save_image(grid, output_dir / "samples.png")
            _log_grid(accelerator, args, grid, progress.global_step)  # no step ran when resumed at the end
            hub_id = DATASET_PRESETS[args.dataset].hub_id if args.dataset else args.dataset_name
            card = create_model_card(
                args.hub_model_id or output_dir.name,
                dataset=hub_id or dataset.source,
                command=["accelerate", "launch", "examples/train.py", *args.command_line],
                hyperparameters=_card_hyperparameters(args, max_train_steps, total_batch, n_params),
                sample_grid="samples.png",
                metrics=_card_metrics(args, output_dir),
                license=args.license,
            )
            save_model_card(card, output_dir)
            run_args = _tracker_config(args) | {"max_train_steps": max_train_steps}
            atomic_write_json(output_dir / "training_args.json", run_args)
        except OSError as error:
            raise _final_save_error(output_dir, error) from error
        logger.info("Training finished: saved the pipeline to %s", output_dir)
        if args.push_to_hub:
            repo = push_to_hub(output_dir, args.hub_model_id or output_dir.name, args.hub_private_repo, args.hub_token)
            logger.info("Pushed to https://huggingface.co/%s", repo)
    accelerator.wait_for_everyone()
    return output_dir


def _final_save_error(output_dir: Path, error: OSError) -> TrainingError:
    checkpoints = list_checkpoints(output_dir)
    kept = (
        f"the checkpoint {checkpoints[-1].name} is intact" if checkpoints
        else "no checkpoint was saved, so a rerun trains from the start"
    )  # fmt: skip
    reason = "the disk is full" if is_disk_full(error) else f"writing failed ({error})"
    return TrainingError(
        f"could not save the trained pipeline to {str(output_dir)!r}: {reason}; {kept}. Free space and rerun with "
        "--resume_from_checkpoint latest to save it again"
    )


def _weights_for_saving(model, ema, config: dict) -> ConvUNet2DModel:
    unet = ConvUNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    unet.load_state_dict(unwrap(model).state_dict())
    if ema is not None:
        ema.copy_to(unet)
    return unet.eval()


def _save_samples(args, accelerator, model, ema, noise_scheduler, eval_unet, output_dir: Path, step: int):
    if accelerator.is_main_process:
        eval_unet = _ema_unet(accelerator, model, ema, eval_unet)
        grid, _ = sample_grid(eval_unet, noise_scheduler, args, accelerator.device, args.eval_batch_size)
        atomic_save_image(grid, output_dir / "samples" / f"step-{step:07d}.png")
        _log_grid(accelerator, args, grid, step)
    accelerator.wait_for_everyone()
    return eval_unet


def _ema_unet(accelerator, model, ema, eval_unet):
    """The weights the pipeline would save (EMA if kept), in a UNet reused across calls."""
    if eval_unet is None:
        eval_unet = ConvUNet2DModel.from_config(unwrap(model).config).to(accelerator.device).eval()
    eval_unet.load_state_dict(unwrap(model).state_dict())
    if ema is not None:
        ema.copy_to(eval_unet)
    return eval_unet


EVAL_METRICS = {"classifier_fd": "classifier FD", "confidence": "confidence", "class_entropy": "class entropy"}


def _evaluate(args, accelerator, model, ema, noise_scheduler, eval_unet, output_dir: Path, step: int):
    """Scores ``--eval_samples`` EMA samples (``--eval_sampler``) and logs the metrics; main process only."""
    if accelerator.is_main_process:
        from ddpmkit.evaluation import evaluate_images, generate_images, with_scheduler

        eval_unet = _ema_unet(accelerator, model, ema, eval_unet)
        pipeline = with_scheduler(DDPMPipeline(unet=eval_unet, scheduler=noise_scheduler), args.eval_sampler)
        pipeline.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        images = generate_images(pipeline, args.eval_samples, SAMPLERS[args.eval_sampler], seed=args.seed)
        cache_dir = Path(args.cache_dir) / "stats" if args.cache_dir else None
        results = evaluate_images(
            images, args.eval_data, classifier=args.eval_classifier, fid=False, floor_split=None, cache_dir=cache_dir
        )
        row = {"step": step, **{k: results[k] for k in EVAL_METRICS}, "seconds": round(time.perf_counter() - start, 2)}
        path = output_dir / "eval_history.json"
        history = json.loads(path.read_text()) if path.exists() else []
        history = [r for r in history if r["step"] < step] + [row]  # a resumed run rewrites what it redoes
        atomic_write_json(path, history)
        if args.report_to != "none":
            accelerator.log({f"eval/{k}": row[k] for k in EVAL_METRICS}, step=step)
        logger.info(
            "step %d: classifier FD %.2f, confidence %.3f, class entropy %.3f (%d %s samples, %.0fs)", step,
            row["classifier_fd"], row["confidence"], row["class_entropy"], args.eval_samples, args.eval_sampler,
            row["seconds"],
        )  # fmt: skip
    accelerator.wait_for_everyone()
    return eval_unet


def _card_metrics(args, output_dir: Path) -> dict | None:
    path = output_dir / "eval_history.json"
    if not args.eval_steps or not path.exists():
        return None
    last = json.loads(path.read_text())[-1]
    what = f"{args.eval_samples} samples, {args.eval_sampler}-{SAMPLERS[args.eval_sampler]}, step {last['step']}"
    return {f"{name} ({what})": last[key] for key, name in EVAL_METRICS.items()}


def _log_grid(accelerator, args, grid, step: int) -> None:
    if args.report_to == "tensorboard":
        import numpy as np

        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        array = np.asarray(grid.convert("RGB"))  # (H, W, 3)
        tracker.add_image("samples", array, step, dataformats="HWC")


def _tracker_config(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}


def _card_hyperparameters(args, max_train_steps: int, total_batch: int, n_params: int) -> dict:
    keys = ("model_config", "resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
            "lr_scheduler", "lr_warmup_steps", "lr_min", "adam_weight_decay", "max_grad_norm", "snr_gamma", "use_ema",
            "ema_max_decay", "mixed_precision", "ddpm_num_steps", "prediction_type", "seed")  # fmt: skip
    out = {k: getattr(args, k) for k in keys}
    out.update(max_train_steps=max_train_steps, total_batch_size=total_batch, parameters=f"{n_params / 1e6:.2f}M")
    return out


def _redact(argv: list[str]) -> list[str]:
    """The command line with the value of ``--hub_token`` hidden, for the model card."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("REDACTED")
            hide = False
        elif arg == "--hub_token":
            out.append(arg)
            hide = True
        elif arg.startswith("--hub_token="):
            out.append("--hub_token=REDACTED")
        else:
            out.append(arg)
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _configure_logging(accelerator) -> None:
    import datasets
    import diffusers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
        level=logging.INFO if accelerator.is_main_process else logging.ERROR, force=True,
    )  # fmt: skip
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint lines drown the progress
    if not accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    if not accelerator.is_local_main_process:
        datasets.utils.logging.disable_progress_bar()


def cli(argv: list[str] | None = None) -> int:
    """Runs :func:`main`; errors the user can fix print one line (exit code 2 for bad input, 1 otherwise)."""
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        args = parse_args(argv)
        main(args)
    except ValueError as error:
        if main_rank:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        if main_rank:
            print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
