"""``ddpmkit card``: write a pipeline folder's model card from its JSON records."""

import argparse
from pathlib import Path

from .common import UsageError, add_model, add_quiet, check_model_folder, one_line


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "card",
        help="write a pipeline folder's model card (README.md) from its JSON records",
        description="Write the model card of a pipeline folder from its JSON files alone: training_args.json (the "
        "command, the compute, the hyperparameters, and an optional 'card' object with a title, a summary and "
        "notes), eval_history.json and eval_results.json. Run it after `ddpmkit evaluate` to show the new numbers; "
        "`ddpmkit train` writes the same card at the end of a run.",
        epilog="example: ddpmkit card --model pretrained/mnist --repo_id pretrained/mnist",
    )
    add_model(parser)
    parser.add_argument("--repo_id", default=None, help="the name in the title and the loading snippet "
                        "(default: the folder's name)")  # fmt: skip
    parser.add_argument("--license", default="apache-2.0", help="license id in the card's metadata")
    parser.add_argument("--out", default=None, help="where to write the card (default: MODEL/README.md); links "
                        "to the folder's pictures and records are made relative to it")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the card on disk differs "
                        "from the one the records give")  # fmt: skip
    add_quiet(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..hub import render_model_card, write_model_card

    root = check_model_folder(args.model)
    out = Path(args.out).expanduser() if args.out else root / "README.md"
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; name the Markdown file to write")
    try:
        if args.check:
            expected = str(render_model_card(root, args.repo_id, args.license, path=out))
            if not out.is_file() or out.read_text(encoding="utf-8") != expected:
                print(f"{out} differs from the card its records give; run `ddpmkit card --model {args.model}"
                      + (f" --out {args.out}" if args.out else "") + "` to write it")  # fmt: skip
                return 1
            if not args.quiet:
                print(f"{out} matches the records")
            return 0
        path = write_model_card(root, args.repo_id, args.license, path=out)
    except (ValueError, OSError) as e:
        raise UsageError(one_line(e)) from None
    if not args.quiet:
        print(f"wrote {path}")
    return 0
