"""Model cards and uploads to the Hugging Face Hub for trained pipeline folders."""

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
