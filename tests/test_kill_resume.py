"""Training jobs under faults: kill -9 at chosen and random moments, then resume until the run completes; a full
disk during a checkpoint and during the final save; two runs on one output folder.

Each attempt is a forked copy of this (already warmed-up) test process that runs ``ddpmkit.training.train``, so a
kill costs about a second instead of a Python start-up. The kills are real ``SIGKILL``s: from inside, at points
chosen as ``<phase>:<n>`` (the forked child patches the trainer to kill itself there, see :func:`_install_fault`),
or from outside at random wall-clock times.
"""

import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers_train import (
    ROOT,
    TRAIN_MODULE,
    TRAIN_SCRIPT,
    make_parquet,
    run_train,
    tiny_model_config,
    train_argv,
    train_cli,
    unet_weights,
)

from ddpmkit import DDPMPipeline
from ddpmkit.training import CHECKPOINT_PREFIX, list_checkpoints, resolve_checkpoint
from ddpmkit.utils.lock import FolderLock

pytestmark = pytest.mark.timeout(300)  # a hang fails the test instead of the whole run
INTERVAL = 5
FLAGS = dict(max_train_steps=20, checkpointing_steps=INTERVAL, checkpoints_total_limit=2, logging_steps=5)
MAX_ATTEMPTS = 12
EXPECTED_PHASE = {"step": "steps", "checkpoint": "checkpoint write", "prune": "checkpoint write", "save": "final save"}
PHASES = {  # the last marker an attempt wrote -> where it was
    "": "setup", "step": "steps", "checkpointed": "steps", "checkpoint": "checkpoint write", "save": "final save",
    "saved": "after the final save", "done": "exit",
}  # fmt: skip
ATTEMPT_TIMEOUT_S = 120


# --- one attempt: a forked child running main(), killed or not ------------------------------------------------------


@dataclass
class Attempt:
    kill: str | None  # "step:7" (fault hook), "random:0.41" (seconds, from outside) or None
    start: int  # the checkpoint step it resumes from, 0 for a fresh start
    outcome: str = ""  # "completed", "killed" or "failed"
    markers: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def reached(self) -> int:
        """The last optimizer step this attempt finished (its start if none)."""
        steps = [int(m.split()[1]) for m in self.markers if m.startswith("step ")]
        return max([self.start, *steps])

    @property
    def phase(self) -> str:
        """Where the attempt was when it died, from the last marker it wrote."""
        last = next((m.split()[0] for m in reversed(self.markers) if not m.startswith("load ")), "")
        return PHASES[last]


