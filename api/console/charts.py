"""Charts drawn on the server as SVG: no script, no network, the numbers readable without colour."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from engine.store.queries import Minute

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 180, 40, 20, 10


def attempts_chart(minutes: Sequence[Minute]) -> Markup:
    """Attempts per minute as bars (failed ones stacked in red) and the p95 latency as a line on its own scale."""
    if not minutes:
        return Markup("")
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - BOTTOM - TOP
    top = max(max(m.attempts for m in minutes), 1)
    slowest = max((m.p95 for m in minutes if m.p95 is not None), default=0) or 1
    step = plot_w / len(minutes)
    parts = [f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 10}" y2="{TOP + plot_h}"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{top}</text>',
             f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>']
    line = []
    for i, minute in enumerate(minutes):
        x = LEFT + i * step
        height = plot_h * minute.attempts / top
        failed = plot_h * minute.failed / top
        label = escape(f"{minute.start:%H:%M} — {minute.attempts} attempts, {minute.failed} failed, "
                       f"p95 {minute.p95 if minute.p95 is not None else '–'} ms")
        if minute.attempts:
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - height:.1f}" '
                         f'width="{max(step - 1, 1):.1f}" height="{height:.1f}"><title>{label}</title></rect>')
        if minute.failed:
            parts.append(f'<rect class="bar failed" x="{x:.1f}" y="{TOP + plot_h - failed:.1f}" '
                         f'width="{max(step - 1, 1):.1f}" height="{failed:.1f}"/>')
        if minute.p95 is not None:
            line.append(f"{x + step / 2:.1f},{TOP + plot_h - plot_h * minute.p95 / slowest:.1f}")
    if line:
        parts.append(f'<polyline class="line" points="{" ".join(line)}"/>')
        parts.append(f'<text x="{WIDTH - 12}" y="{TOP + 8}" text-anchor="end">p95 max {slowest} ms</text>')
    every = max(1, len(minutes) // 6)
    for i in range(0, len(minutes) - every // 2, every):
        parts.append(f'<text x="{LEFT + i * step:.1f}" y="{HEIGHT - 4}">{minutes[i].start:%H:%M}</text>')
    parts.append(f'<text x="{WIDTH - 10}" y="{HEIGHT - 4}" text-anchor="end">{minutes[-1].start:%H:%M} UTC</text>')
    summary = escape(f"Attempts per minute over {len(minutes)} minutes, peak {top}")
    return Markup(f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{summary}">'
                  f'<title>{summary}</title>{"".join(parts)}</svg>')
