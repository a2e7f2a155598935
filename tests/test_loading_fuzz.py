"""Fuzzing ``DDPMPipeline.from_pretrained`` with damaged copies of a valid tiny pipeline folder.

Every example copies the folder, applies one to three mutations (truncation, bit flips, safetensors header edits,
malformed or wrong-typed JSON, missing, extra or replaced files, links out of the folder, link loops, FIFOs) and
then asserts the contract of :mod:`ddpmkit.loading`: either a correct load, after which the pipeline samples two
steps into finite images of the configured shape, or exactly one ``ValueError``/``OSError`` with a readable
message. Never another exception, a hang (the timeout marks) or a model with missing or meta weights.
"""

import json
import os
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ModelMixin, SchedulerMixin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import make_tiny_pipeline

from ddpmkit import ConvUNet2DModel, DDPMPipeline

JSON_FILES = ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json"]
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
FILES = JSON_FILES + [WEIGHTS]
PATHS = FILES + ["unet", "scheduler"]
DEFAULT_EXAMPLES = 80
SLOW_EXAMPLES = 2000


@pytest.fixture(scope="module")
def valid_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("valid") / "pipe"
    make_tiny_pipeline().save_pretrained(path)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == sorted(FILES)
    return path


# ---------------------------------------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 7, 8, 16, 10**9, -(10**9)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["linear", "epsilon", "silu", "ddpmkit", "diffusers", "fixed_large", "", "null"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
# keys the files really hold, so that a changed value reaches the code that reads it
KNOWN_KEYS = [
    "_class_name", "_diffusers_version", "unet", "scheduler", "sample_size", "in_channels", "out_channels",
    "block_out_channels", "time_embedding_dim", "norm_num_groups", "norm_eps", "act_fn", "time_embedding_act_fn",
    "num_class_embeds", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "variance_type", "clip_sample", "prediction_type", "thresholding", "timestep_spacing", "steps_offset",
    "clip_sample_range", "sample_max_value", "dynamic_thresholding_ratio", "clip_prev_sample",
]  # fmt: skip
ST_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "XX", ""]

mutations = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.sampled_from(FILES), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)),
                                                                min_size=1, max_size=8)),  # fmt: skip
    st.tuples(st.just("json_set"), st.sampled_from(JSON_FILES), st.sampled_from(KNOWN_KEYS) | st.text(max_size=8),
              json_values),  # fmt: skip
    st.tuples(st.just("json_delete"), st.sampled_from(JSON_FILES), st.sampled_from(KNOWN_KEYS)),
    st.tuples(st.just("json_replace"), st.sampled_from(JSON_FILES), json_values),
    st.tuples(st.just("garbage"), st.sampled_from(FILES), st.binary(max_size=64)),
    st.tuples(st.just("header"), st.sampled_from(["dtype", "shape", "offsets", "length", "rename", "metadata"]),
              st.integers(0, 10**6), st.sampled_from(ST_DTYPES), st.lists(st.integers(-2, 2**40), max_size=5)),
    st.tuples(st.just("delete"), st.sampled_from(PATHS)),
    st.tuples(st.just("extra"), st.sampled_from(["", "unet", "scheduler"]),
              st.sampled_from(["notes.txt", "x.json", "config.json.bak", "evil.py", "pytorch_model.bin",
                               "diffusion_pytorch_model.bin", "model.safetensors", "sub/deeper.json"]),
              st.binary(max_size=32)),  # fmt: skip
    st.tuples(st.just("link_out"), st.sampled_from(PATHS)),
    st.tuples(st.just("link_in"), st.sampled_from(FILES), st.sampled_from(FILES)),
    st.tuples(st.just("link_loop"), st.sampled_from(FILES + ["unet/extra"])),
    st.tuples(st.just("fifo"), st.sampled_from(FILES + ["unet/extra"])),
    st.tuples(st.just("dir_for_file"), st.sampled_from(FILES)),
)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() and not path.is_symlink() else None


