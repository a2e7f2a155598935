"""Loading runs no code a folder names, unpickles nothing without consent, and refuses absurd configs before
allocating. Every refusal is checked for its message and for what did *not* happen (no import, no allocation)."""

import json
import math
import shutil
import sys
import time

import pytest
import torch
from tiny import TINY_UNET, make_tiny_pipeline

from ddpmkit import ConvUNet2DModel, CorruptFolderError, DDPMPipeline, LinearDDPMScheduler, UnsafeFolderError

MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\n\nclass Evil:\n    pass\n"

# model_index.json entries that must never be imported or built
FOREIGN_ENTRIES = [
    ["os", "system"],
    ["evil_module", "Evil"],
    ["builtins", "eval"],
    ["subprocess", "Popen"],
    ["ddpmkit_evil", "Evil"],  # a prefix of an allowed name is not the allowed package
    ["evil_module.ddpmkit", "Evil"],
]
MISSING_ENTRIES = [
    ["ddpmkit.no_such_module", "ConvUNet2DModel"],
    ["ddpmkit.models.unet_conv", "NoSuchClass"],
    ["diffusers", "NoSuchModel"],
    ["ddpmkit.loading", "json"],  # a module attribute, not a class
    ["ddpmkit.cli", "main"],  # never imported on a folder's word
    ["ddpmkit.__main__", "sys"],
    ["ddpmkit.schedulers", "ConvUNet2DModel"],  # exists, but not where the folder says
    ["diffusers", "../evil"],
]
NOT_COMPONENTS = [
    ["diffusers", "DDPMPipeline"],  # a nested pipeline would read its own, unchecked model_index.json
    ["diffusers", "DiffusionPipeline"],
    ["ddpmkit", "DDPMPipeline"],
    ["ddpmkit.loading", "UnsafeFolderError"],
    ["diffusers", "ConfigMixin"],
]


def _read(path):
    return json.loads(path.read_text())


def _write(path, data):
    path.write_text(json.dumps(data))


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """An importable ``evil_module`` (and copies inside the pipeline folder) that leave a marker file if imported."""
    marker = tmp_path / "IMPORTED"
    code = MARKER_CODE.format(marker=str(marker))
    evil_dir = tmp_path / "site"
    evil_dir.mkdir()
    (evil_dir / "evil_module.py").write_text(code)
    monkeypatch.syspath_prepend(str(evil_dir))
    monkeypatch.delitem(sys.modules, "evil_module", raising=False)
    return marker, code


