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
* ``add_threads`` / ``apply_threads_option`` - ``--threads`` (0 = the cores this process may run
  on), the same setting as the node's ``threads`` parameter (``sfnet_core.threads``).
* ``check_recipe`` - a recipe's YAML and its ``key=value`` overrides parse, checked before the
  seconds of torch imports that the typed recipe (``sfnet_core.training.config``) costs.
* one line means one line: every parser has ``--verbose``; without it ``run_command`` holds what
  libraries print behind the tool's back (native stderr, Python warnings, log lines) while the
  body runs and shows it only when the command succeeds, so a failure is its one error line.
  ``OSError`` (a full disk, a read-only place, a symlink loop) is one line too.

Signal handlers are installed by ``sfnet_core.cli.entry`` (the console scripts) before anything
else is imported, and again by ``run_command`` for callers that did not come through it.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

from sfnet_core.cli import entry
from sfnet_core.cli.entry import Terminated
from sfnet_core.device_spec import DEVICE_SPEC
from sfnet_core.errors import ConfigError, SFNetError, require_file
from sfnet_core.io_utils import os_error_message, signals_held
from sfnet_core.yaml_config import apply_overrides, load_yaml

__all__ = ["HelpFormatter", "ArgumentParser", "make_parser", "run_command", "Terminated", "add_overwrite",
           "add_threads", "apply_threads_option", "positive_int", "non_negative_int", "positive_float", "fraction",
           "device_spec", "warn", "check_recipe"]


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

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        global _verbose_requested
        parsed, rest = super().parse_known_args(args, namespace)
        _verbose_requested = bool(getattr(parsed, "verbose", False))
        return parsed, rest


def make_parser(prog: str, description: str, epilog: str | None = None) -> ArgumentParser:
    """The parser every sfnet tool uses (``HelpFormatter``, one-line usage errors, exit 2)."""
    parser = ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    _add_verbose(parser)
    return parser


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


