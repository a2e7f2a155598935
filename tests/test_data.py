"""Tests of ddpmkit.data on small data made here (no network)."""

import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from helpers_train import make_parquet, make_png_folder, random_image

import ddpmkit.data as data
from ddpmkit.data import (
    DATASET_PRESETS,
    ImageTensorDataset,
    load_image_dataset,
    save_preview_grid,
)


def test_presets_name_the_hub_datasets_and_columns():
    assert {k: (v.hub_id, v.image_column) for k, v in DATASET_PRESETS.items()} == {
        "mnist": ("ylecun/mnist", "image"),
        "fashion_mnist": ("zalando-datasets/fashion_mnist", "image"),
        "cifar10": ("uoft-cs/cifar10", "img"),
        "flowers102": ("huggan/flowers-102-categories", "image"),
    }


def test_local_parquet_with_preset_columns_decodes_once_and_caches(tmp_path, monkeypatch):
    path = make_parquet(tmp_path / "mnist" / "train.parquet", n=12, size=(28, 28))
    ds = load_image_dataset(dataset="mnist", train_data_files=str(path), resolution=16, cache_dir=tmp_path / "c")
    assert ds.images.shape == (12, 1, 16, 16) and ds.images.dtype == torch.uint8  # grayscale stays 1 channel
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [i % 10 for i in range(12)]
    x = ds[0]
    assert x.shape == (1, 16, 16) and x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32
    expected = np.array(random_image((28, 28), "L", 0).resize((16, 16), PIL.Image.BICUBIC))
    assert torch.equal(ds.images[0, 0], torch.from_numpy(expected))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "decode_images", no_decoding)
    again = load_image_dataset(dataset="mnist", train_data_files=str(path), resolution=16, cache_dir=tmp_path / "c")
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)
    with pytest.raises(AssertionError, match="decoded again"):  # another resolution is another cache entry
        load_image_dataset(dataset="mnist", train_data_files=str(path), resolution=8, cache_dir=tmp_path / "c")


def test_hub_presets_go_through_datasets_with_their_columns(tmp_path, monkeypatch):
    import datasets

    calls = []
    color = make_parquet(tmp_path / "f.parquet", n=4, mode="RGB", size=(12, 10), label_column=None)
    local = datasets.load_dataset("parquet", data_files=str(color), split="train", cache_dir=str(tmp_path / "hf"))

    def fake_load_dataset(name, config=None, split=None, cache_dir=None, **kwargs):
        calls.append((name, config, split))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_image_dataset(dataset="flowers102", resolution=8, center_crop=True, cache_dir=tmp_path / "c")
    assert calls == [("huggan/flowers-102-categories", None, "train")]
    assert ds.images.shape == (4, 3, 8, 8) and ds.labels is None
    ds = load_image_dataset(dataset_name="someone/pets", split="test", resolution=8, cache_dir=tmp_path / "c")
    assert calls[-1] == ("someone/pets", None, "test") and ds.num_channels == 3

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/missing' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="could not load dataset 'someone/missing' .*--train_data_files"):
        load_image_dataset(dataset_name="someone/missing", resolution=8, cache_dir=tmp_path / "c")


def test_folder_of_pngs_with_class_subfolders(tmp_path):
    folder = make_png_folder(tmp_path / "imgs", n=6, mode="RGB", size=(10, 10), classes=["cat", "dog"])
    ds = load_image_dataset(train_data_dir=folder, resolution=8, cache_dir=tmp_path / "c")
    assert ds.images.shape == (6, 3, 8, 8)
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    flat = make_png_folder(tmp_path / "flat", n=3, mode="L")
    assert load_image_dataset(train_data_dir=flat, resolution=8, cache_dir=tmp_path / "c").labels is None


def test_mixed_modes_use_the_majority_with_a_warning_unless_channels_is_given(tmp_path):
    folder = make_png_folder(tmp_path / "mixed", n=3, mode="RGB")
    random_image((8, 8), "L", 9).save(folder / "gray.png")
    with pytest.warns(UserWarning, match="mixes 1 grayscale and 3 color images; converting all to RGB"):
        ds = load_image_dataset(train_data_dir=folder, resolution=8, cache_dir=tmp_path / "c")
    assert ds.num_channels == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forced = load_image_dataset(train_data_dir=folder, resolution=8, channels=1, cache_dir=tmp_path / "c")
    assert forced.num_channels == 1


