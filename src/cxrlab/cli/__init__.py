"""Command line: parses arguments (parser.py), calls the API and prints (commands.py). No logic of its own."""

from cxrlab.cli.commands import COMMANDS, main

__all__ = ["COMMANDS", "main"]
