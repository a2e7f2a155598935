"""Model cards and uploads to the Hugging Face Hub for trained pipeline folders."""

import json
import logging
import os
import shlex
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .utils.io import atomic_write_text

logger = logging.getLogger(__name__)

DEFAULT_TAGS = ["ddpmkit", "diffusers", "unconditional-image-generation", "ddpm", "pytorch"]
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "tmp-*", "tmp-*/**", ".tmp-*", "logs/**", ".ddpmkit.lock", "*.tmp"]
SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmsolver": "DPM-Solver++"}
HYPERPARAMETERS = ("model_config", "resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
                   "lr_scheduler", "lr_warmup_steps", "lr_min", "adam_weight_decay", "max_grad_norm", "snr_gamma",
                   "use_ema", "ema_max_decay", "mixed_precision", "ddpm_num_steps", "prediction_type", "seed",
                   "max_train_steps", "total_batch_size", "parameters", "class_conditional",
                   "condition_dropout")  # fmt: skip
RUN_KEYS = ("command", "device", "train_seconds", "started_at_step", "max_train_steps", "total_batch_size")
EVAL_KEYS = ("scheduler", "num_inference_steps", "num_samples", "seed", "classifier_fd", "classifier_fd_floor",
             "confidence", "confidence_floor", "class_entropy", "class_entropy_floor", "class_entropy_max",
             "class_histogram", "sampling_seconds", "device", "dataset", "fid", "fid_floor", "guidance_scale",
             "class_accuracy", "class_accuracy_per_class", "class_accuracy_floor")  # fmt: skip
CARD_TEXT = ("title", "summary", "samples", "trajectory", "notes")
EVAL_NAMES = {"classifier_fd": "classifier FD", "confidence": "confidence", "class_entropy": "class entropy"}
MAX_RECORD_BYTES = 4 << 20


def _read_record(folder: Path, name: str):
    """A JSON file of the folder (``None`` if absent), refusing links out of it, huge files and deep nesting."""
    path = folder / name
    if not path.exists():
        return None
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{path} is a link outside {folder}; copy the file in")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, too large for a training record")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({type(error).__name__}); fix or remove it") from None


def _command(command) -> str | None:
    if isinstance(command, list):
        return shlex.join(map(str, command))
    return command if isinstance(command, str) else None


def _run(args: dict) -> dict:
    run = {k: args[k] for k in RUN_KEYS if k in args}
    if "command" in run:
        run["command"] = _command(run["command"])
    return {k: v for k, v in run.items() if v is not None}


