"""Placeholder for this subcommand; issue 6 builds it."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text)


def run(args: argparse.Namespace) -> int:
    print(f"ssrseg {args.command}: not implemented yet", file=sys.stderr)
    return 2
