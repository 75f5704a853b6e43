"""The ``steer`` command line. Subcommands: ``info`` (version, backends, toolchain).

``steer generate``, ``steer eval``, ``steer sweep`` and ``steer demo`` come with the dataset layer.
"""

from __future__ import annotations

import argparse
import platform
import sys


def _info(_: argparse.Namespace) -> int:
    import torch
    import transformers

    import steer

    print(f"steer {steer.__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"backends (every op): {', '.join(steer.backends())}")
    for op in ("combine", "sample"):
        print(f"backends for {op}: {', '.join(steer.backends(op))}")
    print(f"cuda available: {torch.cuda.is_available()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer", description="Fast STEER decoding for synthetic text data.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("info", help="show the version and the backends usable on this machine").set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from steer import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
