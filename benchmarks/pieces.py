"""How the UNet's CPU time for 100 images depends on how many go in one call: the measurement behind
``ddpmkit.pipelines.pipeline_ddpm.CPU_UNET_PIECE``.

    python benchmarks/pieces.py --threads 1

Each case runs 100 images through one UNet forward (no_grad), in pieces of N; the cases are interleaved and their
order turns around every round, and each time is the median of ``--repeats`` rounds. Writes
``benchmarks/results-pieces.{json,md}``.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from common import interleaved, median

HERE = Path(__file__).resolve().parent
PIECES = (100, 50, 25, 20, 10)
CASES = (("small", 1, 28), ("small", 1, 32), ("base", 3, 32))  # preset, channels, resolution


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds per case")
    parser.add_argument("--output", default=str(HERE / "results-pieces"), help="results path, no suffix")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from ddpmkit import ConvUNet2DModel, model_preset
    from ddpmkit.utils.device import describe_device

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for preset, channels, size in CASES:
        torch.manual_seed(0)
        unet = ConvUNet2DModel(**model_preset(preset), in_channels=channels, sample_size=size).eval()
        x = torch.randn(100, channels, size, size)

        def run(piece, unet=unet, x=x):
            with torch.no_grad():
                return [unet(x[i : i + piece], 500).sample for i in range(0, len(x), piece)]

        times = interleaved({n: (lambda n=n: run(n)) for n in PIECES}, args.repeats, warmup=1)
        whole = median(times[100])
        row = {"preset": preset, "channels": channels, "resolution": size,
               "seconds": {n: median(times[n]) for n in PIECES}}  # fmt: skip
        row["time_over_one_call"] = {n: row["seconds"][n] / whole for n in PIECES}
        rows.append(row)
        print(f"{preset} {channels}x{size}x{size}: " + "  ".join(_cells(row)), flush=True)
    command = "python benchmarks/pieces.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = {"cpu": describe_device("cpu"), "threads": args.threads, "repeats": args.repeats, "rows": rows,
              "command": command}  # fmt: skip
    Path(args.output + ".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# UNet forward for 100 images, by images per call ({record['cpu']}, {args.threads} threads)", "",
        f"`{record['command']}`: seconds (median of {args.repeats} interleaved rounds), and the time over one call "
        "of 100.", "",
        "| UNet | " + " | ".join(f"pieces of {n}" for n in PIECES) + " |",
        "|---|" + "---:|" * len(PIECES),
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| `{r['preset']}` {r['channels']}x{r['resolution']}x{r['resolution']} | "
                     + " | ".join(_cells(r)) + " |")  # fmt: skip
    Path(args.output + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cells(row: dict) -> list[str]:
    return [f"{row['seconds'][n]:.3f} s ({row['time_over_one_call'][n]:.2f}x)" for n in PIECES]


if __name__ == "__main__":
    sys.exit(main())
