"""The `svd-server` entry point: one subcommand per module of this package."""
from __future__ import annotations

import argparse

from app.cli import db, doctor, generate, serve, worker

COMMANDS = (serve, worker, db, generate, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svd-server",
                                     description="Self-hosted Stability image-to-video API")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
