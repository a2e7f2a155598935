"""Model cards are made from a folder's JSON records alone, and the committed cards are what their records give."""

import json
import shlex
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from ddpmkit.commands import main
from ddpmkit.hub import read_card_record, render_model_card, write_model_card
from ddpmkit.pipelines import DEFAULT_GUIDANCE

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = sorted(p for p in (ROOT / "pretrained").iterdir() if (p / "model_index.json").is_file())


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ddpm-digits"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    first = {"command": ["ddpmkit", "train", "--max_train_steps", "10"], "device": "cpu (Test CPU, 1 threads)",
             "train_seconds": 61.0, "started_at_step": 0, "max_train_steps": 10, "total_batch_size": 8}  # fmt: skip
    (folder / "training_args.json").write_text(json.dumps({
        "command": ["ddpmkit", "train", "--max_train_steps", "30", "--resume_from_checkpoint", "latest"],
        "dataset": "mnist", "dataset_id": "ylecun/mnist", "device": "cpu (Test CPU, 1 threads)",
        "train_seconds": 3725.4, "started_at_step": 10, "max_train_steps": 30, "total_batch_size": 8,
        "model_config": "small", "learning_rate": 0.001, "snr_gamma": 5.0, "parameters": "0.55M",
        "eval_samples": 50, "eval_sampler": "ddim", "eval_batch_size": 4, "ddpm_num_inference_steps": 1000, "seed": 3,
        "previous_runs": [first],
        "card": {"title": "Digits | test", "notes": {"Compute": ["Shared with a test run."], "Data": "Tiny."}},
    }))  # fmt: skip
    (folder / "eval_history.json").write_text(json.dumps([
        {"step": 10, "classifier_fd": 150.0, "num_samples": 20, "sampler": "ddim"},
        {"step": 30, "classifier_fd": 90.25},
    ]))  # fmt: skip
    (folder / "eval_results.json").write_text(json.dumps({"ddim-50steps-n1000-seed0": {
        "scheduler": "ddim", "num_inference_steps": 50, "num_samples": 1000, "seed": 7, "classifier_fd": 40.0,
        "classifier_fd_floor": 8.0, "confidence": 0.9, "class_entropy": 2.25, "class_entropy_max": 2.302585,
        "class_histogram": [0.05] + [0.95 / 9] * 9, "sampling_seconds": 12.5, "device": "cpu (Test CPU, 1 threads)",
        "dataset": "data/mnist",
    }, "broken": "not a row"}))  # fmt: skip
    (folder / "samples.png").write_bytes(b"")
    return folder


def test_the_card_shows_the_evaluation_against_its_floor_the_compute_of_every_run_and_the_notes(tmp_path):
    text = str(render_model_card(_folder(tmp_path), "me/digits"))
    card = ModelCard(text)
    assert card.data.library_name == "ddpmkit" and card.data.datasets == ["ylecun/mnist"]
    assert "# Digits | test" in text
    assert "| DDIM, 50 steps | 1000 | 7 | 40.0 | 8.00 | 5.0 | 0.900 | 2.250 | 5.0% | 12.5 s |" in text
    assert "20 DDIM-50 samples: step 10: 150.0; 50 DDIM-50 samples: step 30: 90.2" in text
    assert "- steps 0 to 10 (80 images): 1 min 1 s on cpu (Test CPU, 1 threads)" in text
    assert "- steps 10 to 30 (160 images): 1 h 2 min 5 s on cpu (Test CPU, 1 threads)" in text
    assert "- in all: 240 images, 1 h 3 min 6 s" in text and "Shared with a test run." in text
    assert "## Data\n\nTiny." in text
    commands = "ddpmkit train --max_train_steps 10\nddpmkit train --max_train_steps 30 --resume_from_checkpoint latest"
    assert commands in text
    assert "4 samples at the end of training, DDPM 1000 steps, seeds 3 to 6" in text
    assert 'DDPMPipeline.from_pretrained("me/digits")' in text and "| snr_gamma | 5 |" in text
    assert "trajectory" not in text  # no trajectory.png, no section


def test_a_card_written_elsewhere_links_to_the_folder(tmp_path):
    folder = _folder(tmp_path)
    path = write_model_card(folder, path=tmp_path / "cards" / "digits.md")
    text = path.read_text()
    assert "![samples](../ddpm-digits/samples.png)" in text and "(../ddpm-digits/eval_results.json)" in text
    assert "![samples](samples.png)" in write_model_card(folder).read_text()