def read_card_record(folder: str | os.PathLike) -> dict:
    """How a pipeline folder was trained and scored, read from its JSON files only (``training_args.json``,
    ``eval_history.json``, ``eval_results.json``): what its model card shows and ``ddpmkit info`` prints.

    ``training_args.json`` may hold a ``card`` object with the text a trainer cannot know (``title``, ``summary``,
    ``samples``/``trajectory``: how the pictures were drawn, ``notes``: section name -> lines)."""
    folder = Path(folder)
    record: dict = {}
    args = _read_record(folder, "training_args.json")
    if not isinstance(args, dict):
        args = {}
    if args:
        record["training"] = {
            **_run(args),
            "dataset": args.get("dataset_id") or args.get("dataset") or args.get("dataset_name"),
            "dataset_name": args.get("dataset"),
            "eval_samples": args.get("eval_samples"), "eval_sampler": args.get("eval_sampler"),
            "grid": {k: args[k] for k in ("eval_batch_size", "ddpm_num_inference_steps", "seed") if k in args},
        }  # fmt: skip
        record["training"] = {k: v for k, v in record["training"].items() if v not in (None, {})}
        record["hyperparameters"] = {k: args[k] for k in HYPERPARAMETERS if k in args}
        if not args.get("class_conditional"):  # the label dropout of a model without labels is noise
            record["hyperparameters"].pop("condition_dropout", None)
        runs = args.get("previous_runs")
        if isinstance(runs, list):
            record["previous runs"] = [_run(r) for r in runs if isinstance(r, dict)]
        card = args.get("card")
        if isinstance(card, dict):
            record["card"] = {k: card[k] for k in CARD_TEXT if k in card}
    history = _read_record(folder, "eval_history.json")
    if isinstance(history, list) and history and all(isinstance(row, dict) for row in history):
        record["history"] = history
        last = history[-1]
        samples = last.get("num_samples", args.get("eval_samples"))
        scheduler = last.get("sampler", args.get("eval_sampler"))
        from .pipelines.sampling import SAMPLERS

        what = f"{samples} samples, {scheduler}-{SAMPLERS.get(scheduler, '?')}, step {last.get('step')}"
        record["metrics"] = {f"{name} ({what})": last[key] for key, name in EVAL_NAMES.items() if key in last}
    results = _read_record(folder, "eval_results.json")
    if isinstance(results, dict):
        evaluation = {key: {k: row[k] for k in EVAL_KEYS if k in row} for key, row in results.items()
                      if isinstance(row, dict) and "classifier_fd" in row}  # fmt: skip
        if evaluation:
            record["evaluation"] = evaluation
    return record


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, license: str = "apache-2.0",
                      path: str | os.PathLike | None = None) -> ModelCard:  # fmt: skip
    """The model card of a trained folder, made from its JSON files alone (:func:`read_card_record`).

    Args:
        folder: the pipeline folder.
        repo_id: the name shown in the title and the loading snippet (default: the folder's name).
        license: an SPDX-like license id for the metadata.
        path: where the card will be written (default ``folder/README.md``): links to the folder's files are
            made relative to it.
    """
    folder = Path(folder)
    path = Path(path) if path is not None else folder / "README.md"
    files = "" if path.parent.resolve() == folder.resolve() else os.path.relpath(folder, path.parent) + "/"
    repo_id = repo_id or folder.name
    record = read_card_record(folder)
    training, card = record.get("training", {}), record.get("card", {})
    notes = card.get("notes") if isinstance(card.get("notes"), dict) else {}
    hyper = record.get("hyperparameters", {})
    dataset = training.get("dataset")
    data = ModelCardData(
        library_name="ddpmkit",
        license=license,
        tags=DEFAULT_TAGS,
        datasets=[dataset] if dataset and "/" in dataset and not os.path.exists(dataset) else None,
        pipeline_tag="unconditional-image-generation",
    )
    steps = training.get("max_train_steps")
    title = card.get("title") or " ".join(
        [f"ddpmkit DDPM: {training.get('dataset_name') or dataset or repo_id}"]
        + ([f"(`{hyper['model_config']}`, {steps} steps)"] if "model_config" in hyper and steps else [])
    )  # fmt: skip
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    what = [f"the `{hyper['model_config']}` preset"] if "model_config" in hyper else []
    what += [f"{hyper['parameters']} parameters"] if "parameters" in hyper else []
    what += [f"{weights.stat().st_size / 1e6:.1f} MB of safetensors"] if weights.is_file() else []
    lines = [f"# {title}", "", card.get("summary") or (
        f"A DDPM (Ho et al. 2020) unconditional image generator trained with ddpmkit on {dataset or 'custom images'}, "
        "saved as a diffusers pipeline" + (f": {', '.join(what)}." if what else ".")), ""]  # fmt: skip
    if (folder / "samples.png").is_file():
        grid = training.get("grid", {})
        drawn = card.get("samples") or (
            f"{grid['eval_batch_size']} samples at the end of training, DDPM {grid['ddpm_num_inference_steps']} "
            f"steps, seeds {grid['seed']} to {grid['seed'] + grid['eval_batch_size'] - 1}"
            if len(grid) == 3 else None
        )  # fmt: skip
        lines += ["## Samples", ""] + ([f"{drawn}:", ""] if drawn else []) + [f"![samples]({files}samples.png)", ""]
    if (folder / "trajectory.png").is_file():
        drawn = card.get("trajectory")
        lines += [f"The denoising process{f' ({drawn})' if drawn else ''}:", "",
                  f"![trajectory]({files}trajectory.png)", ""]  # fmt: skip
    lines += _evaluation_section(record, notes.get("Evaluation"), files)
    lines += _compute_section(record, notes.get("Compute"))
    lines += ["## Usage", "", "```python", "import torch", "from diffusers import DDIMScheduler",
              "from ddpmkit import DDPMPipeline", "", f'pipe = DDPMPipeline.from_pretrained("{repo_id}")',
              "images = pipe(batch_size=16).images                                  # DDPM, 1000 steps",
              "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)   # or DDIM, 50 steps",
              "images = pipe(batch_size=16, num_inference_steps=50, generator=torch.manual_seed(0)).images",
              ]  # fmt: skip
    names = _class_names(folder)
    if names:
        from .pipelines import DEFAULT_GUIDANCE

        lines += [f"# the class asked for, by name or id: {', '.join(repr(n) for n in names[:10])}"
                  + (", ..." if len(names) > 10 else ""),
                  f"images = pipe(class_labels=[{names[-1]!r}] * 16, guidance_scale={DEFAULT_GUIDANCE:g}, "
                  "num_inference_steps=50).images"]  # fmt: skip
    lines += ["```", ""]
    if names:
        lines += [f"From the command line: `ddpmkit sample --model {repo_id} --class all` draws a row per class.", ""]
    commands = [run["command"] for run in [*record.get("previous runs", []), training] if run.get("command")]
    if commands or notes.get("Training"):
        lines += ["## Training", ""] + _paragraphs(notes.get("Training"))
        lines += ["```bash", *commands, "```", ""] if commands else []
    if hyper:
        lines += ["### Hyperparameters", "", "| name | value |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in hyper.items()] + [""]
    for section, text in notes.items():
        if section not in ("Evaluation", "Compute", "Training"):
            lines += [f"## {section}", "", *_paragraphs(text)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n")


def _class_names(folder: Path) -> list[str]:
    """The class names of a class-conditional folder (its UNet config's ``id2label``), else ``[]``."""
    try:
        config = _read_record(folder, "unet/config.json")
    except (OSError, ValueError):
        return []
    id2label = config.get("id2label") if isinstance(config, dict) else None
    if not isinstance(id2label, dict):
        return []
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k) if str(k).isdigit() else -1)]


