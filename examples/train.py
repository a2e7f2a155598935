"""Train a DDPM image generator and save it as a diffusers pipeline folder.

    accelerate launch examples/train.py --dataset mnist --train_data_files ../shared/data/mnist/train.parquet \\
        --max_train_steps 2300 --output_dir ddpm-mnist

The same as ``ddpmkit train`` (``python examples/train.py --help`` lists the flags). In Python:

    from ddpmkit.training import TrainingConfig, train
    train(TrainingConfig(dataset="mnist", train_data_files=["mnist/train.parquet"], max_train_steps=2300))
"""

import sys

from ddpmkit.commands import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
