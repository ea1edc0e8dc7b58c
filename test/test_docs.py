"""The documentation holds together: every relative link and anchor in README.md, CONTRIBUTING.md
and docs/*.md resolves, and the README stays a landing page."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in text.splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [a or b for a, b in LINK.findall(text)]


def test_slugs_follow_github() -> None:
    assert github_slug("Fidelity to the paper (`make model-stats`)") == "fidelity-to-the-paper-make-model-stats"
    assert github_slug("Run a published model") == "run-a-published-model"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: {dest.relative_to(REPO) if REPO in dest.parents else dest} does not exist")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{fragment} in {dest.name}")
    assert not broken, f"{page.relative_to(REPO)}:\n" + "\n".join(broken)


def test_readme_is_a_landing_page() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in ("docs/node.md", "docs/training.md", "docs/evaluation-and-bags.md", "docs/model.md",
                 "docs/performance.md", "docs/troubleshooting.md", "docs/architecture.md", "docs/custom-data.md"):
        assert f"({page})" in readme, f"README.md does not link {page}"


def test_what_the_docs_write_in_the_repository_root_is_ignored_by_git() -> None:
    """A reader who runs the docs' commands in the repository root finds no untracked data files
    in `git status`: every output path they name (bags, datasets, recipes, runs) is ignored."""
    import subprocess

    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = set()
    for page in PAGES:
        for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M):
            outputs.update(re.findall(r"(?:--out|--json|--save-pred|--strips)\s+([\w./-]+)", block))
            outputs.update(re.findall(r"^cp \S+ ([\w./-]+)$", block, re.M))
    outputs = {p for p in outputs if not p.startswith(("/", "$", "~"))}
    assert len(outputs) >= 10, outputs  # the pattern still finds the docs' outputs
    result = subprocess.run(["git", "check-ignore", "--no-index", *sorted(outputs)], cwd=REPO,
                            capture_output=True, text=True)
    assert set(result.stdout.split()) == outputs, f"not ignored: {sorted(outputs - set(result.stdout.split()))}"
