"""Tests of ddpmkit.hub: model cards, and uploads with only the network calls replaced."""

from types import SimpleNamespace

import pytest
from helpers_train import make_parquet, run_train, tiny_model_config, train_argv
from huggingface_hub import HfApi, ModelCard

from ddpmkit.hub import check_push_args, push_to_hub


@pytest.fixture
def fake_hub(monkeypatch):
    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "private": private, "exist_ok": exist_ok, "token": self.token}
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kwargs):
        from pathlib import Path

        calls["upload_folder"] = {"repo_id": repo_id, "folder_path": folder_path, "ignore_patterns": ignore_patterns}
        calls["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_folder_without_checkpoints(tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    (tmp_path / "model_index.json").write_text("{}")
    repo = push_to_hub(tmp_path, "ddpm-mnist", private=True)
    assert repo == "me/ddpm-mnist"
    expected = {"repo_id": "ddpm-mnist", "private": True, "exist_ok": True, "token": "hf_from_env"}
    assert fake_hub["create_repo"] == expected
    assert fake_hub["upload_folder"]["repo_id"] == "me/ddpm-mnist"
    assert "checkpoint-*" in fake_hub["upload_folder"]["ignore_patterns"]
    push_to_hub(tmp_path, "me/x", token="hf_explicit")
    assert fake_hub["create_repo"]["token"] == "hf_explicit"


def test_push_needs_a_token_before_training(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="needs a Hugging Face token.*--hub_token"):
        check_push_args(True, "me/x", None)
    check_push_args(True, "me/x", "hf_given")
    check_push_args(False, None, None)
    with pytest.raises(ValueError, match="must look like 'user/name'"):
        check_push_args(True, "a/b/c", "hf_given")


def test_train_push_to_hub_end_to_end(tmp_path, fake_hub):
    data_file = make_parquet(tmp_path / "data.parquet", n=16)
    out = tmp_path / "out"
    argv = train_argv(
        data_file, out, tiny_model_config(tmp_path), "--push_to_hub", "--hub_private_repo", max_train_steps=2,
        checkpointing_steps=2, hub_model_id="me/tiny-ddpm", hub_token="hf_cli",
    )  # fmt: skip
    run_train(argv)
    assert fake_hub["create_repo"] == {"repo_id": "me/tiny-ddpm", "private": True, "exist_ok": True, "token": "hf_cli"}
    assert "README.md" in fake_hub["files"] and "model_index.json" in fake_hub["files"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "ddpmkit" and "me/tiny-ddpm" in card.text
    text = (out / "README.md").read_text()
    assert "--hub_model_id me/tiny-ddpm" in text  # the command line is in the card...
    assert "hf_cli" not in text and "--hub_token REDACTED" in text  # ...without the token
