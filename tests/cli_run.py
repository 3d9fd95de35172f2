"""`dal ...` inside the test process, for tests that read what a command printed."""

from __future__ import annotations

import contextlib
import io

import torch

from dal.cli import main


def run_cli(args: list[str]) -> tuple[int, str]:
    """Exit code and stdout of `dal ARGS`; the command's --threads setting is undone after."""
    threads = torch.get_num_threads()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            code = main(args)
    finally:
        torch.set_num_threads(threads)
    return code, stdout.getvalue()