def _paragraphs(text) -> list[str]:
    if isinstance(text, str):
        text = [text]
    return [line for item in text or [] if isinstance(item, str) for line in (item, "")]


def _sampler(row: dict) -> str:
    name = SAMPLER_NAMES.get(row.get("scheduler"), str(row.get("scheduler")))
    return f"{name}, {row.get('num_inference_steps')} steps"


def _evaluation_section(record: dict, notes, files: str) -> list[str]:
    evaluation = record.get("evaluation", {})
    history = record.get("history", [])
    if not evaluation and not history and not notes:
        return []
    lines = ["## Evaluation", ""]
    if evaluation:
        from .pipelines import DEFAULT_GUIDANCE

        first = next(iter(evaluation.values()))
        # the default use: unguided, or for a class-conditional model every class at the default guidance
        rows = list(evaluation.values())
        at_default = [r for r in rows if r.get("guidance_scale") == DEFAULT_GUIDANCE]
        default, guided = (at_default, True) if at_default else ([r for r in rows if "guidance_scale" not in r], False)
        lines += [] if not default else [
            f"`ddpmkit evaluate` on {first.get('device', 'the device named below')}: N samples (seeds counted up from "
            "the first seed"
            + (f"; every class asked for equally often, at the default guidance scale {DEFAULT_GUIDANCE:g}"
               if guided else "") + ") against "
            f"the statistics of the training images of {first.get('dataset', 'the dataset')}, in the feature space "
            "of the dataset's classifier that ships with ddpmkit. The floor is N held-out test images drawn at random "
            "(seed 0), measured the same way; lower is better.",
            "",
            "| sampler | N | first seed | classifier FD | floor | x floor | mean confidence | class entropy "
            "| smallest class | sampling time |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for row in default:
            fd, floor = row.get("classifier_fd"), row.get("classifier_fd_floor")
            histogram = row.get("class_histogram")
            cells = [
                _sampler(row), _fmt(row.get("num_samples", "")), _fmt(row.get("seed", "")), _num(fd), _num(floor),
                f"{fd / floor:.1f}" if isinstance(fd, (int, float)) and isinstance(floor, (int, float)) and floor
                else "", _num(row.get("confidence"), 3), _num(row.get("class_entropy"), 3),
                f"{min(histogram):.1%}" if isinstance(histogram, list) and histogram else "",
                f"{row['sampling_seconds']:.1f} s" if isinstance(row.get("sampling_seconds"), (int, float)) else "",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        top = first.get("class_entropy_max")
        lines += ["", f"Class entropy is that of the classifier's predicted classes (at most {top:.3f}, every class "
                  "equally often); the smallest class is the share of the rarest one."] if top else []  # fmt: skip
        lines += _guided_table([r for r in evaluation.values() if "guidance_scale" in r])
        lines += ["", f"Numbers in [`eval_results.json`]({files}eval_results.json).", ""]
    if history:
        args = record.get("training", {})
        by_what: dict[tuple, list[str]] = {}
        for row in history:
            key = (row.get("num_samples", args.get("eval_samples")), row.get("sampler", args.get("eval_sampler")))
            if isinstance(row.get("classifier_fd"), (int, float)):
                by_what.setdefault(key, []).append(f"step {row.get('step')}: {row['classifier_fd']:.1f}")
        from .pipelines.sampling import SAMPLERS

        parts = [f"{n} {SAMPLER_NAMES.get(s, s)}-{SAMPLERS.get(s, '?')} samples: {', '.join(points)}"
                 for (n, s), points in by_what.items()]  # fmt: skip
        if parts:
            lines += [f"Classifier FD during training ([`eval_history.json`]({files}eval_history.json)), "
                      + "; ".join(parts) + ".", ""]  # fmt: skip
    return lines + _paragraphs(notes)


def _guided_table(rows: list[dict]) -> list[str]:
    """Rows of ``ddpmkit evaluate --guidance_scale``: the class asked for, every class equally often."""
    if not rows:
        return []
    floor = next((r["class_accuracy_floor"] for r in rows if isinstance(r.get("class_accuracy_floor"), float)), None)
    lines = [
        "", "### Drawing the class asked for", "",
        "`ddpmkit evaluate --guidance_scale S`: the N samples ask for every class equally often, with classifier-free "
        "guidance at scale S (1: the conditional model alone; 0: the unconditional model, its null class). The "
        "asked-for-class accuracy is how often the "
        "classifier names the class that was asked for"
        + (f" (on the real test images it names their true class {floor:.1%} of the time)" if floor else "")
        + "; the worst class is the class with the lowest accuracy.", "",
        "| sampler | guidance scale | N | first seed | asked-for-class accuracy | worst class | classifier FD "
        "| x floor | class entropy | sampling time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip

    def order(r: dict) -> tuple:
        return _sampler(r), r["guidance_scale"] if _is_num(r["guidance_scale"]) else 0, r.get("seed") or 0

    for row in sorted(rows, key=order):
        fd, fd_floor, per_class = row.get("classifier_fd"), row.get("classifier_fd_floor"), row.get(
            "class_accuracy_per_class")  # fmt: skip
        scores = [a for a in per_class if _is_num(a)] if isinstance(per_class, list) else []
        worst = f"{min(scores):.1%} ({per_class.index(min(scores))})" if scores else ""
        cells = [
            _sampler(row), f"{row['guidance_scale']:g}" if _is_num(row.get("guidance_scale")) else "",
            _fmt(row.get("num_samples", "")), _fmt(row.get("seed", "")),
            f"{row['class_accuracy']:.1%}" if _is_num(row.get("class_accuracy")) else "", worst, _num(fd),
            f"{fd / fd_floor:.1f}" if _is_num(fd) and _is_num(fd_floor) and fd_floor else "",
            _num(row.get("class_entropy"), 3),
            f"{row['sampling_seconds']:.1f} s" if _is_num(row.get("sampling_seconds")) else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compute_section(record: dict, notes) -> list[str]:
    runs = [r for r in [*record.get("previous runs", []), record.get("training", {})] if "train_seconds" in r]
    if not runs and not notes:
        return []
    lines = ["## Compute", ""]
    images = seconds = 0
    for run in runs:
        start, end, batch = run.get("started_at_step", 0), run.get("max_train_steps"), run.get("total_batch_size")
        seen = (end - start) * batch if isinstance(end, int) and isinstance(batch, int) else None
        images += seen or 0
        seconds += run["train_seconds"]
        lines.append(f"- steps {start:,} to {end:,}" + (f" ({seen:,} images)" if seen else "")
                     + f": {_duration(run['train_seconds'])} on {run.get('device', 'an unrecorded device')}, "
                     "including evaluations, sample grids and checkpoints")  # fmt: skip
    if len(runs) > 1:
        lines.append(f"- in all: {images:,} images, {_duration(seconds)}")
    return lines + ([""] if runs else []) + _paragraphs(notes)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours} h " if hours else "") + f"{rest // 60} min {rest % 60} s"


def _num(value, digits: int | None = None) -> str:
    if not isinstance(value, (int, float)):
        return ""
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, license: str = "apache-2.0",
                     path: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """Writes the card of :func:`render_model_card` to ``folder/README.md`` (or ``path``, with links to the
    folder's files made relative to it), atomically."""
    path = Path(path) if path is not None else Path(folder) / "README.md"
    atomic_write_text(path, str(render_model_card(folder, repo_id, license, path=path)))
    return path


def resolve_token(token: str | None = None) -> str | None:
    """``token``, else the one ``huggingface_hub`` finds (``HF_TOKEN``, ``hf auth login``), else ``None``."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def check_push_args(push_to_hub: bool, hub_model_id: str | None, hub_token: str | None) -> None:
    """Checks up front, before any training, that an upload at the end can work."""
    if not push_to_hub:
        return
    if hub_model_id is not None and (hub_model_id.count("/") > 1 or not hub_model_id.strip("/")):
        raise ValueError(f"hub_model_id {hub_model_id!r} must look like 'user/name' or 'name'")
    if resolve_token(hub_token) is None:
        raise ValueError(
            "--push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --hub_token"
        )


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload DDPM pipeline",
) -> str:
    """Creates the model repo if needed and uploads ``folder`` (checkpoints, logs and temporary files left out).
    Returns the repo id the Hub assigned (with the user's namespace)."""
    api = HfApi(token=resolve_token(token))
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=UPLOAD_IGNORE,
        repo_type="model",
    )
    logger.info("Uploaded %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id
