import pickle
import sys
import types

import pytest
import torch
import tutorial_reference as tutorial
from safetensors.torch import save_file

from ddpmkit import DDPMPipeline, UnsafeFolderError
from ddpmkit.convert import convert_tutorial_checkpoint, convert_tutorial_state_dict

SMALL = {"channels": (32, 64, 128), "time_emb_size": 32}


def tutorial_model(img_channel=1, **kwargs):
    torch.manual_seed(0)
    return tutorial.UNet(img_channel, **{**SMALL, **kwargs}).eval()


@pytest.mark.parametrize("img_channel", [1, 3])
def test_state_dict_converts_to_identical_outputs(img_channel):
    model = tutorial_model(img_channel)
    config, state_dict = convert_tutorial_state_dict(model.state_dict())
    assert config["block_out_channels"] == [32, 64, 128] and config["in_channels"] == img_channel
    from ddpmkit import ConvUNet2DModel

    unet = ConvUNet2DModel(**config).eval()
    unet.load_state_dict(state_dict, strict=True)
    x, t = torch.randn(3, img_channel, 32, 32), torch.tensor([0, 500, 999])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t).sample, model(x, t), atol=1e-6, rtol=0)


def test_full_tutorial_size_parameter_count_matches():
    model = tutorial.UNet(1)
    config, state_dict = convert_tutorial_state_dict(model.state_dict())
    assert config["block_out_channels"] == [64, 128, 256, 512, 1024] and config["time_embedding_dim"] == 256
    assert sum(v.numel() for v in state_dict.values()) == sum(p.numel() for p in model.parameters())


def test_safetensors_state_dict_needs_no_opt_in(tmp_path):
    model = tutorial_model()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    pipe = convert_tutorial_checkpoint(tmp_path / "model.safetensors", tmp_path / "out")
    loaded = DDPMPipeline.from_pretrained(tmp_path / "out")
    assert loaded.scheduler.config.clip_prev_sample and loaded.scheduler.config.variance_type == "fixed_large"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, 7).sample, model(x, torch.tensor([7, 7])), atol=1e-6, rtol=0)
    torch.testing.assert_close(pipe.unet.state_dict(), loaded.unet.state_dict())


@pytest.fixture
def tutorial_modules(monkeypatch):
    """Registers the tutorial's classes under the module names its train.py pickles them with."""
    classes = (("unet", tutorial.UNet), ("conv_block", tutorial.ConvBlock), ("TimeEmbedding", tutorial.TimeEmbedding))
    for name, cls in classes:
        module = types.ModuleType(name)
        setattr(module, cls.__name__, cls)
        monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(cls, "__module__", name)


def test_whole_model_pickle_needs_opt_in_and_not_the_tutorial_code(tmp_path, tutorial_modules, monkeypatch):
    model = tutorial_model()
    torch.save(model, tmp_path / "number_model.pt")  # what the tutorial's train.py writes
    for name in ("unet", "conv_block", "TimeEmbedding"):  # the tutorial's code is not installed here
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(UnsafeFolderError, match="allow_pickle=True"):
        convert_tutorial_checkpoint(tmp_path / "number_model.pt")
    pipe = convert_tutorial_checkpoint(tmp_path / "number_model.pt", allow_pickle=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, 3).sample, model(x, torch.tensor([3, 3])), atol=1e-6, rtol=0)


def test_state_dict_pickle_loads_with_opt_in(tmp_path):
    model = tutorial_model()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    with pytest.raises(UnsafeFolderError):
        convert_tutorial_checkpoint(tmp_path / "state.pt")
    pipe = convert_tutorial_checkpoint(tmp_path / "state.pt", allow_pickle=True)
    assert list(pipe.unet.config.block_out_channels) == [32, 64, 128]


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_that_would_run_code_is_refused_even_with_opt_in(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"enc_convs.0.seq1.0.weight": _Payload()}, f)
    with pytest.raises(UnsafeFolderError, match="builtins.print"):
        convert_tutorial_checkpoint(tmp_path / "evil.pt", allow_pickle=True)
    assert "code ran" not in capsys.readouterr().out


def test_not_a_tutorial_checkpoint(tmp_path):
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a state dict of the tutorial's UNet"):
        convert_tutorial_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(OSError, match="does not exist"):
        convert_tutorial_checkpoint(tmp_path / "missing.pt")
