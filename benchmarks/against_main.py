"""Today's default MNIST recipe against an earlier ``main``, side by side: training images per CPU-second and the
classifier FD at equal images.

    python benchmarks/against_main.py --ref 69d14c9 --steps 3000 --data ../shared/data/mnist

The earlier code is checked out in a git worktree and trains with its own ``examples/train.py``; today's trains with
``python -m ddpmkit train`` (plus ``--today_flags``, e.g. ``--compile``). Both get the same flags (everything else at
each one's defaults), run at the same time, each pinned to a core of its own with ``--threads`` torch threads, so
load and memory traffic hit both alike. Speed is the median of the images/s each logs to TensorBoard every
``--logging_steps`` (the first interval, warm-up and any compilation, dropped); quality is ``--eval_samples``
DDIM-50 samples of each final pipeline scored with today's evaluator and the committed classifier. Writes
``benchmarks/results-against-main.{json,md}``.
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIG = str(10**9)  # no checkpoints or sample grids inside the timed steps


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="69d14c9", help="the earlier main (a commit, tag or branch)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                        help="folder of MNIST {train,test}.parquet")  # fmt: skip
    parser.add_argument("--steps", type=int, default=3000, help="training steps of each run (batch 32)")
    parser.add_argument("--logging_steps", type=int, default=50, help="steps between two images/s readings")
    parser.add_argument("--eval_samples", type=int, default=1000, help="DDIM-50 samples scored per run (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--output", default=str(HERE / "results-against-main"), help="results path, no suffix")
    parser.add_argument("--swap_cores", action="store_true",
                        help="today on the first cores, the earlier main on the next (cores can differ)")  # fmt: skip
    parser.add_argument("--today_flags", default="",
                        help="more `ddpmkit train` flags for today's run only: --today_flags=--compile")  # fmt: skip
    args = parser.parse_args(argv)
    if not (Path(args.data) / "train.parquet").is_file():
        parser.error(f"--data {args.data} holds no train.parquet; point it at the MNIST Parquet folder")
    for name in ("steps", "logging_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.steps < 3 * args.logging_steps:
        parser.error(f"--steps {args.steps} gives fewer than 3 readings every --logging_steps {args.logging_steps}")
    return args


def common_flags(args, output_dir: Path) -> list[str]:
    return [
        "--dataset", "mnist", "--train_data_files", str(Path(args.data) / "train.parquet"),
        "--max_train_steps", str(args.steps), "--output_dir", str(output_dir), "--logging_steps",
        str(args.logging_steps), "--checkpointing_steps", BIG, "--save_images_steps", BIG, "--report_to",
        "tensorboard", "--seed", "0", "--cpu",
    ]  # fmt: skip


def child_env(src: Path, threads: int) -> dict:
    """Imports ddpmkit from ``src`` (ahead of any installed copy), with ``threads`` OpenMP threads."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("WORLD_SIZE", None)
    return env


def imported_from(env: dict) -> Path:
    out = subprocess.run([sys.executable, "-c", "import ddpmkit; print(ddpmkit.__file__)"], env=env, check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir())  # fmt: skip
    return Path(out.stdout.strip()).resolve()