def test_the_record_is_read_from_json_only_and_a_bad_file_is_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "README.md").write_text("| learning_rate | 9 |")
    record = read_card_record(folder)
    assert record["hyperparameters"]["learning_rate"] == 0.001
    assert [r["max_train_steps"] for r in record["previous runs"]] == [10]
    assert record["previous runs"][0]["command"] == shlex.join(["ddpmkit", "train", "--max_train_steps", "10"])
    (folder / "eval_history.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="eval_history.json is not valid JSON"):
        read_card_record(folder)


def test_ddpmkit_card_writes_and_checks(tmp_path, capsys):
    folder = _folder(tmp_path)
    assert main(["card", "--model", str(folder), "--check"]) == 1
    assert "differs from the card its records give" in capsys.readouterr().out
    assert main(["card", "--model", str(folder), "--repo_id", "me/digits"]) == 0
    assert main(["card", "--model", str(folder), "--repo_id", "me/digits", "--check"]) == 0
    assert main(["card", "--model", str(folder), "--check"]) == 1  # another name, another card
    assert main(["card", "--model", str(folder), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("folder", PRETRAINED, ids=lambda p: p.name)
def test_committed_cards_are_what_their_records_give(folder):
    """pretrained/NAME/README.md and model_cards/NAME.md are written by `ddpmkit card`; edit the JSON, not them."""
    repo_id = f"pretrained/{folder.name}"
    fix = f"run `ddpmkit card --model {repo_id} --repo_id {repo_id}` (and --out model_cards/{folder.name}.md)"
    assert (folder / "README.md").read_text() == str(render_model_card(folder, repo_id)), fix
    copy = ROOT / "model_cards" / f"{folder.name}.md"
    assert copy.read_text() == str(render_model_card(folder, repo_id, path=copy)), fix


def test_a_conditional_card_shows_the_class_asked_for_per_guidance_scale(tmp_path):
    folder = _folder(tmp_path)
    (folder / "unet").mkdir()
    (folder / "unet" / "config.json").write_text(json.dumps({"id2label": {"0": "zero", "1": "one"}}))
    rows = json.loads((folder / "eval_results.json").read_text())
    for scale, accuracy in ((3.0, 0.99), (1.0, 0.9)):
        rows[f"ddim-g{scale}"] = {**rows["ddim-50steps-n1000-seed0"], "guidance_scale": scale,
                                  "class_accuracy": accuracy, "class_accuracy_per_class": [accuracy, 0.8],
                                  "class_accuracy_floor": 0.99}  # fmt: skip
    rows["ddim-g1.0-seed2"] = {**rows["ddim-g1.0"], "seed": 2, "class_accuracy": 0.5}
    (folder / "eval_results.json").write_text(json.dumps(rows))
    text = str(render_model_card(folder, "me/digits"))
    table = text[text.index("### Drawing the class asked for") :]
    assert "names their true class 99.0% of the time" in table
    first, second, third = (line for line in table.splitlines() if line.startswith("| DDIM, 50 steps"))
    assert first.startswith("| DDIM, 50 steps | 1 | 1000 | 2 | 50.0% |")  # same scale: by first seed
    assert second == "| DDIM, 50 steps | 1 | 1000 | 7 | 90.0% | 80.0% (1) | 40.0 | 5.0 | 2.250 | 12.5 s |"
    assert third.startswith("| DDIM, 50 steps | 3 | 1000 | 7 | 99.0% |")
    assert text.count("| DDIM, 50 steps | 1000 |") == 1  # the unguided table keeps the unguided row only
    assert "pipe(class_labels=['one'] * 16, guidance_scale=" in text and "--class all" in text

    # once the default guidance is measured, the main table shows the default use: every class at that scale
    rows["ddim-default"] = {**rows["ddim-g1.0"], "guidance_scale": DEFAULT_GUIDANCE, "classifier_fd": 24.0}
    (folder / "eval_results.json").write_text(json.dumps(rows))
    text = str(render_model_card(folder, "me/digits"))
    main_table = text[: text.index("### Drawing the class asked for")]
    assert f"at the default guidance scale {DEFAULT_GUIDANCE:g}" in main_table
    assert [line for line in main_table.splitlines() if line.startswith("| DDIM")] == [
        "| DDIM, 50 steps | 1000 | 7 | 24.0 | 8.00 | 3.0 | 0.900 | 2.250 | 5.0% | 12.5 s |"
    ]


@pytest.mark.parametrize("flags, units, bf16", [
    ("fpu avx2 fma", "AVX2", False), ("avx2 avx512f", "AVX-512", False),
    ("avx2 avx512f avx512_bf16", "AVX512-BF16", True),
    ("avx512f avx512_bf16 amx_bf16 amx_tile", "AVX512-BF16/AMX", True),
])  # fmt: skip
def test_a_cpu_is_named_with_the_units_its_speed_depends_on(monkeypatch, flags, units, bf16):
    import torch

    from ddpmkit.utils import device

    monkeypatch.setattr(device, "_cpu_info", lambda: {"model name": "Test CPU", "flags": flags})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device.describe_device("cpu") == f"cpu (Test CPU, {units}, 1 thread)"
    assert device.cpu_has_native_bf16() is bf16
