"""Sample trees for people: an HTML page shading each step by its FCI, marking branch points
and the correctness of every leaf. Pure: groups and a decode function in, a string out.

    html = render_trees_html(groups[:3], decode=lambda ids: tok.decode(ids), title="iteration 10")
"""

from __future__ import annotations

from html import escape
from typing import Callable, Sequence

from attnrl_core.prompt_groups import PromptGroup, Response

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em}
.group{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.resp{margin:.5em 0 .5em 1em;font-family:ui-monospace,monospace;white-space:pre-wrap}
.step{border-radius:3px;padding:0 1px}
.bp{border-left:3px solid #d62728;margin-left:2px}
.ok{color:#2ca02c;font-weight:bold}.bad{color:#d62728;font-weight:bold}
.cont{margin-left:2.5em;color:#444}
.legend{color:#666;font-size:90%}
"""


def _verdict(reward: float) -> str:
    return '<span class="ok">&#10003;</span>' if reward >= 1.0 else '<span class="bad">&#10007;</span>'


def _response_html(resp: Response, decode: Callable[[list[int]], str], top: float) -> str:
    points = set(resp.branch_points)
    parts = []
    for k, (start, end) in enumerate(resp.step_spans):
        fci = resp.step_fci[k + 1] if k + 1 < len(resp.step_fci) else 0.0
        alpha = 0.0 if top <= 0 else min(1.0, fci / top)
        cls, tip = ("step bp", f"FCI {fci:.4f}, branch point") if start in points else ("step", f"FCI {fci:.4f}")
        text = escape(decode(resp.token_ids[start:end]))
        parts.append(f'<span class="{cls}" style="background:rgba(31,119,180,{alpha:.2f})" title="{tip}">{text}</span>')
    return "".join(parts) or escape(decode(resp.token_ids))


def render_trees_html(groups: Sequence[PromptGroup], decode: Callable[[list[int]], str], title: str = "sample trees") -> str:
    """One section per prompt: every initial response with its steps shaded by FCI (darker =
    more influential), branch points as red bars, and under each branched response the
    continuations from each point with their verdicts."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{_STYLE}</style></head><body>"]
    out.append(f"<h1>{escape(title)}</h1><p class='legend'>Step shading: FCI relative to the largest in its prompt. "
               "Red bar: a branch point (the step after it was re-sampled). &#10003;/&#10007;: the verifier's verdict.</p>")
    for group in groups:
        top = max((x for r in group.responses for x in r.step_fci[1:]), default=0.0)
        out.append(f"<div class='group'><b>{escape(group.problem)}</b> &mdash; answer {escape(group.answer)}, "
                   f"accuracy {group.accuracy:.2f}")
        for i, resp in enumerate(group.responses):
            out.append(f"<div class='resp'>{_verdict(resp.reward)} #{i} {_response_html(resp, decode, top)}</div>")
            for point, conts in zip(resp.branch_points, resp.continuations):
                for j, cont in enumerate(conts):
                    out.append(f"<div class='resp cont'>{_verdict(cont.reward)} from token {point} (#{j}): "
                               f"&hellip;{escape(decode(cont.token_ids))}</div>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
