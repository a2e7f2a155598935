"""Speed benchmarks of ddpmkit against stock diffusers on this machine: one command, a table, JSON and Markdown.

    python benchmarks/run.py                       # everything (under 20 minutes on a quiet 2-core CPU)
    python benchmarks/run.py --quick               # smoke run: small batches, fewer steps (a few minutes)
    python benchmarks/run.py --only training,sampling

The full run writes benchmarks/results.json and benchmarks/results.md; --quick writes results-quick.*.
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SECTIONS = ("training", "efficiency", "sampling", "guidance", "overhead", "memory", "options")
DEFAULT_MNIST = HERE.parent.parent / "shared" / "data" / "mnist" / "train.parquet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ddpmkit speed benchmarks (training, sampling, efficiency, memory).")
    parser.add_argument("--quick", action="store_true", help="Smoke run: batch 32/16, few steps, tiny+small only.")
    parser.add_argument(
        "--only", type=str, default=",".join(SECTIONS),
        help=f"Comma-separated sections to run, from {', '.join(SECTIONS)} (default: all).",
    )  # fmt: skip
    parser.add_argument("--presets", type=str, default=None, help="Comma-separated presets (default: per mode).")
    parser.add_argument("--repeats", type=int, default=None, help="Timed runs per case (median is reported).")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: torch's, one per core). On a loaded machine 1 avoids OpenMP stalls.",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile in the options section.")
    parser.add_argument("--mnist_file", type=str, default=str(DEFAULT_MNIST), help="MNIST parquet for 'overhead'.")
    parser.add_argument(
        "--output", type=str, default=None,
        help="Results path without suffix (default: benchmarks/results, or benchmarks/results-quick with --quick).",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.only.split(",") if name.strip()]
    bad = [name for name in args.sections if name not in SECTIONS]
    if bad or not args.sections:
        parser.error(f"--only {args.only!r} names unknown sections {bad}; use a comma-separated subset of {SECTIONS}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def main(args: argparse.Namespace) -> dict:
    import sections
    import torch
    from common import PRESETS, cpu_info

    settings = sections.Settings.quick() if args.quick else sections.Settings.full()
    if args.presets:
        presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
        bad = [p for p in presets if p not in PRESETS]
        if bad:
            raise SystemExit(f"error: --presets {args.presets!r} names unknown presets {bad}; use {PRESETS}")
        settings.presets = presets
    if args.repeats:
        settings.repeats = args.repeats

    def log(line: str) -> None:
        print(line, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_info()
    log(
        f"{cpu['model']}, {cpu['cores']} cores, {cpu['simd']}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; FP32 peak {cpu['formula']}; load average {cpu['load_average']}"
    )
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "mode": "quick" if args.quick else "full", "cpu": cpu, "settings": vars(settings), "sections": {},
        "seconds": {},
    }  # fmt: skip
    start_all = time.perf_counter()
    for name in args.sections:
        start = time.perf_counter()
        if name == "training":
            out = sections.training(settings, log)
        elif name == "efficiency":
            out = sections.efficiency(settings, cpu, log)
        elif name == "sampling":
            out = sections.sampling(settings, log)
        elif name == "guidance":
            out = sections.guidance(settings, log)
        elif name == "overhead":
            out = sections.overhead(settings, log, args.mnist_file)
        elif name == "memory":
            out = sections.memory(settings, log)
        elif name == "options":
            out = sections.options(settings, log, with_compile=args.compile)
        else:
            raise ValueError(f"section {name!r} must be one of {SECTIONS}")
        results["sections"][name] = out
        results["seconds"][name] = time.perf_counter() - start
        log(f"-- {name} took {results['seconds'][name]:.0f} s")
    results["seconds"]["total"] = time.perf_counter() - start_all
    results["cpu"]["load_average_end"] = cpu_info()["load_average"]

    output = Path(args.output) if args.output else HERE / ("results-quick" if args.quick else "results")
    output.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown = to_markdown(results)
    output.with_suffix(".md").write_text(markdown)
    print()
    print(markdown)
    log(f"wrote {output.with_suffix('.json')} and {output.with_suffix('.md')} in {results['seconds']['total']:.0f} s")
    return results


def to_markdown(results: dict) -> str:
    cpu, sec = results["cpu"], results["sections"]
    lines = [
        f"# ddpmkit speed benchmarks ({results['mode']} run, {results['date']})", "",
        f"Command: `{results['command']}`  ", f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['simd']}, "
        f"torch {cpu['torch']} ({cpu['torch_threads']} threads); load average at start {cpu['load_average']}, "
        f"at end {cpu.get('load_average_end')}  ", f"FP32 peak: {cpu['formula']}", "",
    ]  # fmt: skip
    if "training" in sec:
        t = sec["training"]
        lines += [
            f"## Training throughput (batch {t['batch']}, 32x32x1, AdamW; median of {t['repeats']} interleaved runs "
            f"of {', '.join(f'{k}: {v}' for k, v in t['steps_per_run'].items())} steps)", "",
            "| preset | UNet | channels | params | GFLOP/img (fwd+bwd) | images/s | ddpmkit / this |",
            "|---|---|---|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in t["rows"]:
            lines.append(
                f"| {r['preset']} | {r['unet']} | {'-'.join(map(str, r['channels']))} | {r['params'] / 1e6:.3f}M | "
                f"{r['train_gflops_per_image']:.3f} | {r['images_per_s']:.1f} | {r['ratio_ddpmkit_over_this']:.3f} |"
            )
        lines.append("")
    if "efficiency" in sec:
        e = sec["efficiency"]
        lines += [
            f"## Hardware efficiency (ddpmkit UNet alone, batch {e['batch']}; peak {e['peak_gflops']:.1f} GFLOP/s)",
            "", "| preset | pass | layout | GFLOP/img | images/s | GFLOP/s | of FP32 peak |",
            "|---|---|---|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in e["rows"]:
            lines.append(
                f"| {r['preset']} | {r['pass']} | {r['layout']} | {r['gflops_per_image']:.3f} | "
                f"{r['images_per_s']:.1f} | {r['achieved_gflops']:.2f} | {100 * r['fraction_of_peak']:.1f}% |"
            )
        lines.append("")
    if "sampling" in sec:
        lines += [
            "## Sampling, `small` UNet: seconds per 100 images", "",
            "| method | timed steps x batch | ddpmkit | diffusers | bare loop | ddpmkit / diffusers | "
            "per round: median (range) | ddpmkit over bare | diffusers over bare |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in sec["sampling"]["rows"]:
            s = r["seconds_per_100_images"]
            lines.append(
                f"| {r['method']} | {r['timed_steps']} x {r['batch']} | {s['ddpmkit']:.2f} | {s['diffusers']:.2f} | "
                f"{s['bare loop']:.2f} | {r['ratio_ddpmkit_over_diffusers']:.3f} | {_round_ratios(r)} | "
                f"{100 * r['ddpmkit_overhead_over_bare']:+.1f}% | {100 * r['diffusers_overhead_over_bare']:+.1f}% |"
            )
        lines += ["", "Times are scaled linearly from the timed steps and batch to the nominal steps and 100 images. "
                  "A round times each case once, back to back; its ratio cancels the load that round saw."]
        lines.append("")
    if "guidance" in sec:
        lines += [
            "## Classifier-free guidance, class-conditional `small` UNet: seconds per 100 images", "",
            "| method | timed steps x batch | unguided | guided (scale 2) | guided / unguided | UNet at the batch | "
            "UNet at twice the batch | UNet 2B / B | UNet twice at B / B |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in sec["guidance"]["rows"]:
            s = r["seconds_per_100_images"]
            lines.append(
                f"| {r['method']} | {r['timed_steps']} x {r['batch']} | {s['unguided']:.2f} | "
                f"{s['guided (scale 2)']:.2f} | {r['ratio_guided_over_unguided']:.3f} | "
                f"{s['UNet at the batch']:.2f} | "
                f"{s['UNet at twice the batch']:.2f} | {r['ratio_unet_double_over_single']:.3f} | "
                f"{r.get('ratio_unet_two_passes_over_single', float('nan')):.3f} |"
            )
        lines += ["", "Guided sampling runs the UNet on the class and null halves together, in pieces of at most "
                  "`CPU_UNET_PIECE` (25) images on a CPU, where a call at twice the batch costs more than twice."]
        lines.append("")
    if "overhead" in sec:
        o = sec["overhead"]
        lines += [
            f"## Training-loop overhead (`small`, batch {o['batch']}, {o['steps']} steps, images/s every "
            f"{o['logging_steps']} steps, first interval dropped, two runs each)", "",
            "| examples/train.py | bare fwd+bwd+AdamW loop | train.py slower by |", "|---:|---:|---:|",
            f"| {o['train_py_images_per_s']:.1f} | {o['bare_loop_images_per_s']:.1f} | {100 * o['slowdown']:+.1f}% |",
            "",
        ]  # fmt: skip
    if "memory" in sec:
        lines += [
            f"## Peak memory ({sec['memory']['method']})", "",
            "| preset | what | batch | peak RSS MiB | after building the model | rise |",
            "|---|---|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in sec["memory"]["rows"]:
            lines.append(
                f"| {r['preset']} | {r['what']} | {r['batch']} | {r['peak_rss_mib']:.0f} | "
                f"{r['after_build_mib']:.0f} | {r['rise_mib']:.0f} |"
            )
        lines.append("")
    if "options" in sec:
        o = sec["options"]
        lines += [
            f"## Speed options (`{o['preset']}` preset, A/B interleaved; speedup over the first row of each group)",
            "",
            "| what | variant | images/s | speedup |", "|---|---|---:|---:|",
        ]  # fmt: skip
        for r in o["rows"]:
            lines.append(f"| {r['what']} | {r['variant']} | {r['images_per_s']:.1f} | {r['speedup']:.3f} |")
        if o.get("compile_seconds") is not None:
            lines.append(f"\ntorch.compile's first step (compilation) took {o['compile_seconds']:.0f} s.")
        lines.append("")
    lines.append("Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items()))
    return "\n".join(lines) + "\n"


def _round_ratios(row: dict) -> str:
    ratios = row.get("round_ratios")  # absent from results written before it was recorded
    if not ratios:
        return ""
    return f"{row['ratio_median_of_rounds']:.3f} ({min(ratios):.2f}-{max(ratios):.2f})"


if __name__ == "__main__":
    main(parse_args())
