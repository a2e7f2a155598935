"""Checkpoints: the full training state saved with Accelerate into ``checkpoint-N`` folders that are complete or
absent, verified before a resume, and never written over another one."""

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import torch

from ..utils.io import atomic_write_json, fsync_dir, is_disk_full
from .loss import TrainingError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_META = "ddpmkit_checkpoint.json"


class CorruptCheckpointError(TrainingError):
    """A checkpoint's files do not match what was written; the message names the file."""


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


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata as saved, its files unchecked; raises :class:`CorruptCheckpointError` when it
    cannot be read."""
    meta_path = Path(path) / CHECKPOINT_META
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as error:
        raise CorruptCheckpointError(f"{meta_path} is unreadable ({type(error).__name__}: {error})") from None
    return meta


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata, after checking that every file it lists is there with its recorded size and
    SHA-256; raises :class:`CorruptCheckpointError` naming the first file that is not."""
    path = Path(path)
    meta_path = path / CHECKPOINT_META
    meta = read_checkpoint_meta(path)
    files = meta.get("files")
    if files is None:  # written before checksums were recorded: trust it
        return meta
    if not isinstance(files, dict):
        raise CorruptCheckpointError(f"{meta_path} has a malformed file list")
    for name, record in files.items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpointError(f"{file} is missing")
        if not isinstance(record, dict) or file.stat().st_size != record.get("bytes"):
            raise CorruptCheckpointError(f"{file} is truncated or damaged ({file.stat().st_size} bytes)")
        if _digest(file) != record.get("sha256"):
            raise CorruptCheckpointError(f"{file} is damaged (its checksum differs from the one saved)")
    return meta


def resolve_checkpoint(
    output_dir: str | os.PathLike, resume_from: str | None, set_aside: bool = False, verify: bool = True
) -> Path | None:
    """``latest`` -> the newest checkpoint of ``output_dir`` that verifies (``None`` if there is none), saying which
    ones it skipped and why (with ``set_aside``, each is renamed ``checkpoint-N.damaged``, kept for a look but out of
    the way of the step that saves ``checkpoint-N`` again); a path -> that checkpoint, which must verify. With
    ``verify=False`` the files are not checked: the newest checkpoint, or the path if it is one."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        if not verify:
            return next(reversed(list_checkpoints(output_dir)), None)
        for path in reversed(list_checkpoints(output_dir)):
            try:
                verify_checkpoint(path)
            except CorruptCheckpointError as error:
                logger.warning("Skipping %s: %s", path.name, error)
                if set_aside:
                    aside = path.with_name(f"{path.name}.damaged")
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(path, aside)
                    logger.warning("Renamed it %s", aside.name)
                continue
            return path
        return None
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
    if verify:
        verify_checkpoint(path)
    return path


def check_checkpoint_compatible(path: str | os.PathLike, expected: dict) -> dict:
    """Raises ``ValueError`` if the checkpoint at ``path`` was made with a different model, scheduler or data
    shape than ``expected`` (a dict with ``unet``, ``scheduler``, ``data``); returns the checkpoint's metadata. Its
    files are not checked again: :func:`resolve_checkpoint` has verified them."""
    meta = read_checkpoint_meta(path)
    for section in ("unet", "scheduler", "data"):
        detail = _differences(meta.get(section, {}), expected.get(section, {}))
        if detail:
            raise ValueError(
                f"checkpoint {str(path)!r} is from a different {section} config ({detail}); resume with the flags it "
                "was trained with, or start fresh in another --output_dir"
            )
    if meta.get("dataset") and expected.get("dataset") and meta["dataset"] != expected["dataset"]:
        logger.warning("Resuming %s, trained on %s, with %s", path, meta["dataset"], expected["dataset"])
    return meta


def check_output_dir_model(output_dir: str | os.PathLike, unet_config: dict) -> None:
    """Raises ``ValueError`` if ``output_dir`` already holds a saved pipeline with a different UNet."""
    config_path = Path(output_dir) / "unet" / "config.json"
    if not config_path.is_file():
        return
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError, RecursionError):
        raise ValueError(f"{config_path} is unreadable; use another --output_dir or remove the folder") from None
    detail = _differences(saved, unet_config)
    if detail:
        raise ValueError(
            f"output_dir {str(output_dir)!r} already holds a different model ({detail}); use another --output_dir "
            "or the flags that model was trained with"
        )


def _differences(saved: dict, wanted: dict) -> str:
    """The first few keys where two configs differ, as "key: saved there, wanted now" ("" when they agree)."""
    saved, wanted = _plain(saved), _plain(wanted)
    differs = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differs[:3])


def _plain(config: dict) -> dict:
    """A config without private keys, with tuples as lists, comparable with one read back from JSON."""
    return {k: json.loads(json.dumps(v)) for k, v in dict(config).items() if not k.startswith("_")}


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, meta: dict, total_limit: int | None = None
) -> Path:
    """Saves the full training state with ``accelerator.save_state`` into ``tmp-checkpoint-N``, adds the metadata
    (with every file's size and SHA-256, written last) and renames it to ``checkpoint-N``; then keeps only the newest
    ``total_limit`` checkpoints. Must be called on every process. On failure the partial folder is removed and
    earlier checkpoints are untouched; an existing ``checkpoint-N`` is never replaced."""
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f"tmp-{CHECKPOINT_PREFIX}{step}"
    if final.exists():
        raise TrainingError(
            f"{final} already exists and would be replaced; resume with --resume_from_checkpoint latest or choose "
            "another --output_dir"
        )
    failed = torch.zeros(1, device=accelerator.device)
    error: BaseException | None = None
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest(p)}
                     for p in sorted(tmp.rglob("*")) if p.is_file()}  # fmt: skip
            atomic_write_json(tmp / CHECKPOINT_META, {**meta, "step": step, "files": files})
    except Exception as exc:  # OSError, and safetensors' and torch's own write errors
        error, failed = exc, failed + 1
    # every process learns whether any of them failed, so they stop together
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, reduction="sum")
    if failed.item() > 0:
        full = error is not None and is_disk_full(error, output_dir)  # before the partial files free the space
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        kept = f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
        reason = "the disk is full" if full else f"writing failed ({error})"
        raise TrainingError(
            f"could not save the checkpoint of step {step} to {str(tmp)!r}: {reason}; {kept}. Free space and "
            "resume with --resume_from_checkpoint latest"
        ) from error
    if accelerator.is_main_process:
        os.replace(tmp, final)
        fsync_dir(output_dir)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                logger.info("Removing old checkpoint %s (--checkpoints_total_limit %d)", old.name, total_limit)
                remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def remove_checkpoint(path: Path) -> None:
    """Renames the checkpoint to a ``tmp-`` name of its own first, so a crash half-way through the deletion leaves a
    folder that is ignored and cleaned up, never a ``checkpoint-N`` with some of its files missing."""
    doomed = path.with_name(f"tmp-removing-{uuid.uuid4().hex[:8]}-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def cleanup_stale_tmp(output_dir: str | os.PathLike) -> None:
    """Removes half-written checkpoint and pipeline folders left by a killed run."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_dir() and (path.name.startswith("tmp-") or path.name.startswith(".tmp-")):
            shutil.rmtree(path, ignore_errors=True)