def _mutate_header(data: bytes, field: str, index: int, dtype: str, numbers: list[int]) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    name = names[index % len(names)]
    if field == "dtype":
        header[name]["dtype"] = dtype
    elif field == "shape":
        header[name]["shape"] = numbers
    elif field == "offsets":
        header[name]["data_offsets"] = (numbers + [0, 0])[:2]
    elif field == "rename":
        header[name + ".x" if index % 2 else "unexpected"] = header.pop(name)
    elif field == "metadata":
        header["__metadata__"] = {"format": dtype, "n": str(numbers)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    length = (numbers[0] if numbers else index) if field == "length" else len(raw)
    return struct.pack("<Q", length % 2**64) + raw + data[8 + n :]


def apply_mutation(root: Path, outside: Path, mutation: tuple) -> None:
    kind, *args = mutation
    if kind == "truncate":
        path, fraction = root / args[0], args[1]
        data = _read_bytes(path)
        if data is not None:
            path.write_bytes(data[: int(len(data) * fraction)])
    elif kind == "flip":
        path = root / args[0]
        data = _read_bytes(path)
        if data:
            buf = bytearray(data)
            for fraction, bit in args[1]:
                buf[min(int(fraction * len(buf)), len(buf) - 1)] ^= 1 << bit
            path.write_bytes(bytes(buf))
    elif kind in ("json_set", "json_delete", "json_replace"):
        path = root / args[0]
        data = _read_bytes(path)
        if data is None:
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if kind == "json_replace":
            obj = args[1]
        elif isinstance(obj, dict) and kind == "json_set":
            obj[args[1]] = args[2]
        elif isinstance(obj, dict):
            obj.pop(args[1], None)
        path.write_text(json.dumps(obj))  # NaN and Infinity come out as the non-standard tokens Python accepts
    elif kind == "garbage":
        path = root / args[0]
        if path.parent.is_dir() and (path.is_file() or not path.exists()) and not path.is_symlink():
            path.write_bytes(args[1])  # never a FIFO, whose open would wait for a reader
    elif kind == "header":
        path = root / WEIGHTS
        data = _read_bytes(path)
        try:
            path.write_bytes(_mutate_header(data, *args)) if data else None
        except (ValueError, struct.error, UnicodeDecodeError):
            pass  # an earlier mutation already broke the header
    elif kind == "delete":
        _remove(root / args[0])
    elif kind == "extra":
        directory, name, content = root / args[0], args[1], args[2]
        if directory.is_dir() and not directory.is_symlink():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            if not (directory / name).is_dir():
                (directory / name).write_bytes(content)
    elif kind == "link_out":
        path = root / args[0]
        if path.exists() and path.resolve().is_relative_to(root.resolve()) and not path.is_symlink():
            copy = outside / str(len(list(outside.iterdir()))) / args[0]  # a fresh place for each link
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(path, copy, dirs_exist_ok=True) if path.is_dir() else shutil.copy(path, copy)
            _remove(path)
            path.symlink_to(copy)
    elif kind == "link_in":
        path, target = root / args[0], root / args[1]
        if path != target and path.parent.is_dir() and target.exists():
            _remove(path)
            path.symlink_to(os.path.relpath(target, path.parent))
    elif kind == "link_loop":
        path = root / args[0]
        if path.parent.is_dir() and not path.parent.is_symlink():
            _remove(path)
            path.symlink_to(path.name)
    elif kind == "fifo":
        path = root / args[0]
        if path.parent.is_dir() and not path.parent.is_symlink():
            _remove(path)
            os.mkfifo(path)
    elif kind == "dir_for_file":
        path = root / args[0]
        if path.parent.is_dir() and not path.parent.is_symlink():
            _remove(path)
            path.mkdir()
    else:
        raise AssertionError(f"unknown mutation {kind}")


# ---------------------------------------------------------------------------------------------- the contract


def check_contract(folder: Path, stats: Counter) -> None:
    """Loads ``folder``: a correct, runnable pipeline, or one ValueError/OSError with a readable message."""
    stats["tried"] += 1
    try:
        pipe = DDPMPipeline.from_pretrained(folder)
    except (ValueError, OSError) as e:
        message = str(e)
        assert 10 <= len(message) <= 4000 and message.replace("\n", " ").isprintable(), repr(message)
        kind = "UnsafeFolderError" if type(e).__name__ == "UnsafeFolderError" else type(e).__name__
        stats[f"refused: {kind}"] += 1
        return
    # a correct load: every component whole, every weight real and finite
    assert isinstance(pipe.unet, ModelMixin) and isinstance(pipe.scheduler, SchedulerMixin)
    params = dict(pipe.unet.named_parameters())
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in params.values())
    if isinstance(pipe.unet, ConvUNet2DModel):
        with torch.device("meta"):
            fresh = ConvUNet2DModel(**{k: v for k, v in pipe.unet.config.items() if not k.startswith("_")})
        assert params.keys() == dict(fresh.named_parameters()).keys()
    pipe.set_progress_bar_config(disable=True)
    steps = min(2, pipe.scheduler.config.num_train_timesteps)
    images = pipe(batch_size=2, num_inference_steps=steps, output_type="np", generator=torch.manual_seed(0)).images
    size = pipe.unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    assert images.shape == (2, height, width, pipe.unet.config.in_channels)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    stats["loaded and sampled"] += 1


def run_fuzz(valid_folder: Path, examples: int, derandomize: bool) -> Counter:
    stats = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(mutations, min_size=1, max_size=3))
    def fuzz(mutation_list):
        with tempfile.TemporaryDirectory() as tmp:
            root, outside = Path(tmp, "pipe"), Path(tmp, "outside")
            shutil.copytree(valid_folder, root)
            outside.mkdir()
            for mutation in mutation_list:
                try:
                    apply_mutation(root, outside, mutation)
                except OSError:  # e.g. writing through a link loop an earlier mutation made
                    stats["mutation: could not apply"] += 1
                    continue
                stats[f"mutation: {mutation[0]}"] += 1
            check_contract(root, stats)

    fuzz()
    return stats


@pytest.mark.timeout(120)
def test_valid_folder_loads_and_samples(valid_folder):
    stats = Counter()
    check_contract(valid_folder, stats)
    assert stats == {"tried": 1, "loaded and sampled": 1}


@pytest.mark.timeout(120)
def test_fuzzed_folders_load_correctly_or_fail_clearly(valid_folder, capsys):
    stats = run_fuzz(valid_folder, DEFAULT_EXAMPLES, derandomize=True)
    with capsys.disabled():
        print(f"\nloading fuzz, {DEFAULT_EXAMPLES} examples: {dict(sorted(stats.items()))}")
    assert stats["tried"] >= DEFAULT_EXAMPLES * 0.9
    assert stats["loaded and sampled"] > 0 and stats["tried"] - stats["loaded and sampled"] > 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fuzzed_folders_many(valid_folder, capsys):
    stats = run_fuzz(valid_folder, SLOW_EXAMPLES, derandomize=False)
    with capsys.disabled():
        print(f"\nloading fuzz, {SLOW_EXAMPLES} examples: {dict(sorted(stats.items()))}")
    assert stats["tried"] >= SLOW_EXAMPLES * 0.9
