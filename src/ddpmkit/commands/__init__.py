"""The ``ddpmkit`` command line: one module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``.

Bad input (a missing folder, ``--steps 0``, an unwritable output path, ...) prints one line on stderr and exits with
code 2; a training run that stops for a reason the user can fix (a full disk, a NaN loss, a folder in use) exits
with code 1.
"""

import os
import sys

from . import card, convert_tutorial, evaluate, info, preview, sample, train, train_classifier, trajectory
from .common import Parser, UsageError

SUBCOMMANDS = (sample, trajectory, train, evaluate, card, preview, info, convert_tutorial, train_classifier)


def build_parser() -> Parser:
    """The ``ddpmkit`` argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    from .. import __version__

    parser = Parser(
        prog="ddpmkit",
        description="Train, sample and inspect DDPM image generators saved as diffusers pipeline folders.",
        epilog="Run `ddpmkit <command> --help` for a command's options. Start with: ddpmkit sample --model DIR",
    )
    parser.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``ddpmkit`` command with ``argv`` (default: ``sys.argv[1:]``) and returns its exit code."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            prog = f"ddpmkit {args.command}" if args.command else "ddpmkit"
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(unknown)}; see `{prog} --help`")
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    from diffusers.utils import logging as diffusers_logging

    from ..training import TrainingError
    from ..utils.lock import FolderInUseError

    verbosity = diffusers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()  # config notes about unused keys are not the user's concern
    diffusers_logging.disable_progress_bar()  # loading takes well under a second
    prefix = f"ddpmkit {args.command}: error:"
    speaks = os.environ.get("RANK", "0") == "0"  # one message from a multi-process run, not one per process
    try:
        return args.run(args)
    except UsageError as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # training: options or data that cannot work
        if args.command != "train":
            raise
        if speaks:
            print(f"{prefix} {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (TrainingError, FolderInUseError) as e:
        if speaks:
            print(f"{prefix} {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ddpmkit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bars:
            diffusers_logging.enable_progress_bar()