def logged_speeds(output_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(output_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        if "images_per_s" in acc.Tags().get("scalars", []):
            return [e.value for e in sorted(acc.Scalars("images_per_s"), key=lambda e: e.step)][1:]
    raise RuntimeError(f"{output_dir} holds no images_per_s log; did the run fail?")


def main(argv=None) -> int:
    args = parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    today = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="ddpmkit-against-main-"))
    tree = work / f"main-{commit}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    done = False
    try:
        runs = {
            f"main {commit}": ([sys.executable, str(tree / "examples" / "train.py")], tree / "src"),
            f"today {today}": ([sys.executable, "-m", "ddpmkit", "train", *shlex.split(args.today_flags)],
                               ROOT / "src"),  # fmt: skip
        }
        cores = sorted(os.sched_getaffinity(0))
        order = [1, 0] if args.swap_cores else [0, 1]  # which run takes the first cores
        procs, results = {}, {}
        for i, (name, (command, src)) in enumerate(runs.items()):
            env = child_env(src, args.threads)
            if not imported_from(env).is_relative_to(src.resolve()):
                raise RuntimeError(f"{name} would import ddpmkit from {imported_from(env)}, not from {src}")
            out = work / name.split()[0]
            slot = order[i]
            pin = cores[slot * args.threads % len(cores) :][: args.threads] or cores[: args.threads]
            log = open(work / f"{out.name}.log", "w")
            start = time.perf_counter()
            proc = subprocess.Popen(command + common_flags(args, out), env=env, cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT)  # fmt: skip
            os.sched_setaffinity(proc.pid, pin)  # before torch starts its threads, which inherit it
            procs[name] = (proc, out, start, log, pin)
            print(f"{name}: training on cores {pin}, log {log.name}", flush=True)
        ended = {}
        while len(ended) < len(procs):  # each run's own wall time, whichever ends first
            for name, (proc, *_rest) in procs.items():
                if name not in ended and proc.poll() is not None:
                    ended[name] = time.perf_counter()
            time.sleep(0.5)
        for name, (proc, out, start, log, pin) in procs.items():
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed ({proc.returncode}); see {log.name}")
            log.close()
            speeds = logged_speeds(out)
            results[name] = {"images_per_s": statistics.median(speeds), "intervals": speeds, "cores": pin,
                             "wall_seconds": round(ended[name] - start, 1)}  # fmt: skip
            print(f"{name}: {results[name]['images_per_s']:.1f} img/s (median of {len(speeds)} intervals)")
        if args.eval_samples:
            import torch

            from ddpmkit import DDPMPipeline
            from ddpmkit.evaluation import evaluate_pipeline

            torch.set_num_threads(len(cores))
            for name, (_, out, *_rest) in procs.items():
                scores = evaluate_pipeline(DDPMPipeline.from_pretrained(out), args.data, args.eval_samples,
                                           scheduler="ddim", seed=0, fid=False)  # fmt: skip
                results[name].update({k: scores[k] for k in ("classifier_fd", "classifier_fd_floor", "confidence",
                                                             "class_entropy")})  # fmt: skip
                fd, floor = scores["classifier_fd"], scores["classifier_fd_floor"]
                print(f"{name}: classifier FD {fd:.1f} (floor {floor:.1f})")
        done = True
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        if done:
            shutil.rmtree(work, ignore_errors=True)
        else:  # the trained pipelines and logs stay for a look (or a rerun of the evaluation)
            print(f"kept {work}", file=sys.stderr)
    old, new = results[f"main {commit}"], results[f"today {today}"]
    record = {
        "cpu": cpu_name(args.threads), "threads_per_run": args.threads, "steps": args.steps, "batch": 32,
        "images": args.steps * 32, "eval_samples": args.eval_samples, "today_flags": args.today_flags,
        "runs": results,
        "speed_ratio": new["images_per_s"] / old["images_per_s"],
        "command": "python benchmarks/against_main.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }  # fmt: skip
    Path(args.output + ".json").write_text(json.dumps(record, indent=2) + "\n")
    Path(args.output + ".md").write_text(to_markdown(record))
    print(to_markdown(record))
    return 0


def cpu_name(threads: int) -> str:
    import torch

    from ddpmkit.utils.device import describe_device

    torch.set_num_threads(threads)  # each run's own thread count, as the name reports it
    return describe_device("cpu")


def to_markdown(record: dict) -> str:
    lines = [
        f"# Default MNIST recipe: today against an earlier main ({record['cpu']})",
        "",
        f"`{record['command']}`: {record['steps']} steps of batch {record['batch']} ({record['images']:,} images) "
        f"each, both runs at once, each on cores of its own; "
        f"classifier FD of {record['eval_samples']} DDIM-50 samples (today's evaluator)."
        + (f" Today's run adds `{record['today_flags']}`." if record.get("today_flags") else ""),
        "",
        "| run | training images/s | wall time (s) | classifier FD | floor | confidence | class entropy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in record["runs"].items():
        scores = [f"{r[k]:.1f}" if k in r else "" for k in ("classifier_fd", "classifier_fd_floor")]
        extra = [f"{r[k]:.3f}" if k in r else "" for k in ("confidence", "class_entropy")]
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {r['wall_seconds']:.0f} | " + " | ".join(scores + extra)
                     + " |")  # fmt: skip
    lines += ["", f"Images per CPU-second, today / earlier main: **{record['speed_ratio']:.2f}x**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
