"""What every command-line tool of the project shares: the parser, the exit path, the signals.

* ``make_parser`` - argparse with one help formatter (every default shown, descriptions kept as
  written) and one-line usage errors: ``<prog>: error: <problem> (see <prog> --help)``, exit 2.
* ``run_command`` - runs a tool's body: a deliberate error (``SFNetError``) is one line
  ``<prog>: error: <message>`` and exit 2; Ctrl-C exits 130 and SIGTERM 143, both after the
  ``finally`` blocks ran, so staging files and folders of atomic writes are removed.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from sfnet_core.errors import SFNetError

__all__ = ["HelpFormatter", "ArgumentParser", "make_parser", "run_command", "Terminated", "add_overwrite"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str, epilog: str | None = None) -> ArgumentParser:
    return ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def add_overwrite(parser: argparse.ArgumentParser, what: str = "the output") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} if it exists (without it an existing output is refused)")


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM inside ``run_command`` (like KeyboardInterrupt for SIGINT)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def run_command(
    prog: str,
    body: Callable[[], int],
    errors: tuple[type[BaseException], ...] = (SFNetError,),
    interrupted: str = "interrupted",
) -> int:
    """Run a command-line tool's ``body`` the way every sfnet tool ends (see the module docstring)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return body()
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