def device_spec(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``sfnet_core.devices`` rule;
    whether that GPU exists is checked when the tool runs, with ``resolve_device``)."""
    if not DEVICE_SPEC.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)


def add_threads(parser: argparse._ActionsContainer) -> None:  # a parser or an argument group
    """``--threads N``: the one CPU thread setting of a tool that runs the network (the node's
    ``threads`` parameter; ``sfnet_core.threads``)."""
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="CPU threads of the network (PyTorch, ONNX Runtime, OpenVINO): 0 = the cores this "
                             "process may run on (its affinity mask); more is allowed, with a warning")


def apply_threads_option(prog: str, threads: int) -> int:
    """Apply ``--threads`` to torch (call in the tool's body, where torch may load) and return the
    count to pass to ``Segmenter.from_checkpoint(threads=...)``; a count above the available
    cores is a ``<prog>: warning:`` line."""
    from sfnet_core.threads import apply_threads  # lazy: imports torch when called (not for --help)

    return apply_threads(threads, lambda text: warn(prog, f"--threads: {text}"))


def check_recipe(prog: str, path: str, overrides: list[str], empty: str) -> None:
    """Refuse a recipe whose file is missing, whose YAML does not parse or whose ``key=value``
    overrides are malformed (ConfigError naming the file), before torch is imported; the values
    themselves are checked by ``load_train_config``. An empty recipe is every default: ``empty``
    says what that means for this tool, as a warning."""
    require_file(path, error=ConfigError)
    data = load_yaml(path)
    if not data:
        warn(prog, f"--config {path} is empty: {empty} (the Cityscapes recipe)")
    apply_overrides(data, list(overrides))


def add_overwrite(parser: argparse.ArgumentParser, what: str = "the output") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} if it exists (without it an existing output is refused)")


def _quiet_streams(verbose: bool) -> Callable[[bool], None]:
    """Hold what reaches file descriptor 2 behind the tool's back while the body runs, unless
    ``verbose``: native code (libpng, OpenCV, ONNX Runtime, rcl), Python warnings, log records of
    handlers set up before the body (they write to the original stream) and of logging's last
    resort. The tool's own stderr (``sys.stderr`` during the body: progress bars, ``warn`` lines,
    reports, loggers it sets up itself) still goes straight to the terminal. Returns
    ``release(replay)``: restores fd 2 and writes the held text out only if ``replay``.

    Only a process whose ``sys.stderr`` is the real fd 2 (a console script) is rearranged; a
    caller that captured stderr (pytest's capsys) sees everything as before."""
    try:
        real = sys.stderr is sys.__stderr__ and sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if verbose or not real:
        return lambda replay: None
    original = sys.stderr
    original.flush()
    saved = os.dup(2)
    sink = tempfile.TemporaryFile()  # noqa: SIM115 - closed by release()
    os.dup2(sink.fileno(), 2)
    own = open(saved, "w", buffering=1, encoding=original.encoding,  # noqa: SIM115 - closed by release()
               errors="backslashreplace", closefd=False)
    sys.stderr = own
    show, last_resort = warnings.showwarning, logging.lastResort
    def show_held(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
        original.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show_held
    logging.lastResort = logging.StreamHandler(original)
    logging.lastResort.setLevel(logging.WARNING)

    done: list[bool] = []

    def release(replay: bool) -> None:
        if done:
            return
        with signals_held():
            done.append(True)
            _restore(replay)

    def _restore(replay: bool) -> None:
        warnings.showwarning, logging.lastResort = show, last_resort
        for stream in (own, original):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stderr = original
        os.dup2(saved, 2)
        with contextlib.suppress(Exception):
            own.close()
        os.close(saved)
        try:
            if replay:
                sink.seek(0)
                held = sink.read()
                if held:
                    original.flush()
                    os.write(2, held)
        finally:
            sink.close()

    return release


_verbose_requested = False


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show everything libraries print (warnings, log lines, native messages); "
                             "without it a failing command prints only its one error line")


def run_command(
    prog: str,
    body: Callable[[], int],
    errors: tuple[type[BaseException], ...] = (SFNetError,),
    interrupted: str = "interrupted",
    verbose: bool | None = None,
) -> int:
    """Run a command-line tool's ``body`` the way every sfnet tool ends (see the module docstring).

    ``interrupted``: the line printed on Ctrl-C (``<prog>: <interrupted>``); on SIGTERM its word
    "interrupted" reads "terminated (SIGTERM)". ``verbose``: default the ``--verbose`` flag of the
    last command line parsed by ``make_parser``'s parser (or ``SFNET_VERBOSE=1``)."""
    if verbose is None:
        verbose = _verbose_requested or os.environ.get("SFNET_VERBOSE", "") not in ("", "0")
    previous: dict[int, Any] = {}
    release: Callable[[bool], None] = lambda replay: None  # noqa: E731
    ok = False
    caught: tuple[type[BaseException], ...] = (*errors, OSError)
    if threading.current_thread() is threading.main_thread():
        entry.stopping(False)
        previous = entry.raising_handlers()
    try:
        try:
            with signals_held():  # a signal half way would leave fd 2 on the hold file: the error line lost
                release = _quiet_streams(verbose)
            status = body()
            ok = status == 0
            return status
        except caught as exc:
            if entry.delivered() is not None:
                # the signal's exception became another one on its way through C code: still the signal
                raise (KeyboardInterrupt if entry.delivered() == signal.SIGINT else Terminated)() from None
            release(verbose)
            if isinstance(exc, OSError) and not isinstance(exc, errors):
                # an output or input the system refused: a full disk, a read-only place, a symlink loop
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"{prog}: error: {where}{os_error_message(exc)}", file=sys.stderr)
                return 2
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        release(verbose)
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except Terminated:
        release(verbose)
        print(f"{prog}: {interrupted.replace('interrupted', 'terminated (SIGTERM)', 1)}", file=sys.stderr)
        return 143
    finally:
        release(ok or verbose)  # a second call does nothing
        for signum, handler in previous.items():
            signal.signal(signum, handler)
