"""Reusable pieces of DDPM training: the loss, EMA, the learning-rate schedule, deterministic data order,
checkpoints with Accelerate, atomic file writes and an output-folder lock.

``examples/train.py`` puts them together; they are also usable one by one in a custom loop.
"""

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_META = "ddpmkit_checkpoint.json"
LOCK_NAME = ".ddpmkit.lock"
LR_SCHEDULES = ("cosine", "linear", "constant")
FAULT_ENV = "DDPMKIT_FAULT_AT"


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can fix; the message says how."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# --- fault injection (a test hook) -------------------------------------------------------------------------------


def fault_point(phase: str, index: int) -> None:
    """A test hook: with ``DDPMKIT_FAULT_AT=<phase>:<index>`` in the environment the process kills itself with
    ``SIGKILL`` on reaching that point, so tests can prove that a run killed exactly there resumes. The points are
    ``step:N`` (optimizer step N done, before its checkpoint), ``checkpoint:N`` (the state of step N written to
    ``tmp-checkpoint-N``, not yet renamed) and ``save:K`` (the final pipeline save, before moving its K-th file;
    K = the number of files: all moved, before the samples and the model card). Unset, it is one dictionary lookup.
    """
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{phase}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


# --- atomic files ---------------------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes) -> None:
    """The one place files get their bytes (tests simulate a full disk here)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a temporary file next to ``path`` and renames it into place: readers see the old file or
    the new one, never half of one. On failure the temporary file is removed and the old file is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
        _write_file(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_image(image, path: str | os.PathLike) -> None:
    """Saves a PIL image atomically, in the format its suffix names."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=_image_format(Path(path)))
    atomic_write_bytes(path, buffer.getvalue())


def _image_format(path: Path) -> str:
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"cannot save an image as {path.name!r}; use a .png, .jpg or .webp name")
    return formats[path.suffix.lower()]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def save_pipeline_atomically(pipeline, output_dir: str | os.PathLike) -> None:
    """``pipeline.save_pretrained(output_dir)``, written to a temporary folder first and moved in file by file
    (``model_index.json`` last), so that a crash leaves the folder loadable: the old files, the new ones, or old
    and new weights of the same architecture."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-pipeline-", dir=output_dir))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "model_index.json")  # the index last
        for index, file in enumerate(files):
            fault_point("save", index)
            target = output_dir / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            _fsync_file(file)
            os.replace(file, target)
            _fsync_dir(target.parent)
        fault_point("save", len(files))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# --- output folder lock ---------------------------------------------------------------------------------------------


class OutputDirLock:
    """An exclusive lock on a training output folder, so that two runs cannot write the same folder at once.

    Uses ``fcntl.flock`` where available, released by the operating system when the process dies, so a crashed
    run's lock never sticks; elsewhere a pid file whose owner is checked for liveness. The file records the
    owner's pid and host for the error message."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutputDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = f"{os.getpid()}@{socket.gethostname()}"
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_small(self.path) or "another process"
                os.close(fd)
                raise TrainingError(self._busy_message(holder)) from None
            os.ftruncate(fd, 0)
            os.write(fd, owner.encode())
            self._fd = fd
            return self
        holder = _read_small(self.path)  # pragma: no cover - Windows
        if holder and _pid_alive(holder):  # pragma: no cover
            raise TrainingError(self._busy_message(holder))
        atomic_write_text(self.path, owner)  # pragma: no cover
        return self  # pragma: no cover

    def _busy_message(self, holder: str) -> str:
        return (
            f"output_dir {str(self.path.parent)!r} is in use by another training run ({holder}); wait for it to "
            "finish or choose another --output_dir"
        )

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_small(path: Path) -> str:
    try:
        return path.read_text()[:200].strip()
    except OSError:
        return ""


def _pid_alive(owner: str) -> bool:  # pragma: no cover - used where flock is missing
    pid, _, host = owner.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- EMA ------------------------------------------------------------------------------------------------------------