@pytest.mark.timeout(60)
@pytest.mark.parametrize("component", ["unet", "scheduler"])
@pytest.mark.parametrize("entry", FOREIGN_ENTRIES, ids=lambda e: ".".join(e))
def test_foreign_classes_are_refused_and_never_imported(tiny_pipeline_dir, planted, entry, component):
    marker, code = planted
    (tiny_pipeline_dir / "evil_module.py").write_text(code)
    (tiny_pipeline_dir / component / "evil_module.py").write_text(code)  # where diffusers looks for custom code
    index = _read(tiny_pipeline_dir / "model_index.json")
    index[component] = entry
    _write(tiny_pipeline_dir / "model_index.json", index)
    with pytest.raises(UnsafeFolderError, match="only builds classes from ddpmkit and diffusers") as info:
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    assert ".".join(entry) in str(info.value)
    assert not marker.exists(), "the foreign module was imported"
    assert "evil_module" not in sys.modules


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", MISSING_ENTRIES, ids=lambda e: ".".join(e))
def test_unknown_ddpmkit_and_diffusers_names_are_refused(tiny_pipeline_dir, entry):
    index = _read(tiny_pipeline_dir / "model_index.json")
    index["unet"] = entry
    _write(tiny_pipeline_dir / "model_index.json", index)
    with pytest.raises(UnsafeFolderError, match="does not exist") as info:
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    assert f"{entry[0]}.{entry[1]}" in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", NOT_COMPONENTS, ids=lambda e: ".".join(e))
def test_classes_that_are_not_models_or_schedulers_are_refused(tiny_pipeline_dir, planted, entry):
    marker, _ = planted
    # were unet/ loaded as a pipeline, this index would import evil_module
    evil = {"_class_name": "DDPMPipeline", "x": ["evil_module", "Evil"]}
    _write(tiny_pipeline_dir / "unet" / "model_index.json", evil)
    index = _read(tiny_pipeline_dir / "model_index.json")
    index["unet"] = entry
    _write(tiny_pipeline_dir / "model_index.json", index)
    with pytest.raises(UnsafeFolderError, match="not a model or a scheduler|does not exist"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    assert not marker.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", [["ddpmkit", "Evil"], "ddpmkit.Evil", [1, 2], ["a", "b", "c"], {"x": 1}])
def test_malformed_entries_are_refused(tiny_pipeline_dir, entry):
    index = _read(tiny_pipeline_dir / "model_index.json")
    index["unet"] = entry
    _write(tiny_pipeline_dir / "model_index.json", index)
    with pytest.raises((UnsafeFolderError, CorruptFolderError), match="unet"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.mark.timeout(60)
def test_custom_pipeline_code_in_the_folder_is_never_run(tiny_pipeline_dir, planted):
    # diffusers runs <folder>/<name>.py when model_index.json's _class_name is [name, class]
    marker, code = planted
    (tiny_pipeline_dir / "evil_module.py").write_text(code)
    index = _read(tiny_pipeline_dir / "model_index.json")
    index["_class_name"] = ["evil_module", "Evil"]
    _write(tiny_pipeline_dir / "model_index.json", index)
    with pytest.raises(UnsafeFolderError, match="_class_name"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(UnsafeFolderError, match="trust_remote_code"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir, trust_remote_code=True)
    assert not marker.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("component", ["unet", "scheduler"])
def test_custom_component_code_in_the_folder_is_never_run(tiny_pipeline_dir, planted, component):
    # diffusers runs <component>/<library>.py when it exists next to the component's files
    marker, code = planted
    library = _read(tiny_pipeline_dir / "model_index.json")[component][0]
    (tiny_pipeline_dir / component / f"{library}.py").write_text(code)
    with pytest.raises(UnsafeFolderError, match=rf"{library}\.py is code"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(UnsafeFolderError, match="trust_remote_code"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir, trust_remote_code=True)
    assert not marker.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kwargs",
    [{"trust_remote_code": True}, {"custom_pipeline": "evil_module"}, {"custom_pipeline": "some/repo"},
     {"custom_revision": "main"}, {"variant": "fp16"}],  # fmt: skip
)
def test_remote_code_options_are_refused(tiny_pipeline_dir, planted, kwargs):
    marker, code = planted
    (tiny_pipeline_dir / "evil_module.py").write_text(code)
    name = next(iter(kwargs))
    with pytest.raises(UnsafeFolderError, match=name):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir, **kwargs)
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_hub_repo_index_is_checked_before_anything_else_is_downloaded(tmp_path, monkeypatch, planted):
    # the network layer is replaced: hf_hub_download serves a local model_index.json naming foreign code
    import huggingface_hub

    marker, _ = planted
    index = tmp_path / "model_index.json"
    _write(index, {"_class_name": "DDPMPipeline", "unet": ["evil_module", "Evil"], "scheduler": [None, None]})
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: calls.append(name) or str(index))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **kw: calls.append("snapshot") or None)
    with pytest.raises(UnsafeFolderError, match="evil_module.Evil"):
        DDPMPipeline.from_pretrained("someone/evil-ddpm")
    assert calls == ["model_index.json"] and not marker.exists()


@pytest.mark.timeout(60)
def test_hub_download_takes_json_and_safetensors_only(tmp_path, monkeypatch, tiny_pipeline_dir):
    import huggingface_hub

    patterns = []

    def snapshot(repo, allow_patterns, **kw):
        patterns.append(allow_patterns)
        return str(tiny_pipeline_dir)

    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, name, **kw: str(tiny_pipeline_dir / "model_index.json")
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    pipe = DDPMPipeline.from_pretrained("someone/tiny-ddpm")
    assert isinstance(pipe.unet, ConvUNet2DModel)
    DDPMPipeline.from_pretrained("someone/tiny-ddpm", allow_pickle=True)
    assert patterns == [["*.json", "*.safetensors"], ["*.json", "*.safetensors", "*.bin"]]


# ---------------------------------------------------------------------------------------------- pickles


