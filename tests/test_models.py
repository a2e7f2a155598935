import pytest
import torch
from tiny import TINY_UNET

from ddpmkit import MODEL_PRESETS, ConvUNet2DModel, model_preset
from ddpmkit.models import SinusoidalTimestepEmbedding
from ddpmkit.models.unet_conv import UNet2DOutput


def test_defaults_are_the_tutorial_model():
    model = ConvUNet2DModel()
    assert model.config.block_out_channels == (64, 128, 256, 512, 1024)
    assert model.config.time_embedding_dim == 256 and model.config.norm_num_groups == 32
    assert sum(p.numel() for p in model.parameters()) == 33_260_417  # 33.3M at one input channel
    assert model_preset("tutorial")["block_out_channels"] == model.config.block_out_channels


def test_time_embedding_interleaves_sin_and_cos():
    emb = SinusoidalTimestepEmbedding(10)(torch.tensor([100.0]))[0]
    for i in range(5):
        w = 10000 ** (-i / 5)
        assert emb[2 * i].item() == pytest.approx(torch.sin(torch.tensor(100.0 * w)).item(), abs=1e-5)
        assert emb[2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(100.0 * w)).item(), abs=1e-5)


@pytest.mark.parametrize("timestep", [3, 3.0, torch.tensor(3), torch.tensor([3, 3])])
def test_forward_accepts_every_timestep_form(timestep):
    torch.manual_seed(0)
    model = ConvUNet2DModel(**TINY_UNET).eval()
    x = torch.randn(2, 1, 8, 8)
    out = model(x, timestep)
    assert isinstance(out, UNet2DOutput) and out.sample.shape == (2, 1, 8, 8)
    reference = model(x, torch.tensor([3, 3])).sample
    torch.testing.assert_close(out.sample, reference)
    (tuple_out,) = model(x, timestep, return_dict=False)
    torch.testing.assert_close(tuple_out, reference)


def test_per_sample_timesteps_differ():
    model = ConvUNet2DModel(**TINY_UNET).eval()
    x = torch.randn(1, 1, 8, 8).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([1, 900])).sample
    assert not torch.allclose(out[0], out[1])


def test_rgb_rectangular_and_out_channels():
    model = ConvUNet2DModel(**{**TINY_UNET, "sample_size": (8, 16)}, in_channels=3, out_channels=6)
    assert model(torch.randn(1, 3, 8, 16), 0).sample.shape == (1, 6, 8, 16)


def test_class_conditioning():
    model = ConvUNet2DModel(**TINY_UNET, num_class_embeds=10).eval()
    x = torch.randn(2, 1, 8, 8)
    a = model(x, 5, class_labels=torch.tensor([0, 0])).sample
    b = model(x, 5, class_labels=torch.tensor([0, 7])).sample
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="class_labels must be given"):
        model(x, 5)


def test_gradients_reach_every_parameter():
    model = ConvUNet2DModel(**TINY_UNET)
    model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).sample.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"\[24\] not divisible by norm_num_groups 16"):
        ConvUNet2DModel(block_out_channels=(16, 24), norm_num_groups=16, sample_size=8)


def test_mnist_28_with_five_levels_explains_the_fix():
    with pytest.raises(ValueError, match=r"sample_size 28 is not divisible by 2\*\*4 = 16 .*resize the images to 32"):
        ConvUNet2DModel(sample_size=28)
    model = ConvUNet2DModel(**TINY_UNET)
    with pytest.raises(ValueError, match=r"input height/width 9 .* 2 levels.*resize the images to 10"):
        model(torch.randn(1, 1, 9, 9), 0)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"block_out_channels": (8, 10**9)}, "between 1 and 8192"),
        ({"sample_size": -4}, "sample_size must be between"),
        ({"in_channels": 1.5}, "in_channels must be an integer"),
        ({"act_fn": "tanh"}, "act_fn 'tanh' is not supported"),
        ({"time_embedding_dim": 7}, "must be even"),
        ({"block_out_channels": []}, "list of 1 to 8"),
        ({"attention_head_dim": 4}, "attention_head_dim 4 needs add_attention=True"),
        ({"add_attention": True, "attention_head_dim": 5}, "must divide the lowest level's 16 channels"),
        ({"add_mid_block": "yes"}, "add_mid_block must be true or false"),
    ],
)
def test_bad_configs_fail_at_construction(override, message):
    with pytest.raises(ValueError, match=message):
        ConvUNet2DModel(**{**TINY_UNET, **override})


def test_presets_build_and_run():
    for name in MODEL_PRESETS:
        if name == "tutorial":
            continue
        model = ConvUNet2DModel(**model_preset(name), sample_size=32)
        assert model(torch.randn(1, 1, 32, 32), 10).sample.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        model_preset("huge")


def test_the_bottom_attention_and_mid_block_are_optional_and_round_trip(tmp_path):
    plain = ConvUNet2DModel(**TINY_UNET)
    assert not [k for k in plain.state_dict() if k.startswith(("attention.", "mid_block."))]
    torch.manual_seed(0)
    model = ConvUNet2DModel(**TINY_UNET, add_attention=True, attention_head_dim=4, add_mid_block=True).eval()
    assert model.attention.heads == 4  # 16 bottom channels / 4 per head
    extra = {k.split(".")[0] for k in model.state_dict()} - {k.split(".")[0] for k in plain.state_dict()}
    assert extra == {"attention", "mid_block"}
    x = torch.randn(2, 1, 8, 8)
    model(x, torch.tensor([3, 700])).sample.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    model.save_pretrained(tmp_path / "unet")
    loaded = ConvUNet2DModel.from_pretrained(tmp_path / "unet").eval()
    config = loaded.config
    assert (config.add_attention, config.attention_head_dim, config.add_mid_block) == (True, 4, True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 10).sample, model(x, 10).sample, rtol=0, atol=0)

