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


def create_model_card(
    repo_id: str,
    dataset: str | None = None,
    command: list[str] | str | None = None,
    hyperparameters: dict | None = None,
    sample_grid: str | None = None,
    metrics: dict[str, float] | None = None,
    license: str = "apache-2.0",
    extra_tags: list[str] | None = None,
) -> ModelCard:
    """A model card for a trained :class:`~ddpmkit.DDPMPipeline` folder.

    Args:
        repo_id: the Hub id (or local name) shown in the title and the loading snippet.
        dataset: the training data: a Hub dataset id goes into the metadata; local data is only described.
        command: the training command line.
        hyperparameters: name -> value, shown as a table.
        sample_grid: path of a sample image, relative to the folder.
        metrics: measured numbers (e.g. ``{"FID (10k samples)": 12.3}``), shown as a table.
        license: an SPDX-like license id for the metadata.
    """
    data = ModelCardData(
        library_name="ddpmkit",
        license=license,
        tags=DEFAULT_TAGS + [t for t in (extra_tags or []) if t not in DEFAULT_TAGS],
        datasets=[dataset] if dataset and "/" in dataset and not os.path.exists(dataset) else None,
        pipeline_tag="unconditional-image-generation",
    )
    if isinstance(command, (list, tuple)):
        command = shlex.join(str(c) for c in command)
    lines = [
        f"# {repo_id}",
        "",
        "A DDPM (Ho et al. 2020) unconditional image generator trained with ddpmkit "
        f"on {dataset or 'custom images'}, saved as a diffusers pipeline.",
        "",
    ]
    if sample_grid:
        lines += ["## Samples", "", f"![samples]({sample_grid})", ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "from ddpmkit import DDPMPipeline",
        "",
        f'pipe = DDPMPipeline.from_pretrained("{repo_id}")',
        "images = pipe(batch_size=16).images",
        "```",
        "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in metrics.items()]
        lines += [""]
    if command:
        lines += ["## Training", "", "```bash", command, "```", ""]
    if hyperparameters:
        lines += ["### Hyperparameters", "", "| name | value |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in hyperparameters.items()]
        lines += [""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def save_model_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    """Writes ``card`` to ``folder/README.md`` atomically."""
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))
    return path


HYPERPARAMETERS = ("model_config", "resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
                   "lr_scheduler", "lr_warmup_steps", "lr_min", "adam_weight_decay", "max_grad_norm", "snr_gamma",
                   "use_ema", "ema_max_decay", "mixed_precision", "ddpm_num_steps", "prediction_type", "seed",
                   "max_train_steps", "total_batch_size", "parameters")  # fmt: skip
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


def read_card_record(folder: str | os.PathLike) -> dict:
    """How a pipeline folder was trained and scored, read from its JSON files only (``training_args.json``,
    ``eval_history.json``, ``eval_results.json``): what its model card shows and ``ddpmkit info`` prints."""
    folder = Path(folder)
    record: dict = {}
    args = _read_record(folder, "training_args.json")
    if isinstance(args, dict):
        command = args.get("command")
        record["training"] = {
            "command": shlex.join(map(str, command)) if isinstance(command, list) else command,
            "dataset": args.get("dataset_id") or args.get("dataset") or args.get("dataset_name"),
            "device": args.get("device"), "train_seconds": args.get("train_seconds"),
            "started_at_step": args.get("started_at_step"),
        }  # fmt: skip
        record["training"] = {k: v for k, v in record["training"].items() if v is not None}
        record["hyperparameters"] = {k: args[k] for k in HYPERPARAMETERS if k in args}
        runs = args.get("previous_runs")
        if isinstance(runs, list):
            record["previous runs"] = [shlex.join(map(str, r["command"])) for r in runs
                                       if isinstance(r, dict) and isinstance(r.get("command"), list)]  # fmt: skip
        samples, scheduler = args.get("eval_samples"), args.get("eval_sampler")
    else:
        samples = scheduler = None
    history = _read_record(folder, "eval_history.json")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        last = history[-1]
        from .pipelines.sampling import SAMPLERS

        what = f"{samples} samples, {scheduler}-{SAMPLERS.get(scheduler, '?')}, step {last.get('step')}"
        record["metrics"] = {f"{name} ({what})": last[key] for key, name in EVAL_NAMES.items() if key in last}
    results = _read_record(folder, "eval_results.json")
    if isinstance(results, dict):
        evaluation = {}
        for key, row in results.items():
            if isinstance(row, dict) and "classifier_fd" in row:
                evaluation[key] = {k: row[k] for k in ("classifier_fd", "classifier_fd_floor", "confidence",
                                                       "class_entropy", "fid", "fid_floor") if k in row}  # fmt: skip
        if evaluation:
            record["evaluation"] = evaluation
    return record


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, license: str = "apache-2.0") -> Path:
    """The model card of a trained folder, from its JSON files (:func:`read_card_record`), written to README.md."""
    folder = Path(folder)
    record = read_card_record(folder)
    training = record.get("training", {})
    metrics = dict(record.get("metrics", {}))
    for key, row in record.get("evaluation", {}).items():
        floor = row.get("classifier_fd_floor")
        metrics[f"classifier FD ({key})"] = row["classifier_fd"]
        if floor is not None:
            metrics[f"classifier FD real-data floor ({key})"] = floor
    compute = {k: training[k] for k in ("device", "train_seconds") if k in training}
    card = create_model_card(
        repo_id or folder.name,
        dataset=training.get("dataset"),
        command="\n".join([*record.get("previous runs", []), training.get("command") or ""]).strip() or None,
        hyperparameters={**record.get("hyperparameters", {}), **compute} or None,
        sample_grid="samples.png" if (folder / "samples.png").is_file() else None,
        metrics=metrics or None,
        license=license,
    )
    return save_model_card(card, folder)


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