class EMAModel:
    """Exponential moving average of a model's parameters, with the warmup of diffusers' ``EMAModel``:
    ``decay = min(max_decay, 1 - (1 + step / inv_gamma) ** -power)``, at least ``min_decay``.

    The averages live on the model's device in float32. ``state_dict``/``load_state_dict`` make it a checkpointable
    object for ``accelerator.register_for_checkpointing``.
    """

    def __init__(
        self,
        model: nn.Module,
        max_decay: float = 0.9999,
        min_decay: float = 0.0,
        inv_gamma: float = 1.0,
        power: float = 3 / 4,
        update_after_step: int = 0,
    ):
        if not 0.0 <= min_decay <= max_decay < 1.0:
            raise ValueError(f"EMA decays must satisfy 0 <= min_decay <= max_decay < 1, got {min_decay}, {max_decay}")
        if inv_gamma <= 0 or power <= 0:
            raise ValueError(f"EMA inv_gamma and power must be positive, got {inv_gamma}, {power}")
        self.max_decay, self.min_decay, self.inv_gamma, self.power = max_decay, min_decay, inv_gamma, power
        self.update_after_step = update_after_step
        self.shadow = [p.detach().clone().float() for p in model.parameters()]
        self.optimization_step = 0

    def get_decay(self, optimization_step: int) -> float:
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        decay = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(decay, self.max_decay))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Moves the averages towards ``model``'s parameters: ``s <- s - (1 - decay) * (s - p)``."""
        self.optimization_step += 1
        one_minus = 1.0 - self.get_decay(self.optimization_step)
        params = [p.detach().float() for p in model.parameters()]
        if len(params) != len(self.shadow):
            raise ValueError(f"EMA holds {len(self.shadow)} parameters but the model has {len(params)}")
        diffs = torch._foreach_sub(self.shadow, params)
        torch._foreach_add_(self.shadow, diffs, alpha=-one_minus)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Writes the averaged weights into ``model``."""
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            p.copy_(s.to(p.dtype))

    def to(self, device: torch.device | str) -> "EMAModel":
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    def state_dict(self) -> dict:
        return {
            "optimization_step": self.optimization_step, "max_decay": self.max_decay, "min_decay": self.min_decay,
            "inv_gamma": self.inv_gamma, "power": self.power, "update_after_step": self.update_after_step,
            "shadow_params": [s.cpu() for s in self.shadow],
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        shapes = [tuple(s.shape) for s in shadow]
        if shapes != [tuple(s.shape) for s in self.shadow]:
            raise ValueError("the saved EMA weights do not match this model; resume with the same --model_config")
        device = self.shadow[0].device if self.shadow else "cpu"
        self.shadow = [s.to(device=device, dtype=torch.float32) for s in shadow]
        self.optimization_step = int(state["optimization_step"])
        for key in ("max_decay", "min_decay", "inv_gamma", "power", "update_after_step"):
            setattr(self, key, state[key])

    def checksum(self) -> torch.Tensor:
        """A float64 fingerprint of the averages, for comparing copies across processes."""
        return torch.stack([s.double().sum() + s.double().abs().sum() for s in self.shadow]).sum().view(1)


# --- learning rate --------------------------------------------------------------------------------------------------


def lr_lambda(
    step: int,
    warmup_steps: int,
    total_steps: int,
    schedule: Literal["cosine", "linear", "constant"] = "cosine",
    min_ratio: float = 0.0,
) -> float:
    """The learning-rate multiplier at optimizer step ``step``: linear warmup from 0 over ``warmup_steps``, then
    ``schedule`` from 1 down to ``min_ratio`` at ``total_steps`` (the tutorial's CosineAnnealingLR to ``eta_min``)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "constant":
        return 1.0
    else:
        raise ValueError(f"lr schedule {schedule!r} must be one of {LR_SCHEDULES}")
    return min_ratio + (1.0 - min_ratio) * shape


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Literal["cosine", "linear", "constant"],
    warmup_steps: int,
    total_steps: int,
    lr_min: float = 1e-6,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` for :func:`lr_lambda`, stepped once per optimizer step; ``lr_min`` is an absolute floor."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_scheduler {schedule!r} must be one of {LR_SCHEDULES}")
    base = optimizer.param_groups[0]["lr"]
    if lr_min < 0 or lr_min > base:
        raise ValueError(f"lr_min {lr_min} must be between 0 and the learning rate {base}; lower --lr_min")
    ratio = lr_min / base if base > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_lambda(step, warmup_steps, total_steps, schedule, ratio)
    )


# --- the training step ----------------------------------------------------------------------------------------------


def diffusion_loss(
    model: nn.Module,
    noise_scheduler,
    clean_images: torch.Tensor,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The DDPM training loss of eq. (14) in Ho et al. 2020: ``|| eps - eps_theta(x_t, t) ||^2``.

    Args:
        model: a UNet taking ``(x_t, t)`` and returning an object with ``.sample`` or a tuple.
        noise_scheduler: gives ``add_noise`` and ``config.num_train_timesteps`` / ``prediction_type``.
        clean_images: ``x_0`` in ``[-1, 1]``, ``(B, C, H, W)``.
        generator: draws ``t`` and ``eps`` (on the images' device), making the step reproducible.
        snr_gamma: Min-SNR-gamma weighting (Hang et al. 2023): each image's error is weighted by
            ``min(SNR(t), gamma)`` relative to the prediction type's own weighting, so that the low-noise steps,
            which are easy, stop dominating the gradient. ``None`` is the plain loss above.
    """
    batch = clean_images.shape[0]
    device = clean_images.device
    # 1. t ~ U{0, T-1} and eps ~ N(0, I)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)  # (B,)
    noise = torch.randn(clean_images.shape, device=device, generator=generator, dtype=clean_images.dtype)
    # 2. x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eq. (4)
    noisy = noise_scheduler.add_noise(clean_images, noise, timesteps)  # (B, C, H, W)
    # 3. predict and compare with the target of the scheduler's prediction type
    kwargs = {} if class_labels is None else {"class_labels": class_labels}
    output = model(noisy, timesteps, **kwargs)
    prediction = output.sample if hasattr(output, "sample") else output[0]
    prediction_type = getattr(noise_scheduler.config, "prediction_type", "epsilon")
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = clean_images
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean_images, noise, timesteps)
    else:
        raise ValueError(f"prediction_type {prediction_type!r} must be one of epsilon, sample, v_prediction")
    if snr_gamma is None:
        return nn.functional.mse_loss(prediction.float(), target.float())
    # 4. Min-SNR-gamma: SNR(t) = alpha_bar_t / (1 - alpha_bar_t); the epsilon loss is the x_0 loss divided by SNR,
    # the v loss the x_0 loss divided by SNR + 1, so the weights that make it min(SNR, gamma) x the x_0 loss are:
    alpha_bar = noise_scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)[timesteps]  # (B,)
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=snr_gamma)
    weight = {"epsilon": clipped / snr, "sample": clipped, "v_prediction": clipped / (snr + 1)}[prediction_type]
    per_image = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))  # (B,)
    return (per_image * weight).mean()


def step_generator(seed: int, step: int, rank: int, micro_step: int, device: torch.device | str = "cpu"):
    """A generator for one micro-batch, derived from ``(seed, step, rank, micro_step)`` only, so a resumed run
    draws exactly the noise and timesteps an uninterrupted one would."""
    mixed = (seed * 1_000_003 + step) * 1_000_033 + rank * 1_009 + micro_step
    return torch.Generator(device=device).manual_seed(mixed % (2**63 - 1))


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the data in ``epoch``, the same on every process and after a resume."""
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def micro_batch_indices(
    permutation: torch.Tensor, step_in_epoch: int, micro_step: int, rank: int, batch_size: int,
    num_processes: int, accumulation_steps: int,
) -> torch.Tensor:  # fmt: skip
    """The indices of the micro-batch of process ``rank``: each optimizer step takes the next
    ``batch_size * num_processes * accumulation_steps`` items of the epoch's permutation."""
    total = batch_size * num_processes * accumulation_steps
    start = step_in_epoch * total + (micro_step * num_processes + rank) * batch_size
    return permutation[start : start + batch_size]


class TrainingProgress:
    """Where training stands (optimizer steps done), saved with every checkpoint as the data position."""

    def __init__(self, global_step: int = 0):
        self.global_step = global_step

    def state_dict(self) -> dict:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])


class LossMonitor:
    """Collects losses on the device and reads them back only every few steps, so training never waits on a
    host sync per step; raises :class:`NonFiniteLossError` naming the first NaN or infinite step."""

    def __init__(self):
        self._losses: list[torch.Tensor] = []
        self._first_step = 0

    def add(self, step: int, loss: torch.Tensor) -> None:
        if not self._losses:
            self._first_step = step
        self._losses.append(loss.detach().float().reshape(()))

    def flush(self, lr: float | None = None, reduce=None) -> float | None:
        """The mean of the losses since the last flush (``None`` if there were none).

        ``reduce`` (e.g. ``lambda t: accelerator.reduce(t, "mean")``) averages the losses over processes first, so
        that every process sees a NaN of any of them and all stop together."""
        if not self._losses:
            return None
        losses = torch.stack(self._losses)  # (steps,)
        if reduce is not None:
            losses = reduce(losses)
        values = losses.cpu().tolist()
        first, self._losses = self._first_step, []
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                step = first + offset
                raise NonFiniteLossError(
                    f"loss became {value} at step {step}; stopped without saving, so the last good checkpoint is "
                    "kept: resume it with --resume_from_checkpoint latest and a lower --learning_rate"
                    + (f" (now {lr:.3g})" if lr is not None else "")
                    + " or --mixed_precision no",
                    step,
                )
        return sum(values) / len(values)


# --- checkpoints ----------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (half-written ``tmp-`` folders are ignored)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / CHECKPOINT_META).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from: str | None) -> Path | None:
    """``latest`` -> the newest complete checkpoint of ``output_dir`` (``None`` if there is none yet), or a path."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from)
    if not path.is_dir() and (Path(output_dir) / resume_from).is_dir():
        path = Path(output_dir) / resume_from
    if not path.is_dir():
        raise ValueError(
            f"checkpoint {resume_from!r} does not exist; pass a checkpoint-N folder or --resume_from_checkpoint latest"
        )
    if not (path / CHECKPOINT_META).is_file():
        raise ValueError(
            f"{str(path)!r} is not a complete ddpmkit checkpoint (no {CHECKPOINT_META}); pick another checkpoint-N"
        )
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / CHECKPOINT_META).read_text())


def check_checkpoint_compatible(path: str | os.PathLike, expected: dict) -> dict:
    """Raises ``ValueError`` if the checkpoint at ``path`` was made with a different model, scheduler or data
    shape than ``expected`` (a dict with ``unet``, ``scheduler``, ``data``); returns the checkpoint's metadata."""
    meta = read_checkpoint_meta(path)
    for section in ("unet", "scheduler", "data"):
        saved, wanted = _plain(meta.get(section, {})), _plain(expected.get(section, {}))
        differs = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if differs:
            detail = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differs[:3])
            raise ValueError(
                f"checkpoint {str(path)!r} is from a different {section} config ({detail}); resume with the flags it "
                "was trained with, or start fresh in another --output_dir"
            )
    return meta


def check_output_dir_model(output_dir: str | os.PathLike, unet_config: dict) -> None:
    """Raises ``ValueError`` if ``output_dir`` already holds a saved pipeline with a different UNet."""
    config_path = Path(output_dir) / "unet" / "config.json"
    if not config_path.is_file():
        return
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{config_path} is unreadable; use another --output_dir or remove the folder") from None
    saved, wanted = _plain(saved), _plain(unet_config)
    differs = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differs:
        detail = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differs[:3])
        raise ValueError(
            f"output_dir {str(output_dir)!r} already holds a different model ({detail}); use another --output_dir "
            "or the flags that model was trained with"
        )


def _plain(config: dict) -> dict:
    """A config without private keys, with tuples as lists, comparable with one read back from JSON."""
    return {k: json.loads(json.dumps(v)) for k, v in dict(config).items() if not k.startswith("_")}


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, meta: dict, total_limit: int | None = None
) -> Path:
    """Saves the full training state with ``accelerator.save_state`` into ``tmp-checkpoint-N``, adds the metadata
    and renames it to ``checkpoint-N``; then keeps only the newest ``total_limit`` checkpoints. Must be called on
    every process. On failure the partial folder is removed and earlier checkpoints are untouched."""
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f"tmp-{CHECKPOINT_PREFIX}{step}"
    failed = torch.zeros(1, device=accelerator.device)
    error: BaseException | None = None
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        fault_point("checkpoint", step)
        if accelerator.is_main_process:
            atomic_write_json(tmp / CHECKPOINT_META, {**meta, "step": step})
    except OSError as exc:
        error, failed = exc, failed + 1
    # every process learns whether any of them failed, so they stop together
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, reduction="sum")
    if failed.item() > 0:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        kept = f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
        reason = "the disk is full" if error is not None and is_disk_full(error) else f"writing failed ({error})"
        raise TrainingError(
            f"could not save the checkpoint of step {step} to {str(tmp)!r}: {reason}; {kept}. Free space and "
            "resume with --resume_from_checkpoint latest"
        ) from error
    if accelerator.is_main_process:
        if final.exists():
            _remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                logger.info("Removing old checkpoint %s (--checkpoints_total_limit %d)", old.name, total_limit)
                _remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def _remove_checkpoint(path: Path) -> None:
    """Renames the checkpoint to ``tmp-checkpoint-N`` first, so a crash half-way through the deletion leaves a folder
    that is ignored and cleaned up, never a ``checkpoint-N`` with some of its files missing."""
    doomed = path.with_name(f"tmp-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def cleanup_stale_tmp(output_dir: str | os.PathLike) -> None:
    """Removes half-written checkpoint and pipeline folders left by a killed run."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_dir() and (path.name.startswith(f"tmp-{CHECKPOINT_PREFIX}") or path.name.startswith(".tmp-")):
            shutil.rmtree(path, ignore_errors=True)
