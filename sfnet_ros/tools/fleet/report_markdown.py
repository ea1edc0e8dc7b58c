"""The fleet evaluation's short Markdown summary, for CI logs and job summaries.

``render_markdown(summary)`` renders the summary ``sfnet-fleet-eval`` writes (the contract is
``summary_schema.md`` beside this module) as a few lines a reviewer reads in a CI log without
opening the HTML report: the overall line, the per-group table, the five worst classes, the
failed bags and, for an A/B run, the delta mIoU with its interval and the gate verdict. No images.

Summary strings are backslash-escaped (``_md``): a bag name with ``|`` would otherwise split a
table row, and one with ``<b>`` would be rendered as markup where the Markdown is shown as HTML
(job summaries); the escapes read as the plain name in a raw log.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["render_markdown"]

DASH = "–"
# What could end a table cell, start markup, a link, code or an entity. An underscore inside a
# word (sfnet_resnet18, drive_01.mcap) is never emphasis, so only one at a word's edge is escaped.
_SPECIAL = re.compile(r"[\\`*\[\]<>|~&]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def _md(value: Any) -> str:
    """Plain text of a summary value, safe in a table cell: Markdown punctuation escaped, one line."""
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()))


def _pct(value: Any) -> str:
    return DASH if value is None else f"{100 * float(value):.1f} %"


def _pp(value: Any) -> str:
    return DASH if value is None else f"{100 * float(value):+.1f} pp"


def _num(value: Any) -> str:
    return DASH if value is None else f"{float(value):.3f}"


def _headline(s: Mapping[str, Any]) -> str:
    o = s.get("overall") or {}
    failed = len(s.get("failed") or [])
    miou = f"mIoU **{_pct(o.get('miou'))}**" if s.get("labelled") else "**no labels** (no IoU)"
    return (f"{miou} · {o.get('frames', 0)} frames ({o.get('labelled_frames', 0)} labelled) · "
            f"uncertainty {_num(o.get('uncertainty'))} · {failed} failed bag{'' if failed == 1 else 's'}")


def _groups(s: Mapping[str, Any]) -> list[str]:
    rows = ["| bag | camera | frames | mIoU | uncertainty |", "|---|---|---:|---:|---:|"]
    for g in s.get("groups") or []:
        rows.append(f"| {_md(g.get('bag') or 'all')} | {_md(g.get('camera') or 'all')} | {g.get('frames', 0)} | "
                    f"{_pct(g.get('miou'))} | {_num(g.get('uncertainty'))} |")
    return rows if len(rows) > 2 else []


def _worst_classes(s: Mapping[str, Any], n: int = 5) -> list[str]:
    per_class = (s.get("overall") or {}).get("per_class_iou") or {}
    present = sorted((float(v), name) for name, v in per_class.items() if v is not None)[:n]
    if not s.get("labelled") or not present:
        return []
    return ["Worst classes: " + ", ".join(f"{_md(name)} {_pct(v)}" for v, name in present)]


def _failed(s: Mapping[str, Any]) -> list[str]:
    failed = s.get("failed") or []
    return ["**Failed bags:**"] + [f"- {_md(f.get('bag'))}: {_md(f.get('reason'))}" for f in failed] if failed else []


def _compare(s: Mapping[str, Any]) -> list[str]:
    c = s.get("compare")
    if not c:
        return []
    d = c.get("delta_miou") or {}
    base = (c.get("baseline") or {}).get("name")
    line = (f"A/B against baseline {_md(base)}: Δ mIoU **{_pp(d.get('value'))}** "
            f"[{_pp(d.get('low'))}, {_pp(d.get('high'))}] (95 % bootstrap, {c.get('resamples')} resamples of "
            f"{_md(c.get('resampled'))})")
    gate = c.get("gate")
    if not gate:
        verdict = "Gate: none set"
    elif gate.get("passed"):
        verdict = "Gate: **PASSED** (" + ", ".join(_md(x) for x in gate.get("classes") or []) + ")"
    else:
        verdict = "Gate: **FAILED**: " + ", ".join(_md(x) for x in gate.get("failed") or []) + \
            f" dropped by more than {100 * float(gate.get('max_drop') or 0):.1f} pp"
    return [line, "", verdict]


def render_markdown(summary: dict[str, Any]) -> str:
    """The short Markdown summary of a fleet summary (see ``summary_schema.md``)."""
    s = summary
    name = _md((s.get("model") or {}).get("name"))
    blocks = [[f"### Fleet evaluation: {name}", "", _headline(s)], _groups(s), _worst_classes(s), _failed(s),
              _compare(s)]
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"
