"""Tools that answer at once: ``--help`` and the one-line refusals come before torch, ONNX, rclpy.

No time is asserted (the numbers are ``bench/startup.py``'s, on a quiet machine). Instead each
tool runs in a subprocess where importing torch, ONNX or rclpy fails (``GUARD``: a ``sys.meta_path``
finder raising ImportError), so an answer that would have waited for them is a traceback and
exit 1 instead of the one line and exit 2. ``test_cli_bad_input.py`` runs most of its table
under the same guard; the cases here are the ones that table does not hold.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# the libraries that cost seconds (torch, and torch._dynamo through torchvision.ops; onnx about 1 s)
# or start a runtime (rclpy, ONNX Runtime): none may be imported before the first answer. OpenCV
# (0.15 s, imported by sfnet_ros.conversions at its top) is allowed.
HEAVY = ("torch", "torchvision", "rclpy", "onnx", "onnxruntime")

GUARD = f"""
import sys
HEAVY = {HEAVY!r}


class NoHeavyImports:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            raise ImportError(f"{{name}} imported before the answer (test_startup guard)")
        return None


sys.meta_path.insert(0, NoHeavyImports())
from importlib.metadata import entry_points

tool = sys.argv[1]
sys.argv = [tool, *sys.argv[2:]]
(script,) = entry_points(group="console_scripts", name=tool)
script.load()()
"""


def guarded(tool: str) -> list[str]:
    """The command line running console script ``tool`` with the heavy imports made to fail."""
    return [sys.executable, "-c", GUARD, tool]


# The same guard, then a fork server: the console script ``tool`` is loaded once, and each line of
# stdin ({"args": [...], "cwd": ..., "out": ..., "err": ...}) runs it in a fresh fork of that
# process (stdin /dev/null, stdout and stderr into the two files, the exit status as a console
# script gives it), answered by one line {"code": N}. A case pays a fork, not an interpreter start
# and the tool's imports (0.3-0.4 s of CPU each); each still starts from the same untouched
# process. What happens while a tool is imported is the subprocess tests' (test_startup.py).
FORK_SERVER = GUARD.rsplit("sys.argv = ", 1)[0] + """
import json, os, traceback

(script,) = entry_points(group="console_scripts", name=tool)
main = script.load()
module = sys.argv[2] if len(sys.argv) > 2 else None
if module:
    __import__(module)  # what the entry point imports when it runs: loaded once, here
for line in sys.stdin:
    case = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(case["cwd"])
            write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, case["out"], write), (2, case["err"], write)):
                os.dup2(os.open(path, flags, 0o644), fd)
            sys.argv = [tool, *case["args"]]
            try:
                result = main()
                code = 0 if result is None else int(result)
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def fork_server(tool: str, module: str = "") -> list[str]:
    """The command line of ``FORK_SERVER`` for console script ``tool`` (``module``: its implementation)."""
    return [sys.executable, "-c", FORK_SERVER, tool, module]


TOOLS = ("sfnet-train", "sfnet-eval", "sfnet-export", "sfnet-import", "sfnet-synthetic", "sfnet-bag-eval",
         "sfnet-bag-play", "sfnet-bag-record", "sfnet-live-eval", "sfnet-extract", "sfnet-demo", "sfnet-status",
         "sfnet-synthetic-bag", "sfnet-fleet-eval", "sfnet-fleet-merge", "sfnet-labels")


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_every_console_script_is_listed() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name for e in entry_points(group="console_scripts") if e.name.startswith("sfnet-")}
    assert scripts == set(TOOLS)


def test_the_guard_refuses_the_heavy_imports(tmp_path: Path) -> None:
    """The guard itself works: a tool that does need torch to answer fails under it."""
    proc = _run([sys.executable, "-c", GUARD.replace("script.load()()", "import torch"), "sfnet-train"], tmp_path)
    assert proc.returncode == 1 and "torch imported before the answer" in proc.stderr, proc.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_help_answers_without_heavy_imports(tool: str, tmp_path: Path) -> None:
    proc = _run(guarded(tool) + ["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {tool} ") and proc.stderr == ""


# -- the model-file checks the tools run before torch (sfnet_core.errors) ----------------------------


def test_torch_files_are_recognised_without_torch(tmp_path: Path) -> None:
    import pickle
    import zipfile

    import torch

    from sfnet_core.errors import CheckpointError, require_torch_file

    state = {"w": torch.ones(2)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        require_torch_file(tmp_path / name)  # no error
    whole = (tmp_path / "zip.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(state, protocol=4))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    refused = {
        "cut.pt": "not a readable checkpoint (truncated or corrupt?): a zip archive whose end is missing",
        "empty.pt": "not a readable checkpoint (truncated or corrupt?): the file is empty",
        "noise.pt": "neither torch.save's zip archive nor its legacy pickle format",
        "plain.pkl": "a plain python pickle (protocol 4, not a torch.save file)",
        "other.zip": "a zip archive without data.pkl",
    }
    for name, expected in refused.items():
        with pytest.raises(CheckpointError) as caught:
            require_torch_file(tmp_path / name)
        assert str(caught.value).startswith(f"{tmp_path / name}: ") and expected in str(caught.value)
    with pytest.raises(CheckpointError, match="noise.pt: not a readable weights file"):
        require_torch_file(tmp_path / "noise.pt", "weights file")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        require_torch_file(tmp_path / "missing.pt")


def test_onnx_files_are_recognised_without_onnx(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from sfnet_core.errors import CheckpointError, require_model_file

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [256], [0.5] * 256)])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"sfnet.format": "x"})
    data = model.SerializeToString()
    (tmp_path / "model.onnx").write_bytes(data)
    require_model_file(tmp_path / "model.onnx")  # no error
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.onnx").write_bytes(bytes(range(256)) * 8)
    for name in ("cut.onnx", "noise.onnx"):
        with pytest.raises(CheckpointError, match=f"{name}: not a readable ONNX model \\(truncated or corrupt\\?\\): "
                                                  "DecodeError"):
            require_model_file(tmp_path / name)
        with pytest.raises(Exception):  # noqa: B017 - what onnx.load says, whatever its type
            onnx.load(str(tmp_path / name))
