"""The status page: ``GET /`` and ``GET /status`` on the HTTP port, one server-rendered HTML
page (no script, no build step) that reloads itself every few seconds (``?refresh=<s>``, 0 to
stop). It shows every model version with its state, traffic weight and live share, queue
depth, request counts, latency percentiles, a batch-size histogram, and for models with a
rollout the canary, shadow comparison, drift statistics and recent events. Small inline SVG
charts where a picture reads faster than numbers.

Routes (API category ``statistics`` of access control: the page shows what the statistics
and the traffic GETs show, and changes nothing):

    GET /          the page
    GET /status    the same page

Figures carry ``data-model``, ``data-version`` and ``data-field`` attributes, so tools (and
the browser test) can read them back.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from ..core import InferenceCore
from ..stats import ModelStats

# (upper bound in seconds, requests in that bucket) of a version's request latency; None when
# no histogram is kept (metrics off). The owner passes one in (server/app.py).
LatencyReader = Callable[[ModelStats], Sequence[tuple[float, int]] | None]
DEFAULT_REFRESH_S = 5

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .2em} h2{font-size:16px;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;margin-bottom:.8em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:middle}
th{background:#f0f0f0} td.l,th.l{text-align:left}
.READY{color:#1a7f37;font-weight:600} .UNAVAILABLE,.UNLOADING{color:#b42318;font-weight:600}
.muted{color:#777} .bad{color:#b42318;font-weight:600} .ok{color:#1a7f37}
ul.events{margin:.2em 0;padding-left:1.2em;font-size:13px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:.3e}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.2f}"


def _cell(model: str, version: str, field: str, text: str, cls: str = "") -> str:
    attrs = f'data-model="{_e(model)}" data-version="{_e(version)}" data-field="{_e(field)}"'
    return f'<td class="{cls}" {attrs}>{text}</td>'


def _bars(values: Sequence[tuple[str, float]], width: int = 160, height: int = 36, title: str = "") -> str:
    """A small bar chart: one bar per (label, value)."""
    if not values:
        return '<span class="muted">–</span>'
    top = max(v for _, v in values) or 1.0
    step = width / len(values)
    bars = []
    for i, (label, v) in enumerate(values):
        h = max(1.0, (height - 10) * v / top) if v else 0.0
        x = i * step + 1
        bars.append(
            f'<rect x="{x:.1f}" y="{height - 10 - h:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" fill="#4c78a8">'
            f"<title>{_e(label)}: {_e(_num(v))}</title></rect>"
        )
        if len(values) <= 12:
            bars.append(
                f'<text x="{x + step / 2 - 1:.1f}" y="{height - 1}" font-size="8" text-anchor="middle">{_e(label)}</text>'
            )
    return f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}">{"".join(bars)}</svg>'


def _overlay(reference: Sequence[float] | None, current: Sequence[float] | None, width: int = 120) -> str:
    """The reference's bin shares (grey) and the recent traffic's (outlined) over the same bins."""
    if not reference:
        return '<span class="muted">–</span>'
    height, n = 28, len(reference)
    top = max([*reference, *(current or [])]) or 1.0
    step = width / n
    out = [f'<svg width="{width}" height="{height}" role="img" aria-label="reference and recent distribution">']
    for i, r in enumerate(reference):
        h = (height - 2) * r / top
        out.append(f'<rect x="{i * step:.1f}" y="{height - h:.1f}" width="{step:.1f}" height="{h:.1f}" fill="#ccc"/>')
    if current:
        points = " ".join(
            f"{i * step:.1f},{height - (height - 2) * c / top:.1f} {(i + 1) * step:.1f},{height - (height - 2) * c / top:.1f}"
            for i, c in enumerate(current)
        )
        out.append(f'<polyline points="{points}" fill="none" stroke="#e45756" stroke-width="1.5"/>')
    out.append("</svg>")
    return "".join(out)


def _share_bar(weight: float, live: float | None, width: int = 120) -> str:
    """The policy's share (outline) and the observed share (filled), 0..1."""
    live_w = 0.0 if live is None else live * width
    return (
        f'<svg width="{width}" height="12" role="img" aria-label="share">'
        f'<rect x="0" y="1" width="{live_w:.1f}" height="10" fill="#72b7b2"/>'
        f'<rect x="0" y="1" width="{weight * width:.1f}" height="10" fill="none" stroke="#333"/></svg>'
    )


