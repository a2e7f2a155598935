"""The training loop: data, model, optimizer and EMA under Accelerate; checkpoints, sample grids and evaluation
along the way; the pipeline, its record and its model card at the end.

>>> from ddpmkit.training import TrainingConfig, train  # doctest: +SKIP
>>> train(TrainingConfig(dataset="mnist", train_data_files=["mnist/train.parquet"], max_train_steps=2300))
"""

import contextlib
import functools
import json
import logging
import os
import time
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from ..data import DATASET_PRESETS, load_image_dataset, save_preview_grid
from ..hub import RUN_KEYS
from ..models import ConvUNet2DModel
from ..pipelines import DDPMPipeline
from ..pipelines.sampling import SAMPLERS, balanced_labels, sample_images, to_uint8
from ..utils.device import busy_cpu_warning, cpu_has_native_bf16, describe_device
from ..utils.images import image_grid
from ..utils.io import (
    atomic_save_image,
    atomic_write_json,
    is_disk_full,
    make_writable_folder,
    save_pretrained_atomically,
)
from ..utils.lock import FolderLock
from .checkpoints import (
    check_checkpoint_compatible,
    check_output_dir_model,
    checkpoint_step,
    cleanup_stale_tmp,
    list_checkpoints,
    read_checkpoint_meta,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import TrainingConfig
from .loss import LossMonitor, TrainingError, diffusion_loss
from .schedule import TrainingProgress, build_lr_scheduler, epoch_permutation, micro_batch_indices, step_generator

logger = logging.getLogger("ddpmkit.train")

EVAL_METRICS = {"classifier_fd": "classifier FD", "confidence": "confidence", "class_entropy": "class entropy"}


def train(config: TrainingConfig | None = None, command: list[str] | None = None, **options) -> Path:
    """Trains as ``config`` (or ``TrainingConfig(**options)``) says and returns the output folder, a pipeline
    folder with its model card.

    Args:
        config: the run's options.
        command: the command line shown in the model card (default: the ``ddpmkit train`` flags of ``config``).
    """
    config = config if config is not None else TrainingConfig(**options)
    if config.mixed_precision is None and "ACCELERATE_MIXED_PRECISION" not in os.environ:
        on_cpu = config.cpu or not torch.cuda.is_available()
        # bf16 autocast doubles a training step on CPUs with native bf16 at no cost in quality (benchmarks/README.md)
        config.mixed_precision = "bf16" if on_cpu and cpu_has_native_bf16() else "no"
    config.fill_resolution(resumed=_resumed_resolution(config))
    config.check()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (config.cpu or not torch.cuda.is_available()):
        os.environ["ACCELERATE_USE_CPU"] = "1"  # several processes without GPUs: gloo on the CPU
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; name a folder")
    make_writable_folder(output_dir, f"--output_dir {output_dir}")  # before accelerate and the lock touch it
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
        cpu=config.cpu,
    )
    if config.num_threads is not None:  # after the Accelerator, which sets its own share in a multi-CPU launch
        torch.set_num_threads(config.num_threads)
    _configure_logging(accelerator)
    lock = FolderLock(output_dir)
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except PermissionError as error:
            raise ValueError(f"--output_dir {output_dir} is not writable ({error}); choose another folder") from None
    try:
        return _Run(config, accelerator, output_dir, command).run()
    finally:
        accelerator.end_training()
        if accelerator.is_main_process:
            lock.release()


def _resumed_resolution(config: TrainingConfig) -> int | None:
    """The image size of the checkpoint a run resumes, for a run that leaves ``--resolution`` out (``None`` when
    there is none, or it cannot be read: the resume itself then says why)."""
    if config.resolution is not None or config.resume_from_checkpoint is None:
        return None
    # the metadata alone: every checkpoint of a folder has the same data shape, and the resume checks the files
    # (their SHA-256) once, later
    try:
        path = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint, verify=False)
        meta = read_checkpoint_meta(path) if path is not None else {}
    except (ValueError, TrainingError):
        return None
    data = meta.get("data")
    resolution = data.get("resolution") if isinstance(data, dict) else None
    return resolution if isinstance(resolution, int) and not isinstance(resolution, bool) else None


