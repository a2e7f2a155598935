"""Tests of ``ddpmkit train`` and ddpmkit.training: tiny models, a few steps each."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_train import (
    ROOT,
    TRAIN_SCRIPT,
    make_parquet,
    run_train,
    tiny_model_config,
    train_argv,
    train_cli,
    unet_weights,
)

from ddpmkit import ConvUNet2DModel, DDPMPipeline
from ddpmkit.hub import render_model_card
from ddpmkit.training import (
    LossMonitor,
    NonFiniteLossError,
    TrainingConfig,
    TrainingError,
    build_lr_scheduler,
    list_checkpoints,
    lr_lambda,
    micro_batch_indices,
)
from ddpmkit.utils.io import atomic_write_bytes
from ddpmkit.utils.lock import FolderInUseError, FolderLock


@pytest.fixture
def data_file(tmp_path):
    return make_parquet(tmp_path / "data" / "train.parquet", n=32)


@pytest.fixture
def model_config(tmp_path):
    return tiny_model_config(tmp_path)


def _subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"), TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- pieces ---------------------------------------------------------------------------------------------------------


def test_lr_warmup_then_cosine_to_floor():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = build_lr_scheduler(optimizer, "cosine", warmup_steps=4, total_steps=20, lr_min=1e-6)
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    lrs.append(scheduler.get_last_lr()[0])
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5], strict=True))  # warmup rises
    assert lrs[4] == pytest.approx(1e-3)  # peak after warmup
    assert all(a >= b for a, b in zip(lrs[4:-1], lrs[5:], strict=True))  # then decays
    assert lrs[-1] == pytest.approx(1e-6)  # to the floor, as CosineAnnealingLR(eta_min=1e-6)
    halfway = lr_lambda(12, 4, 20, "cosine", 0.0)
    assert halfway == pytest.approx(0.5)


def test_micro_batches_partition_each_step_across_processes_and_accumulation():
    permutation = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    seen = []
    for micro in range(2):
        for rank in range(3):
            seen.append(micro_batch_indices(permutation, 1, micro, rank, 4, num_processes=3, accumulation_steps=2))
    seen = torch.cat(seen)
    assert torch.equal(seen.sort().values, permutation[24:48].sort().values)  # step 1: the next 24, no overlap


def test_loss_monitor_syncs_rarely_and_names_the_bad_step():
    monitor = LossMonitor()
    for step, value in enumerate([1.0, 3.0], start=1):
        monitor.add(step, torch.tensor(value))
    assert monitor.flush() == pytest.approx(2.0)
    for step, value in enumerate([1.0, math.inf, math.nan], start=3):
        monitor.add(step, torch.tensor(value))
    with pytest.raises(NonFiniteLossError, match="at step 4") as info:
        monitor.flush(lr=1e-3)
    assert info.value.step == 4


def test_atomic_write_keeps_the_old_file_on_a_full_disk(tmp_path, monkeypatch):
    import ddpmkit.utils.io as io

    path = tmp_path / "model_index.json"
    atomic_write_bytes(path, b"old")

    def full_disk(target, data):
        with open(target, "wb") as f:
            f.write(data[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "write_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_current_umask()  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["model_index.json"]  # no temporary file left behind


def test_output_dir_lock_refuses_a_second_run_and_frees_a_crashed_one(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(FolderInUseError, match=rf"in use by another training run \({os.getpid()}@"):
            FolderLock(tmp_path).acquire()
    # a process that takes the lock and dies without releasing it (forked: no second interpreter start-up)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        FolderLock(tmp_path).acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (tmp_path / ".ddpmkit.lock").exists()  # the file stays...
    FolderLock(tmp_path).acquire().release()  # ...but the lock does not


# --- the script -----------------------------------------------------------------------------------------------------


def test_train_saves_a_loadable_pipeline_with_ema_weights_card_samples_and_tensorboard(
    tmp_path, data_file, model_config
):
    out = tmp_path / "out"
    argv = train_argv(
        data_file, out, model_config, "--preview", max_train_steps=4, checkpointing_steps=4, save_images_steps=2,
        report_to="tensorboard", gradient_accumulation_steps=2, train_batch_size=2,
    )  # fmt: skip
    run_train(argv)

    pipe = DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    # the saved pipeline holds the EMA weights; the checkpoint keeps raw and EMA
    saved = unet_weights(out)
    checkpoint = out / "checkpoint-4"
    from safetensors.torch import load_file

    raw = load_file(str(checkpoint / "model.safetensors"))
    ema = torch.load(checkpoint / "custom_checkpoint_2.pkl", weights_only=True)["shadow_params"]
    names = [name for name, _ in pipe.unet.named_parameters()]  # the EMA's order
    assert len(names) == len(ema) == len(raw)
    assert all(torch.equal(saved[n], e) for n, e in zip(names, ema, strict=True))
    assert any(not torch.equal(saved[n], raw[n]) for n in names)
    # model card, samples, preview, TensorBoard scalars and images
    card = (out / "README.md").read_text()
    assert "library_name: ddpmkit" in card and "ylecun/mnist" in card and "![samples](samples.png)" in card
    assert "--gradient_accumulation_steps 2" in card or "gradient_accumulation_steps" in card
    assert (out / "samples.png").is_file() and (out / "samples" / "step-0000002.png").is_file()
    import PIL.Image

    assert PIL.Image.open(out / "preview.png").size == (80, 32)  # 32 images of 8 x 8: 10 per row, 4 rows
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p for p in (out / "logs").rglob("events.out.tfevents.*")]
    tags = {"scalars": set(), "images": set()}
    for event in events:
        acc = EventAccumulator(str(event)).Reload().Tags()
        tags["scalars"] |= set(acc["scalars"])
        tags["images"] |= set(acc["images"])
    assert {"loss", "lr", "images_per_s"} <= tags["scalars"] and "samples" in tags["images"]
    assert not (out / ".ddpmkit.lock").exists()


def test_compile_trains_the_same_model_with_the_same_checkpoint_keys(tmp_path, data_file, model_config):
    from safetensors.torch import load_file

    flags = dict(max_train_steps=3, checkpointing_steps=1, mixed_precision="no", lr_warmup_steps=0, seed=1)
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    run_train(train_argv(data_file, plain, model_config, **flags))
    run_train(train_argv(data_file, compiled, model_config, "--compile", **flags))
    # state_dict keys without torch.compile's _orig_mod prefix: checkpoints and pipelines are interchangeable
    a, b = (load_file(str(out / "checkpoint-3" / "model.safetensors")) for out in (plain, compiled))
    assert a.keys() == b.keys() and unet_weights(plain).keys() == unet_weights(compiled).keys()
    # the same steps: the compiled kernels round differently, far less than two steps move the weights
    earlier = load_file(str(plain / "checkpoint-1" / "model.safetensors"))
    moved = max((a[k] - earlier[k]).abs().max().item() for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < moved / 10
    # a compiled run's checkpoint continues without --compile
    run_train(train_argv(data_file, compiled, model_config, "--resume_from_checkpoint", "latest",
                         **{**flags, "max_train_steps": 4}))  # fmt: skip
    assert json.loads((compiled / "training_args.json").read_text())["max_train_steps"] == 4


def test_num_epochs_bf16_checkpoint_limit_and_threads(tmp_path, data_file, model_config, monkeypatch, capsys):
    out = tmp_path / "out"
    # 32 images, batch 4: 8 steps per epoch; 2 epochs = 16 steps
    argv = train_argv(data_file, out, model_config, max_train_steps=None, num_epochs=2, checkpointing_steps=4,
                      checkpoints_total_limit=2, mixed_precision="bf16", logging_steps=4, num_threads=2)  # fmt: skip
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    from ddpmkit.utils import device

    monkeypatch.setattr(device, "_threads_running_elsewhere", lambda: 1)  # another job on one core
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_train(argv)
        assert torch.get_num_threads() == 2  # --num_threads
    finally:
        torch.set_num_threads(threads)
    assert "(1.0 cores' worth running): threads that wait for each other" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-12", "checkpoint-16"]
    assert json.loads((out / "training_args.json").read_text())["max_train_steps"] == 16
    assert torch.isfinite(torch.cat([w.flatten() for w in unet_weights(out).values()])).all()


@pytest.mark.parametrize("cores, running, load, threads, share", [
    (2, 0, 0.1, 2, None), (2, 1, 1.1, 2, 1), (2, 2, 2.3, 2, 1), (2, 3, 3.0, 1, None), (16, 4, 4.2, 16, 12),
    (8, 0, 0.0, 8, None),
    (2, 0, 1.9, 2, None),  # the load average still counts jobs that have just ended: no warning
    (2, None, 0.6, 2, None), (2, None, 1.0, 2, 1), (2, None, 2.3, 2, 1),  # no /proc: the load average
])  # fmt: skip
def test_busy_cpu_warning_names_the_share_of_cores_left(monkeypatch, cores, running, load, threads, share):
    from ddpmkit.utils import device

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(device, "_threads_running_elsewhere", lambda: running)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load), raising=False)
    warning = device.busy_cpu_warning(threads)
    if share is None:
        assert warning is None
    else:
        assert f"{threads} CPU threads on {cores} cores" in warning and f"--num_threads {share} " in warning


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="reads Linux's /proc")
def test_threads_running_elsewhere_counts_a_busy_process_beside_this_one():
    from ddpmkit.utils import device

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert device._threads_running_elsewhere() >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path, data_file, model_config):
    flags = dict(max_train_steps=60, checkpointing_steps=5, logging_steps=5)
    reference = tmp_path / "reference"
    run_train(train_argv(data_file, reference, model_config, **flags))

    killed = tmp_path / "killed"
    argv = [sys.executable, str(TRAIN_SCRIPT), *train_argv(data_file, killed, model_config, **flags)]
    proc = subprocess.Popen(argv, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-10").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (killed / "model_index.json").exists()  # it died mid-training
    assert list_checkpoints(killed)

    run_train(train_argv(data_file, killed, model_config, "--resume_from_checkpoint", "latest", **flags))
    got, want = unet_weights(killed), unet_weights(reference)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, data_file, model_config, monkeypatch):
    out = tmp_path / "out"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            with open(f, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(TrainingError, match=r"step 4.*disk is full.*checkpoint-2 is intact"):
        run_train(train_argv(data_file, out, model_config, max_train_steps=6, checkpointing_steps=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert not any(p.name.startswith("tmp-") for p in out.iterdir())
    assert not (out / "model_index.json").exists()
    # the kept checkpoint resumes
    run_train(train_argv(data_file, out, model_config, "--resume_from_checkpoint", "latest", max_train_steps=3))
    assert (out / "model_index.json").is_file()


# what torch.save to a path raised on a full 256 KiB tmpfs (torch 2.13): a bare RuntimeError, no OSError behind it
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def test_torch_saves_own_error_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, data_file, model_config,
                                                                         monkeypatch):  # fmt: skip
    import shutil

    import ddpmkit.utils.io as io

    real_save, real_usage = torch.save, shutil.disk_usage
    assert not io.is_disk_full(RuntimeError(TORCH_FULL_DISK), tmp_path)  # this disk has room: another failure
    full = {"on": False}

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            full["on"] = True
            Path(f).write_bytes(b"partial")
            raise RuntimeError(TORCH_FULL_DISK)
        return real_save(obj, f, *args, **kwargs)

    def disk_usage(path):  # the disk as a full one reports itself while the partial file is there
        usage = real_usage(path)
        return usage._replace(free=4096) if full["on"] else usage

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(io.shutil, "disk_usage", disk_usage)
    with pytest.raises(TrainingError, match=r"step 4.*disk is full.*checkpoint-2 is intact"):
        run_train(train_argv(data_file, tmp_path / "out", model_config, max_train_steps=6, checkpointing_steps=2))
    assert full["on"] and [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-2"]
    assert not io.is_disk_full(ValueError("bad value"), tmp_path)  # only write errors count


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, data_file, model_config, monkeypatch
):
    import ddpmkit.training.trainer as trainer

    real_loss = trainer.diffusion_loss
    calls = []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real_loss(*args, **kwargs)
        return value * float("nan") if len(calls) >= 5 else value

    monkeypatch.setattr(trainer, "diffusion_loss", loss)
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 5") as info:
        run_train(train_argv(data_file, out, model_config, max_train_steps=8, checkpointing_steps=4, logging_steps=3))
    assert info.value.step == 5
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    assert not (out / "model_index.json").exists()
    weights = torch.load(out / "checkpoint-4" / "custom_checkpoint_2.pkl", weights_only=True)["shadow_params"]
    assert all(torch.isfinite(w).all() for w in weights)


def test_second_run_on_a_locked_output_dir_refuses(tmp_path, data_file, model_config, capsys):
    out = tmp_path / "out"
    with FolderLock(out):
        code = train_cli(train_argv(data_file, out, model_config))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "in use by another training run" in err[0]
    assert not (out / "model_index.json").exists()


def test_checkpoint_from_a_different_config_is_refused_before_training(tmp_path, data_file, model_config):
    out = tmp_path / "out"
    run_train(train_argv(data_file, out, model_config, max_train_steps=2, checkpointing_steps=2))
    other = tiny_model_config(tmp_path / "other", block_out_channels=[8, 8])
    with pytest.raises(ValueError, match="different unet config.*block_out_channels"):
        run_train(train_argv(data_file, out, other, "--resume_from_checkpoint", "latest", max_train_steps=4))
    with pytest.raises(ValueError, match="already holds checkpoint-2; continue it with --resume_from_checkpoint"):
        run_train(train_argv(data_file, out, other, max_train_steps=4))
    (out / "checkpoint-2" / "ddpmkit_checkpoint.json").unlink()  # no checkpoint left: only the saved pipeline
    with pytest.raises(ValueError, match="already holds a different model"):
        run_train(train_argv(data_file, out, other, "--resume_from_checkpoint", "latest", max_train_steps=4))
    assert (out / "checkpoint-2" / "model.safetensors").is_file()  # nothing trained or overwritten
    assert unet_weights(out)["conv_out.weight"].shape[1] == 8


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, data_file, model_config, capsys):
    cases = [
        (train_argv(data_file, tmp_path / "a", model_config, resolution=7), "resize the images to 8"),
        (train_argv(data_file, tmp_path / "b", "tiny", resolution=6), "--resolution 8"),
        (train_argv(data_file, tmp_path / "c", model_config, dataset="imagenet"), "unknown dataset 'imagenet'"),
        (train_argv(data_file, tmp_path / "d", model_config, mixed_precision="fp16", cpu=None) + ["--cpu"], "bf16"),
        (train_argv(tmp_path / "missing.parquet", tmp_path / "e", model_config), "does not exist"),
        (train_argv(data_file, tmp_path / "f", model_config, train_batch_size=64), "fewer than one step's 64"),
        (train_argv(data_file, tmp_path / "g", "huge"), "unknown --model_config 'huge'"),
        (train_argv(data_file, tmp_path / "h", model_config, eval_batch_size=10**8), "--eval_batch_size 100000000"),
        (train_argv(data_file, tmp_path / "i", model_config, num_threads=0), "--num_threads must be a positive"),
        (train_argv(data_file, tmp_path / "file.txt" / "out", model_config), "file.txt is a file, not a folder"),
        (train_argv(data_file, Path("/proc/ddpmkit-out"), model_config), "cannot create --output_dir /proc/"),
    ]
    (tmp_path / "file.txt").write_text("")
    for argv, message in cases:
        assert train_cli(argv) == 2, message
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("ddpmkit train: error: ")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_a_read_only_output_dir_is_refused_before_training(tmp_path, data_file, model_config, capsys, monkeypatch):
    real_access, locked = os.access, tmp_path / "locked"  # permissions do not bind root: the check sees read-only
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert train_cli(train_argv(data_file, locked, model_config)) == 2
    assert "--output_dir " + str(locked) + " is not writable" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_two_processes_write_one_folder_with_equal_ema(tmp_path, data_file, model_config):
    out = tmp_path / "out"
    argv = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN_SCRIPT),
        *train_argv(data_file, out, model_config, max_train_steps=4, checkpointing_steps=2),
    ]  # fmt: skip
    result = subprocess.run(argv, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "on 2 process(es)" in log
    assert log.count("EMA weights identical on all 2 processes") == 1
    assert log.count("Training finished") == 1 and log.count("Training data:") == 1
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert {p.name for p in (out / "checkpoint-2").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl",
    }  # fmt: skip
    DDPMPipeline.from_pretrained(out)


# --- Min-SNR weighting, channels-last and evaluation during training ------------------------------------------------


def test_min_snr_weighting_matches_its_formula_and_is_plain_above_every_snr():
    from ddpmkit import LinearDDPMScheduler
    from ddpmkit.training import diffusion_loss

    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    scheduler = LinearDDPMScheduler()
    clean = torch.rand(16, 1, 8, 8) * 2 - 1

    def loss(**kwargs):
        return diffusion_loss(lambda x, t: (model(x),), scheduler, clean, torch.Generator().manual_seed(3), **kwargs)

    plain = loss()
    snr_max = (scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)).max().item()
    torch.testing.assert_close(loss(snr_gamma=2 * snr_max), plain)  # min(SNR, gamma) = SNR: weight 1
    # by hand: the same t and eps, each image's MSE weighted by min(SNR, 5) / SNR
    generator = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (16,), generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    error = (model(scheduler.add_noise(clean, noise, t)) - noise).pow(2).mean(dim=(1, 2, 3))
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    torch.testing.assert_close(loss(snr_gamma=5.0), (error * snr.clamp(max=5.0) / snr).mean())
    assert loss(snr_gamma=5.0) < plain  # the weights are at most 1


def test_eval_steps_scores_ema_samples_into_history_tensorboard_and_card(tmp_path, model_config):
    from ddpmkit.evaluation import load_labelled_images, train_classifier

    data = tmp_path / "digits"
    make_parquet(data / "train.parquet", n=32)
    make_parquet(data / "test.parquet", n=12)
    train = load_labelled_images(data, "train", 8)
    torch.manual_seed(0)
    classifier = train_classifier(train.images, train.labels, epochs=1, batch_size=16, log_every=0,
                                  block_out_channels=(4, 8), feature_dim=8)  # fmt: skip
    classifier.save_pretrained(tmp_path / "classifier")
    out = tmp_path / "out"
    argv = train_argv(
        data / "train.parquet", out, model_config, "--channels_last", max_train_steps=4, eval_steps=3, eval_samples=4,
        eval_classifier=str(tmp_path / "classifier"), report_to="tensorboard", snr_gamma=5,
    )  # fmt: skip
    run_train(argv)
    history = json.loads((out / "eval_history.json").read_text())
    assert [row["step"] for row in history] == [3, 4]  # every 3 steps, and the last
    assert all(math.isfinite(row["classifier_fd"]) and 0 < row["confidence"] <= 1 for row in history)
    card = (out / "README.md").read_text()
    points = ", ".join(f"step {row['step']}: {row['classifier_fd']:.1f}" for row in history)
    assert f"4 DDIM-50 samples: {points}." in card
    assert all(row["num_samples"] == 4 and row["sampler"] == "ddim" for row in history)
    assert "| snr_gamma | 5 |" in card
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = set()
    for event in (out / "logs").rglob("events.out.tfevents.*"):
        scalars |= set(EventAccumulator(str(event)).Reload().Tags()["scalars"])
    assert {"eval/classifier_fd", "eval/confidence", "eval/class_entropy"} <= scalars
    # the channels-last run saved an ordinary, loadable pipeline
    pipe = DDPMPipeline.from_pretrained(out)
    assert pipe.unet.conv_out.weight.is_contiguous()


def test_eval_flags_name_the_fix(tmp_path, data_file, model_config, capsys):
    bad = [
        ({"eval_steps": 2, "eval_data": str(tmp_path)}, "has no train.parquet; pass --eval_data"),
        ({"eval_steps": 2}, "ships no classifier for 'data'"),
        ({"eval_steps": 2, "eval_classifier": str(tmp_path / "nope")}, "is not a folder"),
        ({"eval_steps": 0}, "--eval_steps must be >= 1"),
        ({"snr_gamma": -1}, "--snr_gamma must be >= 0"),
    ]
    for flags, message in bad:
        assert train_cli(train_argv(data_file, tmp_path / "out", model_config, **flags)) == 2
        assert message in capsys.readouterr().err


# --- nothing lost: reruns, branches and damaged checkpoints ---------------------------------------------------------


def test_the_same_command_twice_refuses_and_keeps_the_finished_run(tmp_path, data_file, model_config, capsys):
    out = tmp_path / "out"
    argv = train_argv(data_file, out, model_config, max_train_steps=4, checkpointing_steps=2)
    assert train_cli(argv) == 0
    before = {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(out)}
    capsys.readouterr()
    assert train_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds checkpoint-4" in err[0] and "--resume_from_checkpoint latest" in err[0]
    assert {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(out)} == before


def test_resuming_an_older_checkpoint_never_writes_over_a_newer_one(tmp_path, data_file, model_config, capsys):
    out = tmp_path / "out"
    assert train_cli(train_argv(data_file, out, model_config, max_train_steps=6, checkpointing_steps=2)) == 0
    newest = (out / "checkpoint-6" / "model.safetensors").read_bytes()
    capsys.readouterr()
    argv = train_argv(data_file, out, model_config, "--resume_from_checkpoint", str(out / "checkpoint-2"),
                      max_train_steps=6, checkpointing_steps=2)  # fmt: skip
    assert train_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint-4, checkpoint-6, newer than checkpoint-2" in err[0]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert (out / "checkpoint-6" / "model.safetensors").read_bytes() == newest


@pytest.mark.parametrize("damage", ["truncate-model", "empty-optimizer", "garbage-ema", "bad-meta"])
def test_latest_skips_a_damaged_checkpoint_and_an_explicit_one_is_one_line(
    tmp_path, data_file, model_config, capsys, damage
):
    flags = dict(max_train_steps=4, checkpointing_steps=2)
    out = tmp_path / "out"
    argv = train_argv(data_file, out, model_config, **flags)
    assert train_cli(argv) == 0
    (out / "model_index.json").unlink()  # as if the run had died after its last checkpoint
    latest = out / "checkpoint-4"
    target = {"truncate-model": "model.safetensors", "empty-optimizer": "optimizer.bin",
              "garbage-ema": "custom_checkpoint_2.pkl", "bad-meta": "ddpmkit_checkpoint.json"}[damage]  # fmt: skip
    data = (latest / target).read_bytes()
    (latest / target).write_bytes({"truncate-model": data[: len(data) // 2], "empty-optimizer": b"",
                                   "garbage-ema": b"\x80garbage" * 10, "bad-meta": b"{not json"}[damage])  # fmt: skip
    capsys.readouterr()
    explicit = train_argv(data_file, out, model_config, "--resume_from_checkpoint", str(latest), **flags)
    assert train_cli(explicit) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and target in err[0] and "Traceback" not in err[0], err
    assert train_cli(train_argv(data_file, out, model_config, "--resume_from_checkpoint", "latest", **flags)) == 0
    assert f"Skipping checkpoint-4: {latest / target}" in capsys.readouterr().err
    assert (out / "model_index.json").is_file()  # trained steps 3-4 again from checkpoint-2 and saved
    assert (out / "checkpoint-4.damaged" / target).is_file() and (out / "checkpoint-4" / target).is_file()


def test_a_checkpoint_copied_to_a_fresh_folder_keeps_the_history_of_the_runs_before_it(tmp_path, data_file,
                                                                                       model_config):  # fmt: skip
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    assert train_cli(train_argv(data_file, first, model_config, max_train_steps=8, checkpointing_steps=4)) == 0
    fresh.mkdir()
    shutil.copytree(first / "checkpoint-4", fresh / "checkpoint-4")  # what a repository keeps to go on from
    argv = train_argv(data_file, fresh, model_config, "--resume_from_checkpoint", "latest", max_train_steps=8,
                      checkpointing_steps=4)  # fmt: skip
    assert train_cli(argv) == 0
    record = json.loads((fresh / "training_args.json").read_text())
    (before,) = record["previous_runs"]
    assert before["command"] == json.loads((first / "training_args.json").read_text())["command"]
    assert (before["started_at_step"], before["max_train_steps"], before["total_batch_size"]) == (0, 4, 4)
    assert before["train_seconds"] > 0 and (record["started_at_step"], record["max_train_steps"]) == (4, 8)
    meta = json.loads((fresh / "checkpoint-8" / "ddpmkit_checkpoint.json").read_text())
    assert [(r["started_at_step"], r["max_train_steps"]) for r in meta["runs"]] == [(0, 4), (4, 8)]
    card = str(render_model_card(fresh))
    assert "- steps 0 to 4 (16 images)" in card and "- steps 4 to 8 (16 images)" in card


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"dataset": "mnist", "mixed_precision": "no"}, 28),  # the data's own size: 23% fewer pixels than 32
        ({"dataset": "fashion_mnist", "mixed_precision": "no", "cpu": True}, 28),
        ({"dataset": "mnist", "mixed_precision": "bf16", "cpu": True}, 32),  # CPU bf16 kernels: 32 runs faster
        ({"dataset": "mnist", "mixed_precision": "no", "model_config": "tutorial"}, 32),  # 5 levels: 28 % 16 != 0
        ({"dataset": "cifar10", "mixed_precision": "no"}, 32),
        ({"train_data_dir": "images", "mixed_precision": "no"}, 32),  # no preset: the tutorial's size
        ({"dataset": "mnist", "mixed_precision": "no", "resolution": 16}, 16),  # given: kept
    ],
)
def test_the_default_resolution_is_the_datasets_own_where_it_trains_faster(options, expected):
    config = TrainingConfig(**options)
    config.fill_resolution()
    assert config.resolution == expected


def test_the_small_attn_preset_adds_attention_at_the_lowest_resolution_only():
    config = TrainingConfig(dataset="mnist", model_config="small-attn", mixed_precision="no")
    config.fill_resolution()
    unet = ConvUNet2DModel(**config.unet_config(1))
    plain = TrainingConfig(dataset="mnist", model_config="small", mixed_precision="no")
    plain.fill_resolution()
    plain_keys = set(ConvUNet2DModel(**plain.unet_config(1)).state_dict())
    assert config.resolution == 28 and unet.config.add_attention and not unet.config.add_mid_block
    extra = set(unet.state_dict()) - plain_keys
    assert extra and all(k.startswith("attention.") for k in extra) and plain_keys <= set(unet.state_dict())


def test_a_resumed_run_without_resolution_keeps_its_checkpoints(tmp_path, monkeypatch):
    from ddpmkit.training import checkpoints

    data_file = make_parquet(tmp_path / "mnist" / "train.parquet", n=16)
    model_config, out = tiny_model_config(tmp_path), tmp_path / "run"
    run_train(train_argv(data_file, out, model_config, max_train_steps=2, checkpointing_steps=2))
    assert (out / "checkpoint-2").is_dir()
    shutil.copytree(out, tmp_path / "given")
    hashed, digest = [], checkpoints._digest
    monkeypatch.setattr(checkpoints, "_digest", lambda path: hashed.append(path) or digest(path))
    run_train(train_argv(data_file, tmp_path / "given", model_config, "--resume_from_checkpoint", "latest",
                         max_train_steps=4, mixed_precision="no"))  # fmt: skip
    hashed_when_given = len(hashed)
    saved_files = json.loads((out / "checkpoint-2" / "ddpmkit_checkpoint.json").read_text())["files"]
    assert hashed_when_given == len(saved_files)  # a resume checks each file of its checkpoint once
    # without --resolution a fresh mnist run in fp32 would take 28, which the 8x8 checkpoint cannot resume
    run_train(train_argv(data_file, out, model_config, "--resume_from_checkpoint", "latest", resolution=None,
                         max_train_steps=4, mixed_precision="no"))  # fmt: skip
    assert len(hashed) == 2 * hashed_when_given  # finding the resolution reads the metadata, no file is hashed
    assert json.loads((out / "unet" / "config.json").read_text())["sample_size"] == 8
    assert "--resolution 8" in " ".join(json.loads((out / "training_args.json").read_text())["command"])
