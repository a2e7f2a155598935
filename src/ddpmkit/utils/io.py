"""Atomic file writes: every file ddpmkit writes into a pipeline, checkpoint or cache folder goes through here.

A reader (or a crash) sees the old file or the new one, never half of one: bytes go to a temporary file beside the
target, are flushed to disk and renamed into place.
"""

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".gif": "GIF"}


def write_file(path: Path, data: bytes) -> None:
    """The one place files get their bytes (tests simulate a full disk here)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a temporary file next to ``path`` and renames it into place. On failure the temporary
    file is removed and the old file is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the permissions open() would
        write_file(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


def atomic_save_image(image, path: str | os.PathLike, **save_kwargs) -> None:
    """Saves a PIL image atomically, in the format its suffix names (``.png``, ``.jpg``, ``.webp``, ``.gif``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"cannot save an image as {Path(path).name!r}; use a .png, .jpg, .webp or .gif name")
    buffer = io.BytesIO()
    image.save(buffer, format=IMAGE_FORMATS[suffix], **save_kwargs)
    atomic_write_bytes(path, buffer.getvalue())


def make_writable_folder(path: str | os.PathLike, label: str) -> Path:
    """Creates the folder ``path`` (and its parents) and checks that it can be written, before any work; raises
    ``ValueError`` naming ``label`` (the flag that chose it) and the fix."""
    folder = Path(path).expanduser()
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot create {label}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create {label}: {e.strerror or e}; choose another location") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{label} is not writable; choose another location")
    return folder


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


FULL_DISK_BYTES = 1 << 20


def is_disk_full(error: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or an exhausted quota. torch.save to a path on a full
    disk raises a bare ``RuntimeError`` ("unexpected pos ..."), so with ``folder`` (where the write went, checked
    before the partial file is removed) a write error on a disk with under 1 MiB free also counts."""
    first = error
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):  # safetensors' and torch's own write errors
            return True
        error = error.__cause__ or error.__context__
    if folder is None or not isinstance(first, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


def move_into(file: Path, target: Path) -> None:
    """Moves a finished file into place (flushed first, the folder after), creating the target's folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fsync_file(file)
    os.replace(file, target)
    fsync_dir(target.parent)


def save_pretrained_atomically(obj, output_dir: str | os.PathLike, index_name: str = "model_index.json") -> None:
    """``obj.save_pretrained(output_dir)``, written to a temporary folder first and moved in file by file (the index
    last), so that a crash leaves the folder loadable: the old files, the new ones, or old and new weights of the
    same architecture. Files get the permissions the umask gives (safetensors writes 0600), since pipelines are
    meant to be shared."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-pipeline-", dir=output_dir))
    try:
        obj.save_pretrained(staging, safe_serialization=True)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == index_name)  # the index last
        mode = 0o666 & ~umask()
        for file in files:
            os.chmod(file, mode)
            move_into(file, output_dir / file.relative_to(staging))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