def _child(argv: list[str], markers: Path, log: Path, fault: str | None) -> None:  # pragma: no cover - forked
    """The forked attempt: marks its progress in ``markers`` (appends survive a kill -9), logs to ``log``."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = os.fdopen(os.dup(fd), "w", buffering=1)
        out = os.open(markers, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _own_progress_bar_lock()

        def mark(text: str) -> None:
            os.write(out, f"{text}\n".encode())

        import ddpmkit.training.trainer as train

        if fault and fault.startswith("prune:"):
            _die_while_removing(f"{CHECKPOINT_PREFIX}{fault.split(':')[1]}")
        elif fault and not fault.startswith("step:"):  # step:N is the progress setter's, below
            _install_fault(fault)
        base = train.TrainingProgress
        kill_at_step = int(fault.split(":")[1]) if fault and fault.startswith("step:") else None

        class MarkedProgress(base):
            @property
            def global_step(self) -> int:
                return self._step

            @global_step.setter
            def global_step(self, value: int) -> None:
                self._step = value
                if value:
                    mark(f"step {value}")
                if value and value == kill_at_step:  # optimizer step N done, before its checkpoint
                    os.kill(os.getpid(), signal.SIGKILL)

            def load_state_dict(self, state: dict) -> None:
                mark(f"load {state['global_step']}")
                super().load_state_dict(state)

        def wrap(name: str, before: str, after: str):
            real = getattr(train, name)

            def wrapped(*args, **kwargs):
                step = args[2] if name == "save_checkpoint" else ""
                mark(f"{before} {step}".strip())
                result = real(*args, **kwargs)
                mark(f"{after} {step}".strip())
                return result

            setattr(train, name, wrapped)

        train.TrainingProgress = MarkedProgress
        wrap("save_checkpoint", "checkpoint", "checkpointed")
        wrap("save_pretrained_atomically", "save", "saved")
        torch.set_num_threads(1)
        run_train(argv)
        mark("done")
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def _own_progress_bar_lock() -> None:  # pragma: no cover - forked
    """tqdm's write lock holds a ``multiprocessing.RLock`` shared with the forked children: a child killed while
    drawing its bar would leave it held and hang this test process at its next bar. The child takes a private one."""
    import threading

    from tqdm import std

    std.TqdmDefaultWriteLock.mp_lock = None
    std.TqdmDefaultWriteLock.th_lock = threading.RLock()
    lock = std.TqdmDefaultWriteLock()
    classes = [std.tqdm]
    while classes:
        cls = classes.pop()
        cls.set_lock(lock)
        classes += cls.__subclasses__()


def _install_fault(fault: str) -> None:  # pragma: no cover - forked
    """Makes this process kill itself with ``SIGKILL`` at ``fault``: ``checkpoint:N`` (the state of step N written
    to ``tmp-checkpoint-N``, metadata included, not yet renamed) or ``save:K`` (the final pipeline save, before
    moving its K-th file; K = the number of files: all moved, before the samples and the model card)."""
    import ddpmkit.training.checkpoints as checkpoints
    import ddpmkit.training.trainer as trainer
    import ddpmkit.utils.io as io

    phase, _, n = fault.partition(":")
    n = int(n)
    if phase == "checkpoint":
        real_write_json = checkpoints.atomic_write_json

        def write_json(path, obj, *args, **kwargs):
            real_write_json(path, obj, *args, **kwargs)
            if Path(path).parent.name == f"tmp-{CHECKPOINT_PREFIX}{n}":
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoints.atomic_write_json = write_json
    elif phase == "save":
        real_move, real_save_image, moved = io.move_into, trainer.atomic_save_image, []

        def move_into(file, target):
            if len(moved) == n:
                os.kill(os.getpid(), signal.SIGKILL)
            moved.append(target)
            real_move(file, target)

        def save_image(image, path, *args, **kwargs):
            if Path(path).name == "samples.png" and len(moved) == n:
                os.kill(os.getpid(), signal.SIGKILL)
            real_save_image(image, path, *args, **kwargs)

        io.move_into, trainer.atomic_save_image = move_into, save_image
    else:
        raise ValueError(f"unknown fault {fault!r}")


def _die_while_removing(name: str) -> None:  # pragma: no cover - forked
    """Makes this process kill itself half-way through deleting the checkpoint folder ``name`` (an old checkpoint
    pruned by ``--checkpoints_total_limit``): one file gone, the rest left."""
    import shutil

    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if Path(path).name.endswith(name) and (Path(path) / "model.safetensors").exists():
            os.unlink(Path(path) / "model.safetensors")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rmtree(path, *args, **kwargs)

    shutil.rmtree = rmtree


def _fork_attempt(argv: list[str], out: Path, fault: str | None) -> tuple[int, Path, Path]:
    """Starts a forked attempt; returns its pid, marker file and log file."""
    n = len(list(out.parent.glob(f"{out.name}.attempt-*.log")))
    log, markers = out.parent / f"{out.name}.attempt-{n}.log", out.parent / f"{out.name}.attempt-{n}.markers"
    log.touch()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _child(argv, markers, log, fault)
    return pid, markers, log


def _wait(pid: int, log: Path, kill_after: float | None = None) -> int:
    """Waits for the attempt (killing it ``kill_after`` seconds from now, if given) and returns its wait status."""
    started = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        now = time.monotonic()
        if kill_after is not None and now - started >= kill_after:
            os.kill(pid, signal.SIGKILL)
            kill_after = None
        if now - started > ATTEMPT_TIMEOUT_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"{log.name} hung for {ATTEMPT_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.001)


def _run_attempt(data: Path, model_config: Path, out: Path, kill: str | None, first: bool) -> Attempt:
    latest = resolve_checkpoint(out, "latest")
    start = int(latest.name[len(CHECKPOINT_PREFIX) :]) if latest else 0
    attempt = Attempt(kill=kill, start=start)
    extra = () if first else ("--resume_from_checkpoint", "latest")
    argv = train_argv(data, out, model_config, *extra, **FLAGS)
    random_kill = kill is not None and kill.startswith("random:")
    pid, markers, log = _fork_attempt(argv, out, None if random_kill else kill)
    status = _wait(pid, log, float(kill.split(":")[1]) if random_kill else None)
    attempt.markers = markers.read_text().split("\n")[:-1] if markers.exists() else []
    attempt.log = log.read_text()
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        attempt.outcome = "killed"
    elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        attempt.outcome = "completed"
    else:
        attempt.outcome = "failed"
    return attempt


def run_until_complete(data: Path, model_config: Path, out: Path, kills: list[str]) -> list[Attempt]:
    """Runs the job, killing attempt i as ``kills[i]`` says, and resumes with ``--resume_from_checkpoint latest``
    until an attempt completes; fails on any other exit."""
    attempts = []
    for i in range(MAX_ATTEMPTS):
        attempt = _run_attempt(data, model_config, out, kills[i] if i < len(kills) else None, first=i == 0)
        attempts.append(attempt)
        assert attempt.outcome != "failed", f"attempt {i} ({attempt.kill}) failed:\n{attempt.log[-4000:]}"
        if attempt.outcome == "completed":
            return attempts
    pytest.fail(f"no attempt of {out.name} completed in {MAX_ATTEMPTS}: {[a.kill for a in attempts]}")


def check_completed_run(out: Path, reference: Path, attempts: list[Attempt]) -> None:
    """The run matches the uninterrupted reference, loads, and no killed attempt cost more than one interval."""
    # 1. the same weights as without kills: EMA (the saved pipeline) and raw (the last checkpoint)
    final = f"{CHECKPOINT_PREFIX}{FLAGS['max_train_steps']}"
    pairs = [
        (unet_weights(out), unet_weights(reference)),
        (_raw_weights(out / final), _raw_weights(reference / final)),
        (_ema_weights(out / final), _ema_weights(reference / final)),
    ]
    for got, want in pairs:
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # 2. a complete, loadable folder, nothing half-written left, the lock free
    pipe = DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (1, 8, 8, 1) and (images >= 0).all() and (images <= 1).all()
    for name in ("samples.png", "README.md", "training_args.json"):
        assert (out / name).is_file(), name
    assert [p.name for p in list_checkpoints(out)] == [p.name for p in list_checkpoints(reference)]
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(("tmp-", ".tmp-"))]
    assert not leftovers, leftovers
    FolderLock(out).acquire().release()
    # 3. each resume restarts at most one checkpoint interval before where the killed attempt had got to
    for killed, resumed in zip(attempts[:-1], attempts[1:], strict=True):
        redone = killed.reached - resumed.start
        assert 0 <= redone <= INTERVAL, (killed.kill, killed.reached, resumed.start)
        loaded = [int(m.split()[1]) for m in resumed.markers if m.startswith("load ")]
        assert loaded in ([], [resumed.start]), (loaded, resumed.start)  # it loaded the checkpoint we expected
        assert resumed.start == 0 or loaded or resumed.outcome == "killed"


def _raw_weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def _ema_weights(checkpoint: Path) -> dict:
    shadow = torch.load(checkpoint / "custom_checkpoint_2.pkl", weights_only=True)["shadow_params"]
    return {str(i): tensor for i, tensor in enumerate(shadow)}


# --- fixtures: one uninterrupted reference run per module -----------------------------------------------------------


@dataclass
class Job:
    data: Path
    model_config: Path
    root: Path
    reference: Path
    seconds: float  # wall time of one uninterrupted forked attempt

    def out(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Job:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kill")
    data = make_parquet(root / "data" / "train.parquet", n=32)
    model_config = tiny_model_config(root)
    reference = root / "reference"
    run_train(train_argv(data, reference, model_config, **FLAGS))  # in this process: also warms every cache
    # the same job as a forked attempt, uninterrupted: it must match too, and it times an attempt
    started = time.monotonic()
    attempts = run_until_complete(data, model_config, root / "forked", [])
    seconds = time.monotonic() - started
    assert len(attempts) == 1
    check_completed_run(root / "forked", reference, attempts)
    return Job(data, model_config, root, reference, seconds)


# --- kill -9, then resume --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kills",
    [
        ["step:7"],  # between two checkpoints
        ["checkpoint:10"],  # checkpoint-10 written to tmp-checkpoint-10, not renamed
        ["save:2"],  # the final save: config files moved, weights and model_index.json not
        ["prune:10"],  # half-way through deleting checkpoint-10, the oldest, after checkpoint-20 was saved
        ["checkpoint:15", "random"],  # killed again, at a random moment of the resumed run
    ],
    ids=lambda kills: "+".join(kills),
)
def test_killed_run_resumes_to_the_uninterrupted_result(job, kills):
    rng = random.Random(1234)
    kills = [f"random:{rng.uniform(0.0, 0.6 * job.seconds):.3f}" if k == "random" else k for k in kills]
    out = job.out("kill-" + "+".join(k.replace(":", "") for k in kills))
    attempts = run_until_complete(job.data, job.model_config, out, kills)
    check_completed_run(out, job.reference, attempts)
    deterministic = [a for a in attempts if a.kill and not a.kill.startswith("random:")]
    assert all(a.outcome == "killed" for a in deterministic)  # every chosen kill point was reached
    phase, _, n = kills[0].partition(":")
    assert attempts[0].reached == (int(n) if phase in ("step", "checkpoint") else FLAGS["max_train_steps"])
    assert attempts[0].phase == EXPECTED_PHASE[phase], attempts[0].markers


# --- a full disk ----------------------------------------------------------------------------------------------------


def _one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("ddpmkit train: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


def test_full_disk_at_a_checkpoint_stops_clearly_then_resumes_to_the_uninterrupted_result(job, monkeypatch, capsys):
    out = job.out("full-disk-checkpoint")
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if f"tmp-{CHECKPOINT_PREFIX}10" in str(f):
            with open(f, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert train_cli(train_argv(job.data, out, job.model_config, **FLAGS)) == 1
    error = _one_error_line(capsys.readouterr().err)
    assert "step 10" in error and "disk is full" in error and "checkpoint-5 is intact" in error
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-5"]
    assert not (out / "model_index.json").exists() and not list(out.glob("tmp-*"))
    monkeypatch.setattr(torch, "save", real_save)
    assert train_cli(train_argv(job.data, out, job.model_config, "--resume_from_checkpoint", "latest", **FLAGS)) == 0
    check_completed_run(out, job.reference, [])


@pytest.mark.parametrize("target", ["unet weights", "model card"])
def test_full_disk_during_the_final_save_keeps_the_checkpoint_and_says_so(job, monkeypatch, capsys, target):
    import safetensors.torch

    import ddpmkit.utils.io as io

    out = job.out("full-disk-save-" + target.replace(" ", "-"))
    real_save_file, real_write = safetensors.torch.save_file, io.write_file

    def save_file(tensors, filename, *args, **kwargs):
        if ".tmp-pipeline-" in str(filename):
            real_save_file(dict(list(tensors.items())[:1]), filename, *args, **kwargs)  # a partial file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, filename, *args, **kwargs)

    def write_file(path, data):
        if Path(path).name.startswith(".README.md."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    if target == "unet weights":
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    else:
        monkeypatch.setattr(io, "write_file", write_file)
    assert train_cli(train_argv(job.data, out, job.model_config, **FLAGS)) == 1
    error = _one_error_line(capsys.readouterr().err)
    assert "disk is full" in error and "checkpoint-20 is intact" in error
    assert "--resume_from_checkpoint latest" in error
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-15", "checkpoint-20"]
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".README.md.*"))
    if target == "unet weights":
        assert not (out / "model_index.json").exists()
    monkeypatch.undo()
    assert train_cli(train_argv(job.data, out, job.model_config, "--resume_from_checkpoint", "latest", **FLAGS)) == 0
    check_completed_run(out, job.reference, [])


# --- two runs on one output folder ----------------------------------------------------------------------------------


def _wait_for_marker(markers: Path, log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if markers.exists() and text in markers.read_text().split("\n"):
            return
        time.sleep(0.01)
    pytest.fail(f"no {text!r} in {timeout} s:\n{log.read_text()[-3000:]}")


def test_a_second_run_refuses_a_busy_folder_and_a_killed_run_does_not_keep_it(job, capsys):
    out = job.out("two-runs")
    long_run = train_argv(job.data, out, job.model_config, max_train_steps=100_000, checkpointing_steps=3)
    pid, markers, log = _fork_attempt(long_run, out, None)
    try:
        _wait_for_marker(markers, log, "step 4")  # training, with checkpoint-3 written
        os.kill(pid, signal.SIGSTOP)  # holds the folder, without racing this test
        assert train_cli(train_argv(job.data, out, job.model_config)) == 1
        error = _one_error_line(capsys.readouterr().err)
        assert "in use by another training run" in error and f"({pid}@" in error
        assert not (out / "model_index.json").exists()
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and (out / ".ddpmkit.lock").exists()  # the killed run's lock file stays...
    # ...but not its lock: the next run takes the folder over and resumes
    resume = train_argv(job.data, out, job.model_config, "--resume_from_checkpoint", "latest", max_train_steps=6,
                        checkpointing_steps=3)  # fmt: skip
    assert train_cli(resume) == 0, capsys.readouterr().err[-3000:]
    assert re.search(r"Resuming from \S+checkpoint-\d+ at step \d+ of 6, learning rate ", capsys.readouterr().err)
    DDPMPipeline.from_pretrained(out)
    assert not (out / ".ddpmkit.lock").exists()


# --- slow: many kill points -----------------------------------------------------------------------------------------

CHOSEN_KILLS = [
    "step:1", "step:5", "step:12", "step:19", "step:20", "checkpoint:5", "checkpoint:15", "checkpoint:20", "prune:5",
    "prune:10", "save:0", "save:1", "save:2", "save:3", "save:4",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_many_kill_points_all_resume_to_the_uninterrupted_result(job, capsys):
    """Every chosen kill point once, then 30 jobs killed one to three times at random moments (each resumed run
    may be killed again); prints the kill points survived by phase."""
    rng = random.Random(20240607)
    jobs = [[kill] for kill in CHOSEN_KILLS]
    for _ in range(30):
        jobs.append([f"random:{rng.uniform(0.0, job.seconds):.3f}" for _ in range(rng.randint(1, 3))])
    survived: dict[str, dict[str, int]] = {}
    missed = most_redone = 0
    for i, kills in enumerate(jobs):
        out = job.out(f"many-{i:02d}")
        attempts = run_until_complete(job.data, job.model_config, out, kills)
        check_completed_run(out, job.reference, attempts)
        for attempt, resumed in zip(attempts[:-1], attempts[1:], strict=True):
            kind = "random" if attempt.kill.startswith("random:") else "chosen"
            if kind == "chosen":
                assert attempt.phase == EXPECTED_PHASE[attempt.kill.split(":")[0]], (attempt.kill, attempt.markers)
            survived.setdefault(attempt.phase, {"chosen": 0, "random": 0})[kind] += 1
            most_redone = max(most_redone, attempt.reached - resumed.start)
        missed += sum(1 for a in attempts if a.kill and a.outcome == "completed")  # finished before its kill time
    random_kills = sum(counts["random"] for counts in survived.values())
    chosen_kills = sum(counts["chosen"] for counts in survived.values())
    with capsys.disabled():
        print(
            f"\nkill points survived: {chosen_kills} chosen, {random_kills} random ({missed} random kills came after "
            f"the run had finished); most steps redone after a kill: {most_redone} (interval {INTERVAL})"
        )
        for phase in dict.fromkeys(PHASES.values()):
            if phase in survived:
                print(f"  {phase:>22}: {survived[phase]['chosen']:2d} chosen, {survived[phase]['random']:2d} random")
    assert chosen_kills == len(CHOSEN_KILLS) and random_kills >= 20


def _subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"), TOKENIZERS_PARALLELISM="false")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_a_real_script_process_killed_twice_at_random_moments_resumes(job):
    """``python -m ddpmkit train`` in its own interpreter, killed from outside twice at random moments after a
    random checkpoint appears, then resumed until it completes."""
    rng = random.Random(7)
    out = job.out("script")
    for attempt in range(2):
        extra = ("--resume_from_checkpoint", "latest") if attempt else ()
        argv = [sys.executable, *TRAIN_MODULE, *train_argv(job.data, out, job.model_config, *extra, **FLAGS)]
        proc = subprocess.Popen(argv, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = out / f"{CHECKPOINT_PREFIX}{rng.choice([5, 10, 15])}"
        deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
        while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), err.decode()[-3000:]
    argv = [sys.executable, *TRAIN_MODULE,
            *train_argv(job.data, out, job.model_config, "--resume_from_checkpoint", "latest", **FLAGS)]  # fmt: skip
    result = subprocess.run(argv, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    check_completed_run(out, job.reference, [])


@pytest.mark.slow
def test_accelerate_launch_with_two_processes_refuses_a_busy_folder(job):
    """The second run, started with ``accelerate launch`` on two processes, stops with the lock message and writes
    nothing, while the first run keeps the folder."""
    out = job.out("busy-launch")
    long_run = train_argv(job.data, out, job.model_config, max_train_steps=100_000, checkpointing_steps=3)
    pid, markers, log = _fork_attempt(long_run, out, None)
    try:
        _wait_for_marker(markers, log, "step 4")
        os.kill(pid, signal.SIGSTOP)
        before = sorted(p.name for p in out.iterdir())
        argv = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN_SCRIPT),
            *train_argv(job.data, out, job.model_config, max_train_steps=4, checkpointing_steps=2),
        ]  # fmt: skip
        result = subprocess.run(argv, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("ddpmkit train: error: ")]
        assert len(errors) == 1 and "in use by another training run" in errors[0] and f"({pid}@" in errors[0]
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written by the refused run
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
