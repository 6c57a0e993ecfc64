"""Value parsers shared by the command-line flags of every module that adds some."""

from __future__ import annotations

import argparse


def parse_bool(text: str) -> bool:
    """Triton's boolean option values: true/on/1/yes and false/off/0/no, any case."""
    value = text.strip().lower()
    if value in ("true", "on", "1", "yes"):
        return True
    if value in ("false", "off", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid value for bool option: '{text}' (expected true or false)")