def _pickle_only_folder(path):
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(path, safe_serialization=False)
    assert (path / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert not (path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    return pipe


@pytest.mark.timeout(60)
def test_pickled_pipeline_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "pipe"
    reference = _pickle_only_folder(path)
    with pytest.raises(UnsafeFolderError, match=r"allow_pickle=True") as info:
        DDPMPipeline.from_pretrained(path)
    assert "diffusion_pytorch_model.bin" in str(info.value)
    with pytest.raises(UnsafeFolderError, match=r"allow_pickle=True"):
        ConvUNet2DModel.from_pretrained(path / "unet")
    pipe = DDPMPipeline.from_pretrained(path, allow_pickle=True)
    for name, value in reference.unet.state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[name], value)
    unet = ConvUNet2DModel.from_pretrained(path / "unet", allow_pickle=True)
    torch.testing.assert_close(unet.conv_out.weight, reference.unet.conv_out.weight)


@pytest.mark.timeout(60)
def test_use_safetensors_false_is_the_same_opt_in(tmp_path):
    path = tmp_path / "pipe"
    _pickle_only_folder(path)
    pipe = DDPMPipeline.from_pretrained(path, use_safetensors=False)
    assert isinstance(pipe.unet, ConvUNet2DModel)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["pytorch_model.bin", "diffusion_pytorch_model.pt"])