def quantile(buckets: Sequence[tuple[float, int]], q: float) -> float | None:
    """A quantile from (upper bound, count) buckets, linear inside the bucket."""
    total = sum(n for _, n in buckets)
    if not total:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for bound, n in buckets:
        if n and seen + n >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - seen) / n
        seen += n
        if bound != float("inf"):
            lower = bound
    return lower


class StatusPage:
    def __init__(self, core: InferenceCore, latency: LatencyReader | None = None) -> None:
        self.core = core
        self.latency = latency

    async def page(self, request: Request) -> Response:
        try:
            refresh = max(0, min(3600, int(request.query_params.get("refresh", DEFAULT_REFRESH_S))))
        except ValueError:
            refresh = DEFAULT_REFRESH_S
        return HTMLResponse(self.render(refresh), headers={"Cache-Control": "no-store"})

    def render(self, refresh: int = DEFAULT_REFRESH_S) -> str:
        rollouts = self.core.rollouts()
        stats = {(s.name, s.version): s for s in self.core.model_statistics()}
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        parts = [
            f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>inferd status</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>inferd</h1><div class='muted'>{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}"
            f"{f' · refreshes every {refresh} s' if refresh else ''}</div>",
            "<h2>Models</h2>",
            self._models(stats, rollouts),
        ]
        for name, figures in rollouts.items():
            parts.append(self._rollout(name, figures))
        parts.append("</body></html>")
        return "".join(parts)

    def _models(self, stats: dict[tuple[str, str], ModelStats], rollouts: dict[str, dict[str, Any]]) -> str:
        head = (
            "<table id='models'><tr><th class='l'>model</th><th>version</th><th class='l'>state</th>"
            "<th>weight</th><th>live share</th><th></th><th>queue</th><th>success</th><th>fail</th>"
            "<th>p50 ms</th><th>p99 ms</th><th>avg ms</th><th class='l'>batch sizes</th><th class='l'>reason</th></tr>"
        )
        rows = [head]
        for entry in self.core.repository_index():
            if not entry.version:
                if entry.state:
                    rows.append(
                        f"<tr><td class='l'>{_e(entry.name)}</td><td></td><td class='l {_e(entry.state)}'>"
                        f"{_e(entry.state)}</td><td colspan='10'></td><td class='l'>{_e(entry.reason)}</td></tr>"
                    )
                continue
            name, version = entry.name, entry.version
            rollout = rollouts.get(name) or {}
            policy = rollout.get("policy") or {}
            weights = {k: float(v) for k, v in (policy.get("weights") or {}).items()}
            total = sum(weights.values())
            weight = weights.get(version, 0.0) / total if total else None
            live = (rollout.get("shares") or {}).get(version) if policy else None
            s = stats.get((name, version))
            cells = [
                f"<td class='l'>{_e(name)}</td><td>{_e(version)}</td>",
                _cell(name, version, "state", _e(entry.state), f"l {entry.state}"),
                _cell(name, version, "weight", "–" if weight is None else f"{100 * weight:.0f}%"),
                _cell(name, version, "live_share", "–" if live is None else f"{100 * live:.1f}%"),
                f"<td>{_share_bar(weight, live) if weight is not None else ''}</td>",
            ]
            if s is None:
                cells.append("<td colspan='7'></td>")
            else:
                buckets = self.latency(s) if self.latency is not None else None
                p50 = quantile(buckets, 0.5) if buckets else None
                p99 = quantile(buckets, 0.99) if buckets else None
                avg = s.success.ns / s.success.count / 1e9 if s.success.count else None
                batches = [(str(b), float(v.compute_infer.count)) for b, v in sorted(s.batch_stats.items())]
                cells += [
                    _cell(name, version, "pending", str(s.pending)),
                    _cell(name, version, "success", str(s.success.count)),
                    _cell(name, version, "fail", str(s.fail.count)),
                    _cell(name, version, "p50_ms", _ms(p50)),
                    _cell(name, version, "p99_ms", _ms(p99)),
                    _cell(name, version, "avg_ms", _ms(avg)),
                    f"<td class='l'>{_bars(batches[:32], title='batch sizes')}</td>",
                ]
            cells.append(f"<td class='l'>{_e(entry.reason)}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return "".join(rows) + "</table>"

    def _rollout(self, name: str, f: dict[str, Any]) -> str:
        out = [f"<h2 id='rollout-{_e(name)}'>Rollout of {_e(name)}</h2><table><tr><th class='l'>policy</th>"]
        out.append(
            f"<td class='l' data-model='{_e(name)}' data-field='policy'>{_e(f.get('effective') or 'none (the newest version)')}</td></tr>"
        )
        if f.get("previous"):
            out.append(
                f"<tr><th class='l'>rollback to</th><td class='l'>{_e(_weights_text(f['previous']))}"
                f" <span class='muted'>(bake {f.get('bake_remaining_s', 0):.0f} s left)</span></td></tr>"
            )
        canary = f.get("canary")
        if canary:
            cls = "bad" if canary["state"] == "rolled back" else "ok"
            out.append(
                f"<tr><th class='l'>canary</th><td class='l'><span class='{cls}' data-model='{_e(name)}' "
                f"data-field='canary_state'>{_e(canary['state'])}</span> version {_e(canary['version'])} at "
                f"{_e(canary['share'])}%, {_e(canary['steps'])} step(s), {_e(canary['rollbacks'])} rollback(s)"
                f"<br><span class='muted'>{_e(canary['last_decision'])}</span></td></tr>"
            )
        out.append("</table>")
        shadow = f.get("shadow")
        if shadow:
            out.append(self._shadow(name, shadow))
        drift = f.get("drift") or {}
        if drift:
            out.append(self._drift(name, drift))
        events = f.get("events") or []
        if events:
            items = "".join(
                f"<li>{_e(time.strftime('%H:%M:%S', time.localtime(e['time'])))} {_e(e['event'])}</li>"
                for e in reversed(events[-8:])
            )
            out.append(f"<ul class='events'>{items}</ul>")
        return "".join(out)

    def _shadow(self, name: str, s: dict[str, Any]) -> str:
        rows = [
            f"<table><tr><th class='l' colspan='10'>shadow → {_e(s['target'])} ({_e(s['compare'])}, "
            f"{100 * s['share']:g}% of the traffic)</th></tr><tr><th>primary</th><th>compared</th><th>agreement</th>"
            "<th>diff p50</th><th>diff p99</th><th>primary p99 ms</th><th>shadow p99 ms</th><th>errors primary / shadow</th>"
            "<th>dropped</th></tr>"
        ]
        for version, p in s["pairs"].items():
            agreement = p["agreement"]
            cls = "" if agreement is None or agreement >= 0.99 else "bad"
            rows.append(
                f"<tr><td>{_e(version)}</td>"
                + _cell(name, version, "shadow_compared", str(p["compared"]))
                + _cell(name, version, "shadow_agreement", "–" if agreement is None else f"{100 * agreement:.1f}%", cls)
                + f"<td>{_num(p['difference']['p50'])}</td><td>{_num(p['difference']['p99'])}</td>"
                + f"<td>{_ms(p['primary_latency_s']['p99'])}</td><td>{_ms(p['shadow_latency_s']['p99'])}</td>"
                + f"<td>{p['primary_errors']} / {p['shadow_errors']}</td><td>{p['dropped']}</td></tr>"
            )
        return "".join(rows) + "</table>"

    def _drift(self, name: str, drift: dict[str, Any]) -> str:
        rows = [
            "<table><tr><th class='l'>drift</th><th>version</th><th class='l'>tensor</th><th>count</th><th>mean</th>"
            "<th>std</th><th>PSI</th><th>KS</th><th class='l'>reference (grey) / recent (red)</th></tr>"
        ]
        for version, d in drift.items():
            note = "" if d["reference_complete"] else " (collecting the reference)"
            for tensor, t in d["tensors"].items():
                psi = t["psi"]
                cls = "bad" if psi is not None and psi > 0.25 else ""
                rows.append(
                    f"<tr><td class='l muted'>{_e(d['reference'])}{_e(note)}</td><td>{_e(version)}</td>"
                    f"<td class='l'>{_e(t['kind'])} {_e(tensor)}</td><td>{t['count']}</td><td>{_num(t['mean'])}</td>"
                    f"<td>{_num(t['std'])}</td>"
                    + _cell(name, version, f"psi:{tensor}", _num(psi), cls)
                    + _cell(name, version, f"ks:{tensor}", _num(t["ks"]))
                    + f"<td>{_overlay(t['reference_shares'], t['current_shares'])}</td></tr>"
                )
        return "".join(rows) + "</table>"


def _weights_text(policy: dict[str, Any]) -> str:
    return ",".join(f"{v}:{w}" for v, w in policy.get("weights", {}).items())


def status_routes(core: InferenceCore, latency: LatencyReader | None = None) -> list[BaseRoute]:
    page = StatusPage(core, latency)
    return [Route("/", page.page, methods=["GET"]), Route("/status", page.page, methods=["GET"])]
