"""Print uv options that reach the same packages as this machine's pip configuration.

``make setup`` installs with uv (several times faster than pip on the CI machine) but uv does not
read pip's configuration: the index URLs, find-links folders and constraint files configured for
pip (``pip config list``, which includes the ``PIP_*`` environment variables) are given to it
here, so that both resolve from the same sources. Prints nothing where pip has none configured.
"""
from __future__ import annotations

import shlex
import subprocess
import sys

# pip's option name -> uv's; pip's keys are "<section>.<option>" (section global, install or :env:)
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links", "constraint": "--constraint"}


def uv_arguments(pip_config_list: str) -> list[str]:
    """``pip config list`` lines (``global.extra-index-url='url1 url2'``) -> uv's options."""
    pairs: list[tuple[str, str]] = []
    for line in pip_config_list.splitlines():
        key, _, quoted = line.partition("=")
        option = OPTIONS.get(key.rsplit(".", 1)[-1])
        for item in " ".join(shlex.split(quoted)).split() if option else []:
            if (option, item) not in pairs:  # the same folder set in a file and in PIP_* once
                pairs.append((option, item))
    return [word for pair in pairs for word in pair]


def main() -> int:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                            text=True, check=True).stdout
    sys.stdout.write(shlex.join(uv_arguments(listed)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