def test_other_pickle_names_are_refused_too(tiny_pipeline_dir, name):
    unet = tiny_pipeline_dir / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / name)
    with pytest.raises(UnsafeFolderError, match=r"allow_pickle=True"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.mark.timeout(60)
def test_safetensors_win_over_a_pickle_beside_them(tiny_pipeline_dir, tmp_path):
    # a planted pickle next to valid safetensors is never opened
    marker = tmp_path / "UNPICKLED"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')"

    class Boom:
        def __reduce__(self):
            return (exec, (payload,))

    torch.save({"conv_out.weight": Boom()}, tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.bin")
    pipe = DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    assert isinstance(pipe.unet, ConvUNet2DModel) and not marker.exists()


# ---------------------------------------------------------------------------------------------- absurd configs


class _AllocationGuard:
    """Fails any real (non-meta) tensor factory call above ``limit`` elements, recording the largest request."""

    FACTORIES = ("empty", "zeros", "ones", "randn", "rand", "full", "arange", "linspace", "tensor")

    def __init__(self, monkeypatch, limit):
        self.limit, self.largest = limit, 0
        for name in self.FACTORIES:
            monkeypatch.setattr(torch, name, self._wrap(getattr(torch, name), name))

    def _wrap(self, factory, name):
        def guarded(*args, **kwargs):
            result = factory(*args, **kwargs)
            if result.device.type != "meta":
                self.largest = max(self.largest, result.numel())
                if result.numel() > self.limit:
                    raise AssertionError(f"torch.{name} allocated {result.numel()} elements")
            return result

        def guarded_empty(*args, **kwargs):  # sizes are known before allocating, so never allocate a huge one
            size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            numel = math.prod(int(s) for s in size) if size else 1
            meta = torch.get_default_device().type == "meta" or str(kwargs.get("device", "")) == "meta"
            if not meta and numel > self.limit:
                raise AssertionError(f"torch.{name} asked for {numel} elements")
            return guarded(*args, **kwargs)

        return guarded_empty if name in ("empty", "zeros", "ones", "randn", "rand") else guarded


ABSURD_UNET = [
    ({"block_out_channels": [10**9]}, "block_out_channels"),
    ({"block_out_channels": [8] * 1000}, "block_out_channels"),
    ({"block_out_channels": [4096, 8192, 8192, 8192]}, "parameters"),
    ({"sample_size": -8}, "sample_size"),
    ({"sample_size": 0}, "sample_size"),
    ({"sample_size": 10**9}, "sample_size"),
    ({"sample_size": [8, -8]}, "sample_size"),
    ({"in_channels": 10**9}, "in_channels"),
    ({"out_channels": 10**9}, "out_channels"),
    ({"time_embedding_dim": 10**9}, "time_embedding_dim"),
    ({"norm_num_groups": 10**9}, "norm_num_groups"),
    ({"num_class_embeds": 10**12}, "num_class_embeds"),
    ({"num_class_embeds": 1_000_000, "time_embedding_dim": 8192}, "parameters"),
    ({"block_out_channels": [8, 16], "sample_size": 9}, "divisible"),
    ({"norm_eps": float("nan")}, "norm_eps"),
    ({"block_out_channels": [8.5, 16]}, "block_out_channels"),
    ({"in_channels": "1"}, "in_channels"),
    ({"in_channels": True}, "in_channels"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overrides, word", ABSURD_UNET, ids=lambda v: str(v)[:40])
def test_absurd_unet_configs_fail_fast_without_allocating(tiny_pipeline_dir, monkeypatch, overrides, word):
    config_path = tiny_pipeline_dir / "unet" / "config.json"
    _write(config_path, {**_read(config_path), **overrides})
    guard = _AllocationGuard(monkeypatch, limit=10_000_000)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=word) as info:
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    assert time.perf_counter() - start < 5
    assert "config.json" in str(info.value)
    with pytest.raises(ValueError, match=word):
        ConvUNet2DModel(**{**TINY_UNET, **overrides})
    assert guard.largest <= 10_000_000


ABSURD_SCHEDULER = [
    ({"num_train_timesteps": 10**9}, "num_train_timesteps"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"num_train_timesteps": -5}, "num_train_timesteps"),
    ({"num_train_timesteps": 10.5}, "num_train_timesteps"),
    ({"beta_end": 2.0}, "beta"),
    ({"beta_start": -0.1}, "beta"),
    ({"beta_start": float("inf")}, "beta_start"),
    ({"trained_betas": [0.5] * 3}, "trained_betas"),
    ({"trained_betas": ["x"] * 1000}, "trained_betas|float"),
    ({"steps_offset": 10**9}, "steps_offset"),
    ({"variance_type": "huge"}, "variance_type"),
    ({"prediction_type": 3}, "prediction_type"),
    ({"clip_sample": "yes"}, "clip_sample"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overrides, word", ABSURD_SCHEDULER, ids=lambda v: str(v)[:40])
def test_absurd_scheduler_configs_fail_fast_without_allocating(tiny_pipeline_dir, monkeypatch, overrides, word):
    config_path = tiny_pipeline_dir / "scheduler" / "scheduler_config.json"
    _write(config_path, {**_read(config_path), **overrides})
    guard = _AllocationGuard(monkeypatch, limit=1_000_000)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=word) as info:
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    assert time.perf_counter() - start < 5
    assert "scheduler_config.json" in str(info.value)
    with pytest.raises(ValueError, match=word):
        LinearDDPMScheduler(**overrides)
    with pytest.raises(ValueError, match=word):
        LinearDDPMScheduler.from_pretrained(tiny_pipeline_dir / "scheduler")
    assert guard.largest <= 1_000_000


@pytest.mark.timeout(60)
def test_oversized_json_is_refused_before_parsing(tiny_pipeline_dir):
    config_path = tiny_pipeline_dir / "scheduler" / "scheduler_config.json"
    config = _read(config_path)
    config["trained_betas"] = [0.01] * 400_000  # > 1 MiB of JSON
    _write(config_path, config)
    with pytest.raises(CorruptFolderError, match="too large"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)


# ---------------------------------------------------------------------------------------------- links


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["unet/diffusion_pytorch_model.safetensors", "unet/config.json", "unet"])
def test_links_out_of_the_folder_are_refused(tiny_pipeline_dir, tmp_path, target):
    outside = tmp_path / "outside"
    shutil.copytree(tiny_pipeline_dir, outside)  # identical, valid content: only the link is wrong
    path = tiny_pipeline_dir / target
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.symlink_to(outside / target)
    with pytest.raises(UnsafeFolderError, match="outside"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.mark.timeout(60)
def test_links_inside_the_folder_are_fine(tiny_pipeline_dir):
    unet = tiny_pipeline_dir / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(tiny_pipeline_dir / "weights.safetensors")
    (unet / "diffusion_pytorch_model.safetensors").symlink_to("../weights.safetensors")
    pipe = DDPMPipeline.from_pretrained(tiny_pipeline_dir)
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)


@pytest.mark.timeout(60)
def test_link_loops_are_refused(tiny_pipeline_dir):
    loop = tiny_pipeline_dir / "unet" / "loop"
    loop.symlink_to("loop")
    with pytest.raises((UnsafeFolderError, CorruptFolderError), match="loop"):
        DDPMPipeline.from_pretrained(tiny_pipeline_dir)
