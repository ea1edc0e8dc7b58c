"""What every command-line tool of the project shares: the parser, the exit path, the signals.

* ``make_parser`` - argparse with one help formatter (every default shown, descriptions kept as
  written) and one-line usage errors: ``<prog>: error: <problem> (see <prog> --help)``, exit 2.
* ``run_command`` - runs a tool's body: a deliberate error (``SFNetError``) is one line
  ``<prog>: error: <message>`` and exit 2; Ctrl-C exits 130 and SIGTERM 143, both after the
  ``finally`` blocks ran, so staging files and folders of atomic writes are removed. A second
  signal while those blocks run is ignored (it would otherwise cut the clean-up short).
* argparse types that turn bad values into one-line usage errors: ``positive_int``,
  ``non_negative_int``, ``positive_float``, ``fraction``, ``device_spec``.
* ``warn`` - one ``<prog>: warning: ...`` line on stderr.
"""
from __future__ import annotations

import argparse
import math
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from sfnet_core.errors import SFNetError

__all__ = ["HelpFormatter", "ArgumentParser", "make_parser", "run_command", "Terminated", "add_overwrite",
           "positive_int", "non_negative_int", "positive_float", "fraction", "device_spec", "warn"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks.

    argparse's own rule shows ``(default: ...)`` only for options with a help text and a default
    other than None / False; flags (``store_true``) have nothing to show.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or \
                isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            default = action.default
            if isinstance(default, (list, tuple)):
                shown = " ".join(str(v) for v in default) if default else "none"
                return f"{text} (default: {shown})"
            return text + " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str, epilog: str | None = None) -> ArgumentParser:
    """The parser every sfnet tool uses (``HelpFormatter``, one-line usage errors, exit 2)."""
    return ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def _number(text: str, kind: type, test: Callable[[float], bool], expected: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a number > 0")


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    return _number(text, float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")


# The pattern of sfnet_core.devices.check_device_spec, repeated here so that parsing a command
# line does not import torch (seconds on a loaded machine); test_io_utils checks they agree.
DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_spec(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``sfnet_core.devices`` rule;
    whether that GPU exists is checked when the tool runs, with ``resolve_device``)."""
    if not DEVICE_SPEC.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)


def add_overwrite(parser: argparse.ArgumentParser, what: str = "the output") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} if it exists (without it an existing output is refused)")


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM inside ``run_command`` (like KeyboardInterrupt for SIGINT)."""


_stopping = False


def _raise_once(exc: type[BaseException]) -> Callable[[int, object], None]:
    """A handler raising ``exc`` for the first SIGINT/SIGTERM only: later ones arrive while the
    ``finally`` blocks clean up, and must not cut that short (a user pressing Ctrl-C twice)."""

    def handler(signum: int, frame: object) -> None:
        global _stopping
        if _stopping:
            return
        _stopping = True
        raise exc()

    return handler


def run_command(
    prog: str,
    body: Callable[[], int],
    errors: tuple[type[BaseException], ...] = (SFNetError,),
    interrupted: str = "interrupted",
) -> int:
    """Run a command-line tool's ``body`` the way every sfnet tool ends (see the module docstring).

    ``interrupted``: the line printed on Ctrl-C (``<prog>: <interrupted>``); on SIGTERM its word
    "interrupted" reads "terminated (SIGTERM)"."""
    global _stopping
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        _stopping = False
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_once(Terminated)),
                    signal.SIGINT: signal.signal(signal.SIGINT, _raise_once(KeyboardInterrupt))}
    try:
        return body()
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: {interrupted.replace('interrupted', 'terminated (SIGTERM)', 1)}", file=sys.stderr)
        return 143
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
