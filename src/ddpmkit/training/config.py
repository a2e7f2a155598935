"""What a training run is: every option of ``ddpmkit train`` as one dataclass, with its defaults and checks.

The command line is built from these fields (names, types, defaults and help), so the library and the command
cannot disagree. Names follow diffusers' ``train_unconditional.py`` where the meaning matches.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..data import DATASET_PRESETS, check_dataset_args, check_resolution_for_unet
from ..models import MODEL_PRESETS, ConvUNet2DModel, model_preset
from ..pipelines.sampling import MAX_PIXELS, SAMPLERS
from ..schedulers import LinearDDPMScheduler


def option(default, help: str, group: str, **metadata):
    """A dataclass field that is also a command-line flag of ``group``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "group": group, **metadata})
    return field(default=default, metadata={"help": help, "group": group, **metadata})


@dataclass
class TrainingConfig:
    """Every option of a training run; ``ddpmkit train --help`` shows the same with the same defaults.

    >>> from ddpmkit.training import TrainingConfig, train  # doctest: +SKIP
    >>> train(TrainingConfig(dataset="mnist", train_data_files=["mnist/train.parquet"], max_train_steps=2300))
    """

    # -- data
    dataset: str | None = option(None, f"A named dataset: one of {', '.join(DATASET_PRESETS)}. Sets the Hub id and "
                                 "the image/label columns; with --train_data_files, reads a local copy with those "
                                 "columns instead of the Hub.", "data")  # fmt: skip
    dataset_name: str | None = option(None, "Any Hugging Face Hub dataset id holding an image column.", "data")
    dataset_config_name: str | None = option(None, "The config of --dataset_name, if any.", "data")
    train_data_dir: str | None = option(None, "A folder of image files (searched recursively). Images in class "
                                        "subfolders get labels.", "data")  # fmt: skip
    train_data_files: list[str] | None = option(None, "Local Parquet/Arrow files, e.g. mnist/train.parquet (columns "
                                                "as on the Hub).", "data")  # fmt: skip
    image_column: str | None = option(None, "The column holding the images.", "data")
    label_column: str | None = option(None, "The column holding integer class labels.", "data")
    split: str = option("train", "The dataset split to train on.", "data")
    resolution: int | None = option(None, "Images are resized to resolution x resolution; must suit the UNet's "
                                    "levels. Default: a --dataset's own size (28 for MNIST and Fashion-MNIST) where "
                                    "the levels allow it, except in bf16 on a CPU, whose bf16 kernels run 28x28 "
                                    "slower than 32x32; else the tutorial's 32. A resumed run keeps its "
                                    "checkpoint's.", "data")  # fmt: skip
    channels: Literal[1, 3] | None = option(None, "Force 1 (grayscale) or 3 (RGB) channels. Default: what the data "
                                            "holds (the majority mode).", "data")  # fmt: skip
    center_crop: bool = option(False, "Resize the shorter side then crop the center square, keeping the aspect "
                               "ratio. Default: resize the whole image to a square, as the tutorial does.", "data")
    random_flip: bool = option(False, "Mirror images left-right at random while training. Off by default: flipped "
                               "digits are wrong digits.", "data")  # fmt: skip
    cache_dir: str | None = option(None, "Where downloaded datasets and decoded image tensors are cached (default: "
                                   "~/.cache/ddpmkit).", "data")  # fmt: skip
    max_train_samples: int | None = option(None, "Keep only the first N images (for debugging or quick runs).", "data")

    # -- model
    model_config: str = option("slim", f"UNet size: one of {', '.join(MODEL_PRESETS)} (tiny: tests; slim, the "
                               "default: MNIST-sized data on a CPU, 1.65x the images/s of small and better samples "
                               "per CPU-minute up to 25 CPU-minutes; small: wider, better per image; small-attn: "
                               "small with self-attention at its lowest resolution; base: CIFAR-10 on a GPU; "
                               "tutorial: the 33M-parameter original, for a GPU), or a path to a ConvUNet2DModel "
                               "config.json.", "model")  # fmt: skip
    ddpm_num_steps: int = option(1000, "Diffusion steps T of training.", "model")
    ddpm_beta_start: float = option(1e-4, "First beta of the linear schedule.", "model")
    ddpm_beta_end: float = option(0.02, "Last beta of the linear schedule.", "model")
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = option(
        "epsilon", "What the model learns to predict; the tutorial's is epsilon (the noise).", "model")  # fmt: skip
    ddpm_num_inference_steps: int = option(1000, "Denoising steps of the sample grids.", "model")
    class_conditional: bool = option(False, "Train a class-conditional model on the dataset's labels (the label "
                                     "column, or class sub-folders), so `ddpmkit sample --class 7` draws a 7; the "
                                     "class names go into the UNet config.", "model")  # fmt: skip
    condition_dropout: float = option(0.1, "With --class_conditional: the share of training images whose label is "
                                      "replaced by the null class, so one model also draws unconditionally and "
                                      "classifier-free guidance works.", "model")  # fmt: skip

    # -- training
    output_dir: str = option("ddpm-model", "Where the pipeline and checkpoints go.", "training")
    train_batch_size: int = option(32, "Images per process per micro-batch. Small batches learn the most per image "
                                   "(benchmarks/recipes).", "training")  # fmt: skip
    num_epochs: int = option(100, "Epochs to train, unless --max_train_steps.", "training")
    max_train_steps: int | None = option(None, "Optimizer steps to train; overrides --num_epochs.", "training")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.", "training")
    learning_rate: float = option(1e-3, "Peak learning rate (after warmup); 1e-3 suits the small presets, the "
                                  "tutorial's model took 1e-4.", "training")  # fmt: skip
    lr_scheduler: Literal["cosine", "linear", "constant"] = option(
        "cosine", "Decay after warmup: cosine (the tutorial's CosineAnnealingLR), linear, or constant.", "training")
    lr_warmup_steps: int = option(200, "Steps of linear warmup from 0.", "training")
    lr_min: float = option(1e-6, "Learning rate at the end of the decay.", "training")
    adam_beta1: float = option(0.95, "AdamW beta1.", "training")
    adam_beta2: float = option(0.999, "AdamW beta2.", "training")
    adam_weight_decay: float = option(1e-6, "AdamW weight decay.", "training")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.", "training")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).", "training")
    snr_gamma: float = option(5.0, "Min-SNR-gamma loss weighting (Hang et al. 2023): reaches a given sample quality "
                              "in fewer steps (benchmarks/recipes). 0 trains with the plain DDPM loss of the "
                              "tutorial.", "training")  # fmt: skip
    use_ema: bool = option(True, "Keep an EMA of the weights; the saved pipeline uses it (--no-use_ema saves the raw "
                           "weights).", "training")  # fmt: skip
    ema_inv_gamma: float = option(1.0, "EMA warmup inverse gamma.", "training")
    ema_power: float = option(3 / 4, "EMA warmup power.", "training")
    ema_max_decay: float = option(0.9999, "Largest EMA decay.", "training")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = option(
        None, "Mixed precision (fp16 needs a GPU). Default: what `accelerate config` says, else bf16 on a CPU "
        "with native bf16 (AVX512-BF16 or AMX: twice the images per second at the same quality), else no.",
        "training")
    seed: int = option(0, "Seed of weights, data order, noise and sample grids.", "training")
    cpu: bool = option(False, "Train on the CPU even if a GPU is present.", "training")
    num_threads: int | None = option(None, "CPU threads of each process (torch.set_num_threads). Default: torch's, "
                                     "every core the process may use (its share of them in a multi-process CPU "
                                     "launch). Two jobs side by side on one machine should split its cores (2 "
                                     "cores, 2 jobs: --num_threads 1 each): two that each take every core slowed "
                                     "each other 2x on a 2-core AMD EPYC, about 15x on another machine.",
                                     "training")  # fmt: skip
    channels_last: bool = option(False, "Keep weights and activations in channels-last (NHWC) layout; faster "
                                 "convolutions on most CPUs and GPUs.", "training")  # fmt: skip
    compile: bool = option(False, "torch.compile the UNet's training steps (the first steps wait for the compile: "
                           "30-40 s on a CPU). On a 2-core Xeon it gave 1.14x in fp32 and nothing on top of bf16.",
                           "training")  # fmt: skip
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = option(
        "default", "With --compile: torch.compile's mode (reduce-overhead replays CUDA graphs on a GPU).", "training")

    # -- checkpoints, samples and logs
    checkpointing_steps: int = option(500, "Save the full training state every N steps.", "checkpoints")
    checkpoints_total_limit: int | None = option(None, "Keep only the newest K checkpoints.", "checkpoints")
    resume_from_checkpoint: str | None = option(None, "Continue from 'latest' (the newest checkpoint in "
                                                "--output_dir; starts fresh if none) or a checkpoint-N path.",
                                                "checkpoints")  # fmt: skip
    save_images_steps: int = option(1000, "Save a grid of EMA samples to output_dir/samples/ (and TensorBoard) every "
                                    "N steps.", "checkpoints")  # fmt: skip
    eval_batch_size: int = option(16, "Images in each sample grid.", "checkpoints")
    eval_steps: int | None = option(None, "Every N steps (and at the end), score --eval_samples EMA samples with the "
                                    "dataset's classifier: classifier FD, confidence and class entropy go to "
                                    "TensorBoard, output_dir/eval_history.json and the card.",
                                    "checkpoints")  # fmt: skip
    eval_samples: int = option(500, "Images scored at each --eval_steps.", "checkpoints")
    eval_sampler: Literal["ddpm", "ddim", "dpmsolver"] = option(
        "ddim", "Sampler of the --eval_steps images, at its default number of steps (ddim: 50).", "checkpoints")
    eval_data: str | None = option(None, "Folder of {train,test}.parquet to score against (default: the folder of "
                                   "--train_data_files). The classifier is the one ddpmkit ships for the folder's "
                                   "name (mnist, cifar10), or --eval_classifier.", "checkpoints")  # fmt: skip
    eval_classifier: str = option("auto", "Classifier folder for --eval_steps.", "checkpoints")
    logging_steps: int = option(10, "Read the loss back from the device, update the progress bar and log every N "
                                "steps.", "checkpoints")  # fmt: skip
    report_to: Literal["tensorboard", "none"] | None = option(
        None, "Where scalars and sample grids go; default tensorboard when it is installed.", "checkpoints")
    logging_dir: str = option("logs", "TensorBoard folder, inside --output_dir.", "checkpoints")
    preview: bool = option(False, "Save a 10x10 grid of training images to output_dir/preview.png first.",
                           "checkpoints")  # fmt: skip
    quiet: bool = option(False, "No progress bar.", "checkpoints")

    # -- sharing
    push_to_hub: bool = option(False, "Upload the output folder to the Hub at the end.", "sharing")
    hub_model_id: str | None = option(None, "The repo, 'user/name' (default: folder name).", "sharing")
    hub_private_repo: bool = option(False, "Create the Hub repo as private.", "sharing")
    hub_token: str | None = option(None, "Hub token; default: HF_TOKEN or the saved login.", "sharing",
                                   secret=True)  # fmt: skip
    license: str = option("apache-2.0", "License in the model card metadata.", "sharing")

    def __post_init__(self):
        if isinstance(self.train_data_files, (str, os.PathLike)):
            self.train_data_files = [str(self.train_data_files)]
        if self.report_to is None:
            try:
                import tensorboard  # noqa: F401

                self.report_to = "tensorboard"
            except ImportError:
                self.report_to = "none"

    def to_dict(self, include_secrets: bool = False) -> dict:
        """The options as plain JSON values (``hub_token`` left out unless asked)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if include_secrets or not f.metadata.get("secret")
        }

    def to_argv(self) -> list[str]:
        """The ``ddpmkit train`` flags that give this config (options left at their defaults are not repeated)."""
        argv = []
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), _default(f)
            if value == default or (f.name == "report_to" and default is None):
                continue
            if f.metadata.get("secret"):
                argv += [f"--{f.name}", "REDACTED"]
                continue
            if isinstance(value, bool):
                argv.append(f"--{f.name}" if value else f"--no-{f.name}")
            elif isinstance(value, list):
                argv += [f"--{f.name}", *map(str, value)]
            else:
                argv += [f"--{f.name}", str(value)]
        return argv

    def check(self) -> None:
        """Checks every option that can be checked without data; raises ``ValueError`` naming the value and the
        fix."""
        self.fill_resolution()
        check_dataset_args(self.dataset, self.dataset_name, self.train_data_dir, self.train_data_files,
                           self.resolution, self.channels, self.max_train_samples)  # fmt: skip
        positive = ("train_batch_size", "num_epochs", "gradient_accumulation_steps", "checkpointing_steps",
                    "save_images_steps", "eval_batch_size", "logging_steps", "ddpm_num_steps",
                    "ddpm_num_inference_steps")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} must be a positive integer, got {value!r}")
        grid = self.eval_batch_size * (self.channels or 3) * self.resolution**2
        if grid > MAX_PIXELS:
            raise ValueError(f"--eval_batch_size {self.eval_batch_size} asks for a grid of {grid * 4 / 2**30:.0f} GiB "
                             f"at --resolution {self.resolution}; use at most "
                             f"{MAX_PIXELS // ((self.channels or 3) * self.resolution**2)}")  # fmt: skip
        for name in ("max_train_steps", "checkpoints_total_limit", "num_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name} must be a positive integer, got {value!r}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"--lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"--learning_rate must be a positive number, got {self.learning_rate}")
        if not 0 <= self.lr_min <= self.learning_rate:
            raise ValueError(f"--lr_min {self.lr_min} must be between 0 and --learning_rate {self.learning_rate}")
        if self.max_grad_norm < 0:
            raise ValueError(f"--max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if not (self.snr_gamma >= 0 and math.isfinite(self.snr_gamma)):
            raise ValueError(f"--snr_gamma must be >= 0 (5 is usual; 0 is the plain loss), got {self.snr_gamma}")
        if not 0 <= self.condition_dropout < 1:
            raise ValueError(f"--condition_dropout must be in [0, 1) (0.1 is usual), got {self.condition_dropout}")
        if not 0 <= self.ema_max_decay < 1:
            raise ValueError(f"--ema_max_decay must be in [0, 1), got {self.ema_max_decay}")
        choices = {"lr_scheduler": ("cosine", "linear", "constant"), "eval_sampler": tuple(SAMPLERS),
                   "prediction_type": ("epsilon", "sample", "v_prediction"),
                   "mixed_precision": (None, "no", "fp16", "bf16"), "report_to": ("tensorboard", "none"),
                   "compile_mode": ("default", "reduce-overhead", "max-autotune")}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} {getattr(self, name)!r} must be one of {[a for a in allowed if a]}")
        import torch

        if self.mixed_precision == "fp16" and (self.cpu or not torch.cuda.is_available()):
            raise ValueError("--mixed_precision fp16 needs a GPU; on the CPU use --mixed_precision bf16 or no")
        from ..hub import check_push_args

        check_push_args(self.push_to_hub, self.hub_model_id, self.hub_token)
        self._check_eval()
        self.unet_config(channels=self.channels or 1)  # the model config and the resolution, before any data

    def _check_eval(self) -> None:
        """Fills ``eval_data`` from ``train_data_files`` and checks the ``eval_*`` options."""
        if self.eval_steps is None:
            return
        if self.eval_steps < 1 or self.eval_samples < 2:
            raise ValueError(f"--eval_steps must be >= 1 and --eval_samples >= 2, got {self.eval_steps}, "
                             f"{self.eval_samples}")  # fmt: skip
        if self.eval_data is None and self.train_data_files:
            self.eval_data = str(Path(self.train_data_files[0]).parent)
        if self.eval_data is None or not (Path(self.eval_data) / "train.parquet").is_file():
            raise ValueError(
                f"--eval_steps scores samples against a local folder of train.parquet/test.parquet, and "
                f"{self.eval_data or 'none'} has no train.parquet; pass --eval_data DIR (e.g. ../shared/data/mnist)"
            )
        if self.eval_classifier == "auto":
            from ..evaluation import bundled_classifier_path

            if bundled_classifier_path(Path(self.eval_data).name) is None:
                raise ValueError(
                    f"ddpmkit ships no classifier for {Path(self.eval_data).name!r}; train one with `ddpmkit "
                    f"train-classifier --dataset {self.eval_data} --output DIR` and pass --eval_classifier DIR"
                )
        elif not Path(self.eval_classifier).is_dir():
            raise ValueError(f"--eval_classifier {self.eval_classifier!r} is not a folder; pass a trained classifier")

    def fill_resolution(self, resumed: int | None = None) -> None:
        """Sets a left-out ``resolution``: ``resumed`` (the checkpoint's) if given, else the ``--dataset``'s own
        size where the UNet's levels allow it, except in bf16 on a CPU (there 28x28 trained slower than 32x32 on a
        Xeon: 184 against 220 images/s; in fp32 on an AVX2 EPYC it trains 1.4x faster), else the tutorial's 32."""
        if self.resolution is not None:
            return
        if resumed is not None:
            self.resolution = resumed
            return
        import torch

        preset = DATASET_PRESETS.get(self.dataset) if isinstance(self.dataset, str) else None
        native = preset.native_resolution if preset is not None else None
        bf16_on_cpu = self.mixed_precision == "bf16" and (self.cpu or not torch.cuda.is_available())
        self.resolution = 32
        if native is not None and not bf16_on_cpu:
            try:
                check_resolution_for_unet(native, self._model_config())
            except ValueError:  # too many levels for it, or a bad --model_config, which check() reports
                return
            self.resolution = native

    def _model_config(self) -> dict:
        """The preset or JSON file named by ``model_config``, as given."""
        name = self.model_config
        if name in MODEL_PRESETS:
            return model_preset(name)
        if name.endswith(".json") or os.path.sep in name or os.path.exists(name):
            return _read_model_config(name)
        raise ValueError(f"unknown --model_config {name!r}; use one of {sorted(MODEL_PRESETS)} or a config.json path")

    def unet_config(self, channels: int, class_names: list[str] | None = None) -> dict:
        """The UNet config: a preset or a JSON file, with ``sample_size`` and ``in_channels`` from the data, and
        with ``class_names`` (of a class-conditional run) a class embedding for them and a null class.
        Raises ``ValueError`` when the resolution does not suit the UNet's levels."""
        name, config = self.model_config, self._model_config()
        config.update(sample_size=self.resolution, in_channels=channels, out_channels=None)
        if class_names:
            config.update(num_class_embeds=len(class_names) + 1,
                          id2label={str(i): str(name) for i, name in enumerate(class_names)})  # fmt: skip
        check_resolution_for_unet(self.resolution, config)
        import torch

        try:
            with torch.device("meta"):  # validates the config without allocating weights
                model = ConvUNet2DModel(**config)
        except TypeError as error:
            raise ValueError(
                f"--model_config {name!r} has an argument ConvUNet2DModel does not take: {error}"
            ) from None
        return dict(model.config)

    def noise_scheduler(self) -> LinearDDPMScheduler:
        """The training noise schedule (also the saved pipeline's sampler)."""
        return LinearDDPMScheduler(
            num_train_timesteps=self.ddpm_num_steps,
            beta_start=self.ddpm_beta_start,
            beta_end=self.ddpm_beta_end,
            prediction_type=self.prediction_type,
        )


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _read_model_config(name: str) -> dict:
    from ..utils.loading import read_json

    path = Path(name)
    if not path.is_file():
        raise ValueError(f"model config file {name!r} does not exist; use one of {sorted(MODEL_PRESETS)} or a path")
    try:
        config = read_json(path)
    except OSError as error:
        raise ValueError(f"model config file {name!r} is not a valid JSON object ({error}); fix the file") from None
    return {k: v for k, v in config.items() if not k.startswith("_")}
