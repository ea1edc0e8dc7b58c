"""Console-script entry points: Ctrl-C and SIGTERM are handled from the first line to the last.

``launch(module)`` is what every ``sfnet-*`` console script calls (``setup.py``): it installs
the SIGINT / SIGTERM handlers first (this module imports nothing but the standard library and
the torch-free ``sfnet_core.threads``, so they are in place within milliseconds of the
interpreter's start), bounds OpenMP's spinning (``prepare_process``: it must precede torch's
import), then imports the tool's module
(seconds: torch, OpenCV, rclpy) and runs its ``main``. A signal at any instant ends the process
with exit status 130 (SIGINT) or 143 (SIGTERM), no traceback:

* during the imports or argument parsing: one line ``<prog>: interrupted`` and the exit status;
* during the tool's work: ``run_command`` (``sfnet_core.cli.common``) turns it into an exception
  so that the ``finally`` blocks remove staging files first (a second signal meanwhile is
  ignored);
* after ``main`` returned: the exit handlers (``atexit``) run under handlers that end the
  process at once with 130 / 143, and the process ends with ``os._exit``, never through the
  interpreter's own shutdown (where a signal would be "Exception ignored in atexit" or a kill).

Before this module runs the interpreter itself starts (and the venv's ``.pth`` hooks run); a
signal in those first tens of milliseconds gets Python's default behaviour.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from sfnet_core.threads import prepare_process  # standard library only, like this module

__all__ = ["Terminated", "launch", "raising_handlers", "stopping", "sfnet_train", "sfnet_eval", "sfnet_import",
           "sfnet_labels",
           "sfnet_synthetic"]


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (like KeyboardInterrupt for SIGINT)."""


_state: dict[str, Any] = {"stopping": False, "signum": None}


def stopping(value: bool | None = None) -> bool:
    """Whether a signal was already turned into an exception (later ones are then ignored)."""
    if value is not None:
        _state["stopping"] = value
        if not value:
            _state["signum"] = None
    return _state["stopping"]


def delivered() -> int | None:
    """The signal already turned into an exception since the handlers were installed, if any."""
    return _state["signum"]


def _raise_once(exc: type[BaseException]) -> Callable[[int, object], None]:
    """A handler raising ``exc`` for the first SIGINT/SIGTERM only: later ones arrive while the
    ``finally`` blocks clean up, and must not cut that short (a user pressing Ctrl-C twice)."""

    def handler(signum: int, frame: object) -> None:
        if _state["stopping"]:
            return
        _state["stopping"] = True
        _state["signum"] = signum
        raise exc()

    return handler


def _unraisable(hook: Any) -> Callable[[Any], None]:
    """``sys.unraisablehook``: the handler's exception may land where Python cannot raise it (a
    weakref callback inside an import, a ``__del__``) and would be printed as "Exception ignored"
    and lost. Instead the signal is delivered again, to land in ordinary code."""

    def unraisable(info: Any) -> None:
        signum = _state["signum"]
        if isinstance(info.exc_value, (KeyboardInterrupt, Terminated)) and signum is not None:
            import threading
            import time

            def again() -> None:
                time.sleep(0.02)
                os.kill(os.getpid(), signum)

            _state["stopping"] = False
            threading.Thread(target=again, name="sfnet-signal-again", daemon=True).start()
            return
        hook(info)

    # marks the hook as ours (raising_handlers installs it once); a function attribute mypy cannot see
    unraisable.sfnet = True  # type: ignore[attr-defined]
    return unraisable


def raising_handlers() -> dict[int, Any]:
    """Install the raising handlers (main thread only); return the previous ones."""
    if not getattr(sys.unraisablehook, "sfnet", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    return {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_once(Terminated)),
            signal.SIGINT: signal.signal(signal.SIGINT, _raise_once(KeyboardInterrupt))}


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe, a full disk: nothing left to tell anybody
            stream.flush()


def _hard_exit(signum: int, frame: object) -> None:
    _flush()
    os._exit(128 + signum)


def _finish(status: int) -> None:
    """End the process with ``status``: exit handlers first (a signal now exits 128+signum at
    once), then flush, then ``os._exit`` (no interpreter shutdown to be interrupted)."""
    signal.signal(signal.SIGINT, _hard_exit)
    signal.signal(signal.SIGTERM, _hard_exit)
    import atexit

    with contextlib.suppress(BaseException):  # already reported by atexit itself
        atexit._run_exitfuncs()
    _flush()
    os._exit(status)


def _status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)  # sys.exit("message")
    return 1


def launch(module: str, prog: str | None = None, function: str = "main") -> None:
    """Run ``module.function()`` (a tool's ``main``) as a console script; never returns."""
    _state["stopping"] = False
    _state["signum"] = None
    raising_handlers()
    # Before the tool's imports load torch (and its OpenMP runtime, which reads this once): idle
    # OpenMP threads sleep instead of spinning, so a CPU-hungry neighbour cannot make a tool 10x
    # slower (issue 18; sfnet_core/threads.py). A user's own OMP_WAIT_POLICY is kept.
    prepare_process()
    prog = prog or os.path.basename(sys.argv[0]) or module
    status = 1
    try:
        try:
            import importlib

            status = _status(getattr(importlib.import_module(module), function)())
        except SystemExit as exc:  # argparse: --help, usage errors
            status = _status(exc.code)
        except KeyboardInterrupt:
            _state["stopping"] = True
            print(f"{prog}: interrupted", file=sys.stderr)
            status = 130
        except Terminated:
            _state["stopping"] = True
            print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
            status = 143
        except Exception:
            if _state["signum"] is not None:
                # the signal's exception turned into another one on its way through C code (an
                # import of an extension module raises ImportError): still the signal
                status = 128 + _state["signum"]
                word = "interrupted" if status == 130 else "terminated (SIGTERM)"
                print(f"{prog}: {word}", file=sys.stderr)
            else:  # a bug: its traceback, then the same orderly exit
                import traceback

                traceback.print_exc()
                status = 1
        _state["stopping"] = True  # from here a signal is ignored until _finish exits at once
    except (KeyboardInterrupt, Terminated) as exc:  # a signal inside the handlers above
        _state["stopping"] = True
        status = 130 if isinstance(exc, KeyboardInterrupt) else 143
    _finish(status)


# ---------------------------------------------------------------------------- the core tools
def sfnet_train() -> None:
    launch("sfnet_core.cli.train_command", "sfnet-train")


def sfnet_eval() -> None:
    launch("sfnet_core.cli.evaluate_command", "sfnet-eval")


def sfnet_labels() -> None:
    launch("sfnet_core.cli.labels_command", "sfnet-labels")


def sfnet_import() -> None:
    launch("sfnet_core.cli.import_command", "sfnet-import")


def sfnet_synthetic() -> None:
    launch("sfnet_core.cli.synthetic_command", "sfnet-synthetic")