class _Run:
    """One call of :func:`train`: the state the steps share."""

    def __init__(self, config: TrainingConfig, accelerator, output_dir: Path, command: list[str] | None):
        self.config, self.accelerator, self.output_dir = config, accelerator, output_dir
        self.command = command or ["ddpmkit", "train", *config.to_argv()]
        self.main = accelerator.is_main_process
        self.eval_unet = None
        self.started = time.perf_counter()

    def _class_names(self) -> list[str]:
        """The class names of a class-conditional run: the data's own, else the label ids as names."""
        labels = self.dataset.labels
        if labels is None:
            raise ValueError(
                f"--class_conditional needs labels, and {self.dataset.source} has none: name the column with "
                "--label_column, use a dataset with a label column, or put a folder's images in class sub-folders"
            )
        names = self.dataset.class_names or [str(i) for i in range(int(labels.max()) + 1)]
        if int(labels.min()) < 0 or int(labels.max()) >= len(names):
            raise ValueError(f"the labels of {self.dataset.source} run outside the {len(names)} class names")
        return names

    # 1. data, the model config and the checks that need them, before any training
    def _prepare(self) -> None:
        config, accelerator, output_dir = self.config, self.accelerator, self.output_dir
        if self.main:
            cleanup_stale_tmp(output_dir)
        self._refuse_to_overwrite()
        if self.main:  # the main process sets damaged checkpoints aside; the others then find the same one
            self.checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint, set_aside=True)
        accelerator.wait_for_everyone()
        if not self.main:
            self.checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
        with accelerator.local_main_process_first():  # decoded once per machine (and cached)
            self.dataset = load_image_dataset(
                dataset=config.dataset, dataset_name=config.dataset_name,
                dataset_config_name=config.dataset_config_name, train_data_dir=config.train_data_dir,
                train_data_files=config.train_data_files, image_column=config.image_column,
                label_column=config.label_column, split=config.split, resolution=config.resolution,
                channels=config.channels, center_crop=config.center_crop, cache_dir=config.cache_dir,
                max_train_samples=config.max_train_samples,
            )  # fmt: skip
        logger.info("Training data: %s", self.dataset)
        if config.preview and self.main:
            save_preview_grid(self.dataset, output_dir / "preview.png", nrow=10, seed=config.seed)
            logger.info("Saved a preview of the training images to %s", output_dir / "preview.png")
        self.class_names = self._class_names() if config.class_conditional else None
        self.unet_config = config.unet_config(channels=self.dataset.num_channels, class_names=self.class_names)
        self.noise_scheduler = config.noise_scheduler()
        self.meta = {
            "unet": self.unet_config,
            "scheduler": {k: v for k, v in self.noise_scheduler.config.items() if not k.startswith("_")},
            "data": {"resolution": self.dataset.resolution, "channels": self.dataset.num_channels},
            "dataset": self.dataset.source,
            "train_batch_size": config.train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "num_processes": accelerator.num_processes,
            "seed": config.seed,
            "use_ema": config.use_ema,
        }
        self.checkpoint_runs: list = []
        if self.checkpoint is not None:
            saved = check_checkpoint_compatible(self.checkpoint, self.meta)
            self.checkpoint_runs = saved.get("runs") if isinstance(saved.get("runs"), list) else []
            changed = [k for k in ("train_batch_size", "gradient_accumulation_steps", "num_processes", "seed",
                                   "use_ema") if saved.get(k) != self.meta[k]]  # fmt: skip
            if "use_ema" in changed:
                raise ValueError(
                    f"checkpoint {self.checkpoint} was trained with use_ema={saved.get('use_ema')}; pass the same"
                )
            if changed:
                logger.warning("Resuming with other %s than %s: the run goes on, but not exactly", changed,
                               self.checkpoint)  # fmt: skip
        check_output_dir_model(output_dir, self.unet_config)
        self.total_batch = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
        self.steps_per_epoch = len(self.dataset) // self.total_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(self.dataset)} images, fewer than one step's {self.total_batch} "
                "(train_batch_size x processes x gradient_accumulation_steps); lower --train_batch_size or add images"
            )
        self.max_train_steps = config.max_train_steps or config.num_epochs * self.steps_per_epoch

    def _refuse_to_overwrite(self) -> None:
        """A folder that already holds checkpoints or a trained pipeline is only continued on request, and a resume
        from an older checkpoint never writes over the newer ones."""
        config, output_dir = self.config, self.output_dir
        checkpoints = list_checkpoints(output_dir)
        if config.resume_from_checkpoint is None and (checkpoints or (output_dir / "model_index.json").is_file()):
            what = checkpoints[-1].name if checkpoints else "a trained pipeline"
            raise ValueError(
                f"--output_dir {output_dir} already holds {what}; continue it with --resume_from_checkpoint latest, "
                "or choose a new --output_dir"
            )
        if config.resume_from_checkpoint not in (None, "latest") and checkpoints:
            start = Path(config.resume_from_checkpoint)
            if start.name.startswith("checkpoint-") and start.name[len("checkpoint-") :].isdigit():
                newer = [p.name for p in checkpoints if checkpoint_step(p) > checkpoint_step(start)]
                if newer:
                    raise ValueError(
                        f"--output_dir {output_dir} holds {', '.join(newer)}, newer than {start.name}, which "
                        "resuming from it would write over; resume from latest, move them away, or train the branch "
                        "in a new --output_dir"
                    )

    # 2. model, optimizer, schedule, EMA, and the saved state if resuming
    def _build(self) -> None:
        from accelerate.utils import set_seed

        config, accelerator = self.config, self.accelerator
        set_seed(config.seed)
        model = ConvUNet2DModel(**{k: v for k, v in self.unet_config.items() if not k.startswith("_")})
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # one fused kernel on a GPU; on a CPU fused AdamW measured 0.86x the default foreach one (benchmarks/README.md)
        fused = {"fused": True} if accelerator.device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon, **fused,
        )  # fmt: skip
        if config.compile:  # in place: the module, its state_dict keys and so its checkpoints stay as they are
            model.compile(mode=config.compile_mode)
        self.lr_scheduler = build_lr_scheduler(optimizer, config.lr_scheduler, config.lr_warmup_steps,
                                               self.max_train_steps, config.lr_min)  # fmt: skip
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.ema = None
        if config.use_ema:
            self.ema = EMAModel(
                _unwrap(self.model).parameters(), decay=config.ema_max_decay, use_ema_warmup=True,
                inv_gamma=config.ema_inv_gamma, power=config.ema_power, foreach=True,
            )  # fmt: skip
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.lr_scheduler, self.progress, *([self.ema] if self.ema else []))
        self.start_step = 0
        if self.checkpoint is not None:
            try:
                accelerator.load_state(str(self.checkpoint))
            except Exception as error:  # files that verify but do not load: a bug or a foreign checkpoint
                raise TrainingError(f"could not load {self.checkpoint}: {type(error).__name__}: {error}") from None
            step = self.start_step = self.progress.global_step
            lr = self.lr_scheduler.base_lrs[0] * self.lr_scheduler.lr_lambdas[0](step)
            logger.info("Resuming from %s at step %d of %d, learning rate %.3g", self.checkpoint, step,
                        self.max_train_steps, lr)  # fmt: skip
        elif config.resume_from_checkpoint == "latest":
            logger.info("No checkpoint in %s yet: starting a new run", self.output_dir)
        if len(self.dataset) * self.dataset.images[0].numel() < 2**31:
            self.dataset.images = self.dataset.images.to(accelerator.device)  # uint8 on the device

    def run(self) -> Path:
        config, accelerator = self.config, self.accelerator
        self._prepare()
        self._build()
        if self.main and config.report_to != "none":
            accelerator.init_trackers("train", config=_tracker_config(config))
        self.n_params = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "Training %s (%.2fM parameters) for %d steps (%.1f epochs of %d steps), %d images per step on %d "
            "process(es)", config.model_config, self.n_params / 1e6, self.max_train_steps,
            self.max_train_steps / self.steps_per_epoch, self.steps_per_epoch, self.total_batch,
            accelerator.num_processes,
        )  # fmt: skip
        if accelerator.device.type == "cpu" and accelerator.is_local_main_process:
            warning = busy_cpu_warning()
            if warning:
                logger.warning(warning)
        self._loop()
        self._finish()
        return self.output_dir

    # 3. the loop
    def _loop(self) -> None:
        from tqdm.auto import tqdm

        config, accelerator, progress = self.config, self.accelerator, self.progress
        monitor = LossMonitor()
        bar = tqdm(total=self.max_train_steps, initial=progress.global_step, desc="train", dynamic_ncols=True,
                   disable=config.quiet or not accelerator.is_local_main_process)  # fmt: skip
        tick, tick_step = time.perf_counter(), progress.global_step
        rank, world = accelerator.process_index, accelerator.num_processes
        accumulation = config.gradient_accumulation_steps
        images = self.dataset.images
        self.model.train()
        try:
            while progress.global_step < self.max_train_steps:
                step = progress.global_step
                epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
                permutation = epoch_permutation(len(self.dataset), config.seed, epoch)
                for micro in range(accumulation):
                    generator = step_generator(config.seed, step, rank, micro, device=accelerator.device)
                    indices = micro_batch_indices(permutation, step_in_epoch, micro, rank, config.train_batch_size,
                                                  world, accumulation)  # fmt: skip
                    flip = None
                    if config.random_flip:
                        flip = torch.rand(len(indices), generator=generator, device=accelerator.device) < 0.5
                    clean = self.dataset.batch(indices.to(images.device), accelerator.device, flip)  # (B, C, H, W)
                    labels = None
                    if self.class_names is not None:  # the null class for condition_dropout of the images
                        labels = self.dataset.labels[indices].to(accelerator.device, non_blocking=True)
                        drop = torch.rand(len(indices), generator=generator, device=accelerator.device)
                        labels = torch.where(drop < config.condition_dropout, len(self.class_names), labels)
                    if config.channels_last:
                        clean = clean.contiguous(memory_format=torch.channels_last)
                    last_micro = micro == accumulation - 1
                    sync = contextlib.nullcontext() if last_micro or world == 1 else accelerator.no_sync(self.model)
                    with sync, accelerator.autocast():
                        loss = diffusion_loss(self.model, self.noise_scheduler, clean, generator, labels,
                                              snr_gamma=config.snr_gamma or None)  # fmt: skip
                        accelerator.backward(loss / accumulation)
                    monitor.add(step + 1, loss)
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.step(_unwrap(self.model).parameters())
                progress.global_step += 1
                step = progress.global_step
                bar.update(1)

                # every few steps: read the loss back (the only host sync), log, checkpoint, sample, evaluate
                checkpoint_now = step % config.checkpointing_steps == 0
                images_now = step % config.save_images_steps == 0
                if step % config.logging_steps == 0 or checkpoint_now or images_now or step == self.max_train_steps:
                    lr = self.lr_scheduler.get_last_lr()[0]
                    reduce = (lambda t: accelerator.reduce(t, "mean")) if world > 1 else None
                    mean_loss = monitor.flush(lr, reduce=reduce)
                    now = time.perf_counter()
                    speed = (step - tick_step) * self.total_batch / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
                    if config.report_to != "none":
                        accelerator.log({"loss": mean_loss, "lr": lr, "images_per_s": speed,
                                         "epoch": step / self.steps_per_epoch}, step=step)  # fmt: skip
                if checkpoint_now:
                    runs = [{k: r[k] for k in RUN_KEYS if k in r} for r in self._previous_runs]
                    meta = {**self.meta, "runs": [*runs, self._segment(step)]}  # the history travels with it
                    path = save_checkpoint(accelerator, self.output_dir, step, meta, config.checkpoints_total_limit)
                    logger.info("Saved %s", path)
                if images_now and step < self.max_train_steps:
                    self._save_samples(step)
                if config.eval_steps and (step % config.eval_steps == 0 or step == self.max_train_steps):
                    self._evaluate(step)
        finally:
            bar.close()

    # 4. along the way: sample grids and scores of the weights the pipeline would save
    def _saved_weights(self) -> ConvUNet2DModel:
        """The weights the pipeline would save (EMA if kept), in a UNet reused across calls."""
        if self.eval_unet is None:
            config = _unwrap(self.model).config
            self.eval_unet = ConvUNet2DModel.from_config(config).to(self.accelerator.device).eval()
        self.eval_unet.load_state_dict(_unwrap(self.model).state_dict())
        if self.ema is not None:
            self.ema.copy_to(self.eval_unet.parameters())
        return self.eval_unet

    def _sample_grid(self, unet):
        """A grid of ``eval_batch_size`` samples, image ``i`` from seed ``seed + i``, so grids of steps compare."""
        pipeline = DDPMPipeline(unet=unet, scheduler=self.noise_scheduler)
        pipeline.set_progress_bar_config(disable=True)
        labels = balanced_labels(len(self.class_names), self.config.eval_batch_size) if self.class_names else None
        images = sample_images(pipeline, self.config.eval_batch_size, self.config.ddpm_num_inference_steps,
                               seed=self.config.seed, batch_size=self.config.eval_batch_size,
                               class_labels=labels)  # fmt: skip
        return image_grid(images)

    def _save_samples(self, step: int) -> None:
        if self.main:
            grid = self._sample_grid(self._saved_weights())
            atomic_save_image(grid, self.output_dir / "samples" / f"step-{step:07d}.png")
            self._log_grid(grid, step)
        self.accelerator.wait_for_everyone()

    def _evaluate(self, step: int) -> None:
        """Scores ``eval_samples`` samples of the saved weights (``eval_sampler``) and logs the metrics."""
        config = self.config
        if self.main:
            from ..evaluation import evaluate_images
            from ..pipelines.sampling import with_sampler

            pipeline = DDPMPipeline(unet=self._saved_weights(), scheduler=self.noise_scheduler)
            pipeline.set_progress_bar_config(disable=True)
            pipeline = with_sampler(pipeline, config.eval_sampler)
            start = time.perf_counter()
            labels = balanced_labels(len(self.class_names), config.eval_samples) if self.class_names else None
            images = to_uint8(sample_images(pipeline, config.eval_samples, SAMPLERS[config.eval_sampler],
                                            seed=config.seed, batch_size=100, class_labels=labels))  # fmt: skip
            cache_dir = Path(config.cache_dir) / "stats" if config.cache_dir else None
            results = evaluate_images(images, config.eval_data, classifier=config.eval_classifier, fid=False,
                                      floor_split=None, cache_dir=cache_dir)  # fmt: skip
            row = {"step": step, **{k: results[k] for k in EVAL_METRICS}, "num_samples": config.eval_samples,
                   "sampler": config.eval_sampler, "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
            path = self.output_dir / "eval_history.json"
            history = json.loads(path.read_text()) if path.exists() else []
            history = [r for r in history if r["step"] < step] + [row]  # a resumed run rewrites what it redoes
            atomic_write_json(path, history)
            if config.report_to != "none":
                self.accelerator.log({f"eval/{k}": row[k] for k in EVAL_METRICS}, step=step)
            logger.info("step %d: classifier FD %.2f, confidence %.3f, class entropy %.3f (%d %s samples, %.0fs)",
                        step, row["classifier_fd"], row["confidence"], row["class_entropy"], config.eval_samples,
                        config.eval_sampler, row["seconds"])  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _log_grid(self, grid, step: int) -> None:
        if self.config.report_to == "tensorboard":
            import numpy as np

            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")

    # 5. the end: check the processes agree, then save the pipeline (EMA weights), samples, record and card
    def _finish(self) -> None:
        config, accelerator, output_dir = self.config, self.accelerator, self.output_dir
        if self.ema is not None and accelerator.num_processes > 1:
            checksum = torch.stack([s.double().sum() + s.double().abs().sum() for s in self.ema.shadow_params])
            checksums = accelerator.gather(checksum.sum().view(1).to(accelerator.device))
            if not torch.allclose(checksums, checksums[0].expand_as(checksums), rtol=1e-6, atol=0):
                raise TrainingError(f"EMA weights differ between processes ({checksums.tolist()}); this is a bug")
            logger.info("EMA weights identical on all %d processes (checksum %.6f)", accelerator.num_processes,
                        checksums[0].item())  # fmt: skip
        accelerator.wait_for_everyone()
        if self.main:
            from ..hub import push_to_hub, write_model_card

            try:
                unet = ConvUNet2DModel(**{k: v for k, v in self.unet_config.items() if not k.startswith("_")})
                unet.load_state_dict(_unwrap(self.model).state_dict())
                if self.ema is not None:
                    self.ema.copy_to(unet.parameters())
                unet.eval()
                save_pretrained_atomically(DDPMPipeline(unet=unet, scheduler=self.noise_scheduler), output_dir)
                grid = self._sample_grid(unet.to(accelerator.device))
                atomic_save_image(grid, output_dir / "samples.png")
                self._log_grid(grid, self.progress.global_step)
                atomic_write_json(output_dir / "training_args.json", self._record())
                write_model_card(output_dir, repo_id=config.hub_model_id or output_dir.name, license=config.license)
            except Exception as error:
                if isinstance(error, OSError) or is_disk_full(error):
                    raise _final_save_error(output_dir, error) from error
                raise
            logger.info("Training finished: saved the pipeline to %s", output_dir)
            if config.push_to_hub:
                repo = push_to_hub(output_dir, config.hub_model_id or output_dir.name, config.hub_private_repo,
                                   config.hub_token)  # fmt: skip
                logger.info("Pushed to https://huggingface.co/%s", repo)
        accelerator.wait_for_everyone()

    def _record(self) -> dict:
        """``training_args.json``: the options, the command and the compute of this run (and of the runs before it,
        when it continued a finished one)."""
        config = self.config
        preset = DATASET_PRESETS.get(config.dataset) if config.dataset else None
        record = {
            **config.to_dict(),
            "command": self.command,
            "max_train_steps": self.max_train_steps,
            "total_batch_size": self.total_batch,
            "parameters": self.n_params,
            "dataset_id": preset.hub_id if preset else config.dataset_name or self.dataset.source,
            **self._segment(self.max_train_steps),
        }
        card = self._before.get("card")
        if isinstance(card, dict):
            record["card"] = card  # the card's own text stays with the folder
        if self._previous_runs:
            record["previous_runs"] = self._previous_runs
        return record

    def _segment(self, step: int) -> dict:
        """This run's part of the history, up to ``step``: what a card lists under Compute (``RUN_KEYS``)."""
        return {
            "command": self.command, "device": describe_device(self.accelerator.device),
            "started_at_step": self.start_step, "max_train_steps": step, "total_batch_size": self.total_batch,
            "train_seconds": round(time.perf_counter() - self.started, 1),
        }  # fmt: skip

    @functools.cached_property
    def _before(self) -> dict:
        """The ``training_args.json`` a resumed run finds in its output folder ({} when none or unreadable), read
        once: before this run writes its own."""
        path, before = self.output_dir / "training_args.json", None
        if self.start_step and path.is_file():
            try:
                before = json.loads(path.read_text())
            except (OSError, ValueError):
                pass
        return before if isinstance(before, dict) else {}

    @functools.cached_property
    def _previous_runs(self) -> list:
        """The runs that trained the steps before this one's start: from the output folder's
        ``training_args.json`` when it ends at or before the resumed step, else from the resumed checkpoint (which
        carries them, so a checkpoint copied to a fresh folder keeps its history)."""
        before = {k: v for k, v in self._before.items() if k != "card"}
        if before and before.get("max_train_steps", 0) <= self.start_step:
            return [*before.pop("previous_runs", []), before]
        return [
            r for r in self.checkpoint_runs if isinstance(r, dict) and r.get("max_train_steps", 0) <= self.start_step
        ]


def _final_save_error(output_dir: Path, error: BaseException) -> TrainingError:
    checkpoints = list_checkpoints(output_dir)
    kept = (
        f"the checkpoint {checkpoints[-1].name} is intact" if checkpoints
        else "no checkpoint was saved, so a rerun trains from the start"
    )  # fmt: skip
    reason = "the disk is full" if is_disk_full(error, output_dir) else f"writing failed ({error})"
    return TrainingError(
        f"could not save the trained pipeline to {str(output_dir)!r}: {reason}; {kept}. Free space and rerun with "
        "--resume_from_checkpoint latest to save it again"
    )


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _tracker_config(config: TrainingConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}


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
