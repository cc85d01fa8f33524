"""``skygrade config``: show the effective configuration, or check a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skygrade.ops.config import Config, config_digest, load_config
from skygrade.ops.config_yaml import render_yaml
from skygrade.streamer.cli_common import EXIT_OK

EXAMPLES = (
    "examples:\n  skygrade config show > skygrade.yaml\n  skygrade config check skygrade.yaml"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``skygrade config``'s subcommands and their arguments."""
    sub = p.add_subparsers(dest="config_cmd", required=True, metavar="{show,check}")
    show = sub.add_parser(
        "show", help="print the effective configuration with every field documented"
    )
    show.add_argument(
        "file", nargs="?", type=Path, help="config file (default: --config or built-in defaults)"
    )
    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file", type=Path, help="the YAML file to validate")


def command(args: argparse.Namespace, cfg: Config) -> int:
    """Run ``skygrade config show`` or ``check``; returns the exit code."""
    if args.file is not None:
        cfg = load_config(args.file)
    if args.config_cmd == "show":
        sys.stdout.write(render_yaml(cfg))
    else:
        print(f"{args.file}: ok (config digest {config_digest(cfg)})")
    return EXIT_OK
