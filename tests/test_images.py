import numpy as np
import PIL.Image
import pytest
import torch

from ddpmkit import ConvUNet2DModel, DDPMPipeline, DenoisingTrajectory, LinearDDPMScheduler
from ddpmkit.utils.images import image_grid, save_gif, to_pil_images, trajectory_frames, trajectory_picture


def ramp(batch: int, channels: int = 1, size: int = 4) -> torch.Tensor:
    """Images whose every pixel is its image's index / batch, so each can be found in a picture."""
    values = torch.arange(batch, dtype=torch.float32) / batch
    return values[:, None, None, None].expand(batch, channels, size, size).clone()


def test_to_pil_images_from_tensor_array_and_list():
    images = ramp(3)
    from_tensor = to_pil_images(images)
    from_array = to_pil_images(images.permute(0, 2, 3, 1).numpy())
    assert [im.mode for im in from_tensor] == ["L"] * 3
    assert [np.asarray(a).tolist() for a in from_tensor] == [np.asarray(b).tolist() for b in from_array]
    assert np.asarray(from_tensor[1])[0, 0] == round(255 / 3)
    assert to_pil_images(from_tensor) == from_tensor
    rgb = to_pil_images(ramp(2, channels=3))
    assert rgb[0].mode == "RGB"


def test_to_pil_images_clamps_out_of_range_values():
    image = to_pil_images(torch.tensor([-1.0, 2.0]).reshape(1, 1, 1, 2))[0]
    assert np.asarray(image).tolist() == [[0, 255]]


@pytest.mark.parametrize("bad", [torch.zeros(3, 4, 4), np.zeros((1, 4, 4, 2)), ["not an image"]])
def test_to_pil_images_rejects_other_shapes(bad):
    with pytest.raises(ValueError, match="expected|must be"):
        to_pil_images(bad)


def test_image_grid_layout_and_padding():
    grid = image_grid(ramp(10), padding=1)  # 10 images -> 4 columns, 3 rows
    assert grid.size == (4 * 4 + 5, 3 * 4 + 4)
    pixels = np.asarray(grid)
    assert pixels[0].max() == 0  # the padding is black
    # image k sits at row k // 4, column k % 4
    for k in range(10):
        top, left = 1 + (k // 4) * 5, 1 + (k % 4) * 5
        assert pixels[top : top + 4, left : left + 4].tolist() == [[round(255 * k / 10)] * 4] * 4
    # the two missing cells of the last row stay black
    assert pixels[11:15, 11:20].max() == 0


def test_image_grid_columns_scale_and_rgb():
    grid = image_grid(ramp(6, channels=3), ncols=3, padding=0, scale=2)
    assert grid.mode == "RGB" and grid.size == (3 * 8, 2 * 8)
    pixels = np.asarray(grid)
    assert (pixels[8:16, 16:24] == round(255 * 5 / 6)).all()


@pytest.mark.parametrize("kwargs", [{"ncols": 0}, {"scale": 0}, {"padding": -1}])
def test_image_grid_rejects_bad_layout(kwargs):
    with pytest.raises(ValueError, match="must be"):
        image_grid(ramp(2), **kwargs)


def test_image_grid_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="same size"):
        image_grid([PIL.Image.new("L", (4, 4)), PIL.Image.new("L", (5, 4))])


def fake_trajectory(steps: int = 3, batch: int = 2, with_x0: bool = True) -> DenoisingTrajectory:
    # x_t of step s, sample b is (10 * s + b) / 100; its x_0 is 0.5 + that
    values = torch.tensor([[(10 * s + b) / 100 for b in range(batch)] for s in range(steps)])
    samples = values[:, :, None, None, None].expand(steps, batch, 1, 2, 2).clone()
    return DenoisingTrajectory(list(range(steps)), samples, samples + 0.5 if with_x0 else None)


def cell(
    picture: PIL.Image.Image, row: int, col: int, size: int = 2, padding: int = 1, group: int | None = None
) -> int:
    top = padding + row * (size + padding) + (row // group if group else 0) * padding
    left = padding + col * (size + padding)
    block = np.asarray(picture)[top : top + size, left : left + size]
    assert (block == block[0, 0]).all()
    return int(block[0, 0])


def test_trajectory_picture_rows_are_samples_columns_are_steps():
    trajectory = fake_trajectory()
    final = torch.full((2, 1, 2, 2), 0.9)
    picture = trajectory_picture(trajectory, final, padding=1)
    assert picture.size == (4 * 2 + 5, 2 * 2 + 3)
    for b in range(2):
        for s in range(3):
            assert cell(picture, b, s) == round(255 * (10 * s + b) / 100)
        assert cell(picture, b, 3) == round(255 * 0.9)


def test_trajectory_picture_with_x0_puts_it_under_each_sample():
    picture = trajectory_picture(fake_trajectory(), show_x0=True, padding=1)
    assert picture.size == (3 * 2 + 4, 4 * 2 + 5 + 1)  # one extra gap between the two sample pairs
    for b in range(2):
        for s in range(3):
            assert cell(picture, 2 * b, s, group=2) == round(255 * (10 * s + b) / 100)
            assert cell(picture, 2 * b + 1, s, group=2) == round(255 * (0.5 + (10 * s + b) / 100))


def test_trajectory_picture_refuses_x0_it_does_not_have():
    with pytest.raises(ValueError, match="no predicted x_0"):
        trajectory_picture(fake_trajectory(with_x0=False), show_x0=True)


def test_trajectory_picture_refuses_wrong_number_of_final_images():
    with pytest.raises(ValueError, match="3 final images"):
        trajectory_picture(fake_trajectory(), torch.zeros(3, 1, 2, 2))


def test_trajectory_frames_and_gif(tmp_path):
    frames = trajectory_frames(fake_trajectory(), torch.ones(2, 1, 2, 2), show_x0=True, padding=1)
    assert len(frames) == 4 and all(f.size == (2 * 2 + 3, 2 * 2 + 3) for f in frames)
    assert cell(frames[2], 0, 1) == round(255 * 0.21) and cell(frames[2], 1, 1) == round(255 * 0.71)
    path = tmp_path / "t.gif"
    save_gif(frames, path, frame_ms=50, last_frame_ms=700)
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.info["loop"] == 0
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
        assert durations == [50, 50, 50, 700]
        assert np.asarray(gif.convert("L"))[1, 1] == 255  # the last frame shows the final images


def test_save_gif_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        save_gif([], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="frame_ms"):
        save_gif([PIL.Image.new("L", (2, 2))], tmp_path / "a.gif", frame_ms=0)


def test_trajectory_picture_from_a_real_pipeline():
    torch.manual_seed(0)
    unet = ConvUNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, time_embedding_dim=8)
    pipe = DDPMPipeline(unet=unet.eval(), scheduler=LinearDDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    generator = torch.manual_seed(0)
    out = pipe(batch_size=3, num_inference_steps=4, output_type="pt", trajectory_steps=4, generator=generator)
    picture = trajectory_picture(out.trajectory, out.images, show_x0=True, padding=0)
    assert picture.size == (5 * 8, 6 * 8)
    # the first column is the pure noise the pipeline started from, the last its output
    noise = to_pil_images(out.trajectory.samples[0])
    assert (np.asarray(picture)[16:24, 0:8] == np.asarray(noise[1])).all()
    assert (np.asarray(picture)[16:24, 32:40] == np.asarray(to_pil_images(out.images)[1])).all()
