"""The `llmi` command. Subcommands import their component lazily, so `llmi serve` on a
control-plane install never needs torch."""

from __future__ import annotations

import argparse
import logging
import sys

from llmi import __version__
from llmi.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmi", description="Local LLM Interface")
    parser.add_argument("--version", action="version", version=f"llmi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    runtime = sub.add_parser("runtime", help="serve one model folder (model server)")
    from llmi.runtime_args import add_runtime_arguments

    add_runtime_arguments(runtime)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "runtime":
        try:
            from llmi_runtime.server import run
        except ImportError as exc:
            print(f"llmi runtime needs the runtime extra (pip install 'llmi[runtime]'): {exc}", file=sys.stderr)
            return 2
        return run(args, settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