def test_center_crop_keeps_the_aspect_ratio_and_resize_squashes(tmp_path):
    folder = tmp_path / "wide"
    folder.mkdir()
    array = np.zeros((8, 24), dtype=np.uint8)
    array[:, 8:16] = 255  # a white middle third
    PIL.Image.fromarray(array, "L").save(folder / "wide.png")
    cropped = load_image_dataset(train_data_dir=folder, resolution=8, center_crop=True, cache_dir=tmp_path / "c")
    assert cropped.images.float().mean() > 250  # only the white middle is left
    squashed = load_image_dataset(train_data_dir=folder, resolution=8, cache_dir=tmp_path / "c")
    assert 60 < squashed.images.float().mean() < 120  # the whole image, a third of it white


def test_unreadable_images_are_skipped_and_counted_and_fatal_if_all_bad(tmp_path):
    folder = make_png_folder(tmp_path / "some", n=3, mode="L")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 4.*other 3"):
        ds = load_image_dataset(train_data_dir=folder, resolution=8, cache_dir=tmp_path / "c")
    assert len(ds) == 3
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        (bad / f"{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="none of the 2 images .* could be read"):
        load_image_dataset(train_data_dir=bad, resolution=8, cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; use one of mnist, fashion_mnist"),
        ({}, "no training data given"),
        ({"train_data_dir": "MISSING"}, "does not exist"),
        ({"train_data_dir": "EMPTY"}, "holds no image files"),
        ({"train_data_files": "TABLE", "image_column": "label"}, "'label' .* not an image .* --image_column image"),
        ({"train_data_files": "TABLE", "image_column": "pixels"}, "image column 'pixels' is not in"),
        ({"train_data_files": "TABLE", "label_column": "digit"}, "label column 'digit' is not in"),
        ({"dataset": "mnist", "resolution": 0}, "resolution must be an integer between 1"),
        ({"dataset": "mnist", "channels": 4}, "channels must be 1 .* or 3"),
    ],
)  # fmt: skip
def test_bad_input_names_the_problem_and_the_fix(tmp_path, kwargs, message):
    (tmp_path / "empty").mkdir()
    table = make_parquet(tmp_path / "t.parquet", n=2)
    replace = {"MISSING": str(tmp_path / "nope"), "EMPTY": str(tmp_path / "empty"), "TABLE": str(table)}
    kwargs = {k: replace.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        load_image_dataset(cache_dir=tmp_path / "c", **kwargs)


def test_resolution_is_checked_against_the_unet_levels():
    data.check_resolution_for_unet(32, {"block_out_channels": [32, 64, 128]})
    with pytest.raises(ValueError, match=r"resolution 28 is not divisible by 2\*\*4 = 16 .* --resolution 32"):
        data.check_resolution_for_unet(28, {"block_out_channels": [64, 128, 256, 512, 1024]})


def test_args_round_trip_and_batches_flip(tmp_path):
    table = make_parquet(tmp_path / "t.parquet", n=5)
    from helpers_train import parse_train_argv

    config = parse_train_argv(
        ["--dataset", "mnist", "--train_data_files", str(table), "--resolution", "8", "--cache_dir", str(tmp_path)]
    )
    assert config.resolution == 8 and config.random_flip is False and config.split == "train"
    ds = data.load_image_dataset(dataset=config.dataset, train_data_files=config.train_data_files,
                                 resolution=config.resolution, cache_dir=config.cache_dir)  # fmt: skip
    assert isinstance(ds, ImageTensorDataset) and len(ds) == 5
    batch = ds.batch(torch.tensor([0, 1]), flip=torch.tensor([True, False]))
    assert torch.equal(batch[0], ds[0].flip(-1)) and torch.equal(batch[1], ds[1])
    assert ds.to_pil(0).size == (8, 8)


def test_preview_grid_is_ten_by_ten(tmp_path):
    images = torch.randint(0, 256, (150, 3, 4, 4), dtype=torch.uint8)
    grid = save_preview_grid(ImageTensorDataset(images), tmp_path / "preview.png", nrow=10, seed=0)
    assert grid.size == (40, 40) and PIL.Image.open(tmp_path / "preview.png").size == (40, 40)
    first = np.asarray(grid)[:4, :4]
    chosen = torch.randperm(150, generator=torch.Generator().manual_seed(0))[0]
    assert np.array_equal(first, images[chosen].permute(1, 2, 0).numpy())


def test_a_folder_of_more_images_than_file_descriptors_loads_whole(tmp_path):
    """Under ``ulimit -n 64``, 200 images load in full (images were opened lazily and kept open, and a third of a
    large folder was skipped as unreadable, then cached so)."""
    import subprocess
    import sys

    import PIL.Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(200):
        PIL.Image.new("L", (4, 4), color=i).save(folder / f"{i:03d}.png")
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64));"
        "from ddpmkit.data import load_image_dataset;"
        f"ds = load_image_dataset(train_data_dir={str(folder)!r}, resolution=4, cache_dir={str(tmp_path / 'c')!r});"
        "print(len(ds))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "200" and "skipped" not in result.stderr
