"""Training jobs under faults: kill -9 at chosen and random moments, then resume until the run completes; a full
disk during a checkpoint and during the final save; two runs on one output folder.

Each attempt is a forked copy of this (already warmed-up) test process that runs ``examples/train.py``'s ``main``,
so a kill costs about a second instead of a Python start-up. The kills are real ``SIGKILL``s: from inside, at
points chosen with ``DDPMKIT_FAULT_AT=<phase>:<n>``, or from outside at random wall-clock times.
"""

import errno
import os
import random
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
    TRAIN_SCRIPT,
    load_train_module,
    make_parquet,
    run_train,
    tiny_model_config,
    train_argv,
    unet_weights,
)

from ddpmkit import DDPMPipeline
from ddpmkit.training import FAULT_ENV, CHECKPOINT_PREFIX, OutputDirLock, list_checkpoints, resolve_checkpoint

INTERVAL = 5
FLAGS = dict(max_train_steps=20, checkpointing_steps=INTERVAL, checkpoints_total_limit=2, logging_steps=5)
MAX_ATTEMPTS = 12
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

        def mark(text: str) -> None:
            os.write(out, f"{text}\n".encode())

        if fault:
            os.environ[FAULT_ENV] = fault
        train = load_train_module()
        base = train.TrainingProgress

        class MarkedProgress(base):
            @property
            def global_step(self) -> int:
                return self._step

            @global_step.setter
            def global_step(self, value: int) -> None:
                self._step = value
                if value:
                    mark(f"step {value}")

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
        wrap("save_pipeline_atomically", "save", "saved")
        torch.set_num_threads(1)
        run_train(argv)
        mark("done")
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def _run_attempt(data: Path, model_config: Path, out: Path, kill: str | None, first: bool) -> Attempt:
    latest = resolve_checkpoint(out, "latest")
    start = int(latest.name[len(CHECKPOINT_PREFIX) :]) if latest else 0
    attempt = Attempt(kill=kill, start=start)
    extra = () if first else ("--resume_from_checkpoint", "latest")
    argv = train_argv(data, out, model_config, *extra, **FLAGS)
    n = len(list(out.parent.glob(f"{out.name}.attempt-*.log")))
    log, markers = out.parent / f"{out.name}.attempt-{n}.log", out.parent / f"{out.name}.attempt-{n}.markers"
    fault = kill if kill and not kill.startswith("random:") else None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _child(argv, markers, log, fault)
    started = time.monotonic()
    kill_at = started + float(kill.split(":")[1]) if kill and kill.startswith("random:") else None
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
            break
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            os.kill(pid, signal.SIGKILL)
            kill_at = None
        if now - started > ATTEMPT_TIMEOUT_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"attempt {n} of {out.name} hung for {ATTEMPT_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.001)
    attempt.markers = markers.read_text().split("\n")[:-1] if markers.exists() else []
    attempt.log = log.read_text() if log.exists() else ""
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
    OutputDirLock(out).acquire().release()
    # 3. each resume restarts at most one checkpoint interval before where the killed attempt had got to
    for killed, resumed in zip(attempts, attempts[1:]):
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
        ["checkpoint:15", "random"],  # killed again, at a random moment of the resumed run
    ],
    ids=lambda kills: "+".join(kills),
)
def test_killed_run_resumes_to_the_uninterrupted_result(job, kills):
    rng = random.Random(1234)
    kills = [f"random:{rng.uniform(0.0, job.seconds):.3f}" if k == "random" else k for k in kills]
    out = job.out("kill-" + "+".join(k.replace(":", "") for k in kills))
    attempts = run_until_complete(job.data, job.model_config, out, kills)
    check_completed_run(out, job.reference, attempts)
    deterministic = [a for a in attempts if a.kill and not a.kill.startswith("random:")]
    assert all(a.outcome == "killed" for a in deterministic)  # every chosen kill point was reached
    phase, _, n = kills[0].partition(":")
    assert attempts[0].reached == (int(n) if phase in ("step", "checkpoint") else FLAGS["max_train_steps"])
