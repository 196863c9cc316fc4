"""report.html: one self-contained page (inline CSS and SVG, no scripts, nothing fetched) drawn from report.json."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

ACCENT, FRONT, VARIANT, MUTED = "#2563eb", "#ea580c", "#9333ea", "#94a3b8"
SI_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))

CSS = """
:root { --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --soft: #f8fafc; --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #f1f5f9; }
main { max-width: 1160px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { margin: 0 0 2px; font-size: 26px; letter-spacing: -0.01em; }
header .sub { color: var(--muted); margin: 0 0 16px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px; margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: #334155; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 10px 20px; margin: 0; }
dl.facts div { min-width: 0; }
dl.facts dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; }
dl.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.versions { color: var(--muted); font-size: 12px; margin-top: 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 7px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; color: #334155; vertical-align: bottom; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr.deployed td { background: #ecfdf5; }
td code { overflow-wrap: normal; }
.nowrap { white-space: nowrap; }
tr.has-detail td { border-bottom: none; }
tr.detail td { padding-top: 0; color: var(--muted); font-size: 12px; }
tr.detail b { color: #991b1b; font-weight: 600; }
.small { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.ok { background: #dcfce7; color: #166534; } .rejected { background: #fee2e2; color: #991b1b; }
.failed { background: #fde68a; color: #92400e; } .bundle { background: #e0e7ff; color: #3730a3; }
.deploy { border-left: 5px solid #16a34a; } .deploy.none { border-left-color: #dc2626; }
.deploy p { margin: 4px 0; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft); padding: 1px 4px;
       border-radius: 4px; overflow-wrap: anywhere; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 18px; }
figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg { max-width: 100%; height: auto; font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
.legend { color: var(--muted); font-size: 12px; margin-top: 2px; }
.legend span { margin-right: 14px; white-space: nowrap; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 4px; vertical-align: -1px; }
.empty { color: var(--muted); font-style: italic; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- number formatting -------------------------------------------------------------------------------------------

def fmt(value: Any, how: Callable[[float], str]) -> str:
    """`how(value)` for a finite number, a dash otherwise."""
    return how(value) if is_num(value) else "–"


def pct(v: float) -> str:
    return f"{v:.2%}"


def si(v: float) -> str:
    """12345678 -> '12.3M'."""
    scale, suffix = si_scale(v)
    return f"{v / scale:.3g}{suffix}"


def si_scale(v: float) -> tuple[float, str]:
    return next(((s, x) for s, x in SI_PREFIXES if abs(v) >= s), (1.0, ""))


def size(v: float) -> str:
    return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.0f} kB"


def ms(v: float) -> str:
    return f"{v:.3g} ms"


# ---- Pareto front and plots --------------------------------------------------------------------------------------

@dataclass
class Point:
    label: str
    x: float  # lower is better
    y: float  # higher is better
    group: str = "main"  # main | variant
    note: str = ""
    eligible: bool = True  # False: shown, but kept off the front (a rejected or failed artifact)


def pareto_front(points: list[Point]) -> list[int]:
    """Indices of the eligible points no other one beats on both axes (lower x, higher y), in increasing x."""
    order = sorted((i for i, p in enumerate(points) if p.eligible), key=lambda i: (points[i].x, -points[i].y))
    front, best = [], -math.inf
    for i in order:
        if points[i].y > best:
            front.append(i)
            best = points[i].y
    return front


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    if hi <= lo:
        pad = abs(lo) * 0.1
        lo, hi = (lo - pad, hi + pad) if pad else (0.0, 1.0)
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1e-9) * step
    n = math.ceil((hi - first) / step - 1e-9)
    return [round(first + i * step, 12) for i in range(n + 1)]


def tick_label(value: float, step: float, unit: str) -> str:
    """A tick's text with just the decimals its spacing needs; unit is pct, si or num."""
    scale, suffix = {"pct": (0.01, "%"), "si": si_scale(value), "num": (1.0, "")}[unit]
    decimals = max(0, -math.floor(math.log10(step / scale) + 1e-9))
    return f"{value / scale:.{decimals}f}{suffix}"


@dataclass
class Axes:
    """Maps data to pixels and draws the frame, grid, ticks and titles of one chart."""

    xticks: list[float]
    yticks: list[float]
    width: int = 560
    height: int = 330
    left: int = 66
    right: int = 18
    top: int = 14
    bottom: int = 48

    def px(self, x: float) -> float:
        lo, hi = self.xticks[0], self.xticks[-1]
        return self.left + (x - lo) / (hi - lo) * (self.width - self.left - self.right)

    def py(self, y: float) -> float:
        lo, hi = self.yticks[0], self.yticks[-1]
        return self.height - self.bottom - (y - lo) / (hi - lo) * (self.height - self.top - self.bottom)

    def frame(self, xlabel: str, ylabel: str, xunit: str, yunit: str) -> list[str]:
        x0, x1, y0, y1 = self.left, self.width - self.right, self.height - self.bottom, self.top
        parts = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fff" stroke="#cbd5e1"/>']
        xstep, ystep = self.xticks[1] - self.xticks[0], self.yticks[1] - self.yticks[0]
        for t in self.xticks:
            x = self.px(t)
            parts.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#e2e8f0"/>')
            parts.append(f'<text x="{x:.1f}" y="{y0 + 17}" text-anchor="middle" fill="#475569">'
                         f'{esc(tick_label(t, xstep, xunit))}</text>')
        for t in self.yticks:
            y = self.py(t)
            parts.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e2e8f0"/>')
            parts.append(f'<text x="{x0 - 7}" y="{y + 4:.1f}" text-anchor="end" fill="#475569">'
                         f'{esc(tick_label(t, ystep, yunit))}</text>')
        parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{self.height - 8}" text-anchor="middle" font-size="12" '
                     f'font-weight="600" fill="#334155">{esc(xlabel)}</text>')
        parts.append(f'<text transform="translate(14 {(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
                     f'font-size="12" font-weight="600" fill="#334155">{esc(ylabel)}</text>')
        return parts


def axes_for(xs: Iterable[float], ys: Iterable[float], y_max: Optional[float] = None) -> Axes:
    """Axes whose ticks cover the data with a small margin, never below zero for non-negative data."""
    return Axes(padded_ticks(list(xs)), padded_ticks(list(ys), y_max))


def padded_ticks(values: list[float], upper: Optional[float] = None) -> list[float]:
    """Ticks for the values plus 6% each side, the margin kept above zero and under `upper` when the data are."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.06
    lo = max(0.0, lo - pad) if lo >= 0 else lo - pad
    hi = hi + pad if upper is None or hi > upper else min(hi + pad, upper)
    return nice_ticks(lo, hi)


def svg(parts: list[str], width: int, height: int, title: str) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{esc(title)}"><title>{esc(title)}</title>{"".join(parts)}</svg>')


def place_labels(points: list[tuple[float, float, str]], ax: Axes) -> list[str]:
    """Point labels beside their point, right or left, moved a line up or down until they overlap no marker or label."""
    taken = [(x - 6, y - 6, x + 6, y + 6) for x, y, _ in points]
    parts = []
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        boxes = [(side, dy, label_box(x, y + dy, 6.2 * len(text), side)) for dy in (0, -13, 13, -26, 26, -39, 39)
                 for side in (1, -1)]
        inside = [b for b in boxes if ax.left <= b[2][0] and b[2][2] <= ax.width] or boxes[1:2]
        side, dy, box = next((b for b in inside if not any(overlap(b[2], t) for t in taken)), inside[0])
        taken.append(box)
        parts.append(f'<text x="{x + 8 * side:.1f}" y="{y + dy + 1:.1f}" text-anchor="{"start" if side > 0 else "end"}" '
                     f'fill="#1e293b" stroke="#fff" stroke-width="3" paint-order="stroke">{esc(text)}</text>')
    return parts


def label_box(x: float, y: float, width: float, side: int) -> tuple[float, float, float, float]:
    """The box of a label written 8 px right (side 1) or left (side -1) of x, on a baseline near y."""
    left = x + 8 if side > 0 else x - 8 - width
    return left, y - 9, left + width, y + 3


def overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def pareto_svg(points: list[Point], title: str, xlabel: str, xunit: str, xfmt: Callable[[float], str]) -> str:
    """Scatter of accuracy against a cost with the Pareto front drawn as a line through its points."""
    ax = axes_for((p.x for p in points), (p.y for p in points), y_max=1.0)
    parts = ax.frame(xlabel, "accuracy", xunit, "pct")
    front = pareto_front(points)
    coords = " ".join(f"{ax.px(points[i].x):.1f},{ax.py(points[i].y):.1f}" for i in front)
    parts.append(f'<polyline class="pareto-front" points="{coords}" fill="none" stroke="{FRONT}" stroke-width="2" '
                 f'stroke-dasharray="6 4"/>')
    on_front = set(front)
    for i, p in enumerate(points):
        color = MUTED if not p.eligible else VARIANT if p.group == "variant" else ACCENT
        fill, stroke = (color, FRONT) if i in on_front else ("#fff", color)
        tip = f"{p.label}: accuracy {pct(p.y)}, {xfmt(p.x)} {p.note}".rstrip()
        parts.append(f'<circle cx="{ax.px(p.x):.1f}" cy="{ax.py(p.y):.1f}" r="5.5" fill="{fill}" stroke="{stroke}" '
                     f'stroke-width="2"><title>{esc(tip)}</title></circle>')
    parts += place_labels([(ax.px(p.x), ax.py(p.y), p.label) for p in points], ax)
    return svg(parts, ax.width, ax.height, title)


def schedule_svg(schedule: list, title: str) -> str:
    """The sparsity reached at each pruning step, as a staircase."""
    steps = [(float(s), float(v)) for s, v in schedule]
    ax = axes_for([0.0, *(s for s, _ in steps)], [0.0, *(v for _, v in steps)], y_max=1.0)
    parts = ax.frame("training step", "sparsity", "num", "pct")
    path, level = [f"M{ax.px(0):.1f},{ax.py(0):.1f}"], 0.0
    for s, v in steps:
        path.append(f"L{ax.px(s):.1f},{ax.py(level):.1f} L{ax.px(s):.1f},{ax.py(v):.1f}")
        level = v
    parts.append(f'<path class="schedule" d="{" ".join(path)}" fill="none" stroke="{ACCENT}" stroke-width="2"/>')
    parts += [f'<circle cx="{ax.px(s):.1f}" cy="{ax.py(v):.1f}" r="3" fill="{ACCENT}"><title>step {s:g}: '
              f'{pct(v)}</title></circle>' for s, v in steps]
    return svg(parts, ax.width, ax.height, title)


def bars_svg(values: dict[str, float], title: str) -> str:
    """One horizontal bar per layer, 0 to 100%."""
    label_w = min(260, 12 + 6.4 * max(len(k) for k in values))
    width, row, top = 560, 20, 22
    bar_w = width - label_w - 62
    parts = [f'<text x="{label_w + bar_w * t:.1f}" y="13" text-anchor="middle" fill="#475569">{t:.0%}</text>'
             f'<line x1="{label_w + bar_w * t:.1f}" y1="{top - 4}" x2="{label_w + bar_w * t:.1f}" '
             f'y2="{top + row * len(values)}" stroke="#e2e8f0"/>' for t in (0, 0.25, 0.5, 0.75, 1)]
    for i, (name, v) in enumerate(values.items()):
        y = top + i * row
        shown = name if 6.4 * len(name) + 12 <= label_w else "…" + name[-int((label_w - 18) / 6.4):]
        parts.append(f'<text x="{label_w - 8:.1f}" y="{y + 13}" text-anchor="end" fill="#1e293b">{esc(shown)}'
                     f'<title>{esc(name)}</title></text>')
        parts.append(f'<rect class="bar" x="{label_w:.1f}" y="{y + 3}" width="{bar_w * max(0.0, min(1.0, v)):.1f}" '
                     f'height="{row - 6}" rx="2" fill="{ACCENT}"/>')
        parts.append(f'<text x="{label_w + bar_w + 6:.1f}" y="{y + 13}" fill="#334155">{esc(pct(v))}</text>')
    return svg(parts, width, top + row * len(values) + 6, title)


# ---- data gathering ----------------------------------------------------------------------------------------------

def artifact_name(a: dict) -> str:
    """The file name, after its variant's name when it belongs to one: small/model.int8.onnx."""
    name = Path(str(a.get("path") or "")).name or str(a.get("format", "?"))
    return f"{a['variant']}/{name}" if a.get("variant") else name


def target_names(report: dict) -> list[str]:
    """The run's targets in order (one, in a report of a single-target run)."""
    names = [t.get("name", "?") for t in report.get("targets") or [] if isinstance(t, dict)]
    return names or [(report.get("target") or {}).get("name", "?")]


def deployments(report: dict) -> dict:
    """Target name -> what to deploy there (None: nothing is deployable), for old and new reports alike."""
    matrix = report.get("deployments")
    return matrix if isinstance(matrix, dict) else {target_names(report)[0]: report.get("deploy")}


def of_target(report: dict, target: str) -> list[dict]:
    """The artifacts made for `target` (all of them in a report that names no target)."""
    artifacts = [a for a in report.get("artifacts") or [] if isinstance(a, dict)]
    return [a for a in artifacts if a.get("target", target) == target]


def latency_points(artifacts: list[dict]) -> list[Point]:
    """Artifacts with an accuracy and a batch-1 latency on the target."""
    return [Point(artifact_name(a), a["estimated_latency_ms"], a["accuracy"],
                  group="variant" if a.get("variant") else "main",
                  note=f"({a.get('latency_source', 'estimated')}, {a.get('status', '?')})",
                  eligible=a.get("status") not in ("rejected", "failed"))
            for a in artifacts if is_num(a.get("accuracy")) and is_num(a.get("estimated_latency_ms"))]


def macs_points(report: dict) -> list[Point]:
    """Stages, plus variants and sub-networks listed in the report or in a stage's metrics."""
    points = []
    for s in report.get("stages") or []:
        m = s.get("metrics") or {}
        if is_num(m.get("macs")) and is_num(m.get("val_accuracy")):
            points.append(Point(stage_label(s), m["macs"], m["val_accuracy"]))
        points += variant_points(m.get("variants"), prefix=f"{stage_label(s)}/")
    return points + variant_points(report.get("variants"))


def variant_points(variants: Any, prefix: str = "") -> list[Point]:
    """Variants given as a list of dicts or a {name: dict} mapping; entries without MACs and accuracy are skipped."""
    if isinstance(variants, dict):
        variants = [{"name": k, **v} for k, v in variants.items() if isinstance(v, dict)]
    points = []
    for i, v in enumerate(variants if isinstance(variants, list) else []):
        if not isinstance(v, dict):
            continue
        metrics = {**(v.get("metrics") if isinstance(v.get("metrics"), dict) else {}), **v}
        accuracy = next((metrics[k] for k in ("val_accuracy", "accuracy") if is_num(metrics.get(k))), None)
        if is_num(metrics.get("macs")) and accuracy is not None:
            name = v.get("label") or v.get("name") or f"variant {i + 1}"
            points.append(Point(f"{prefix}{name}", metrics["macs"], accuracy, group="variant"))
    return points


def stage_label(s: dict) -> str:
    index = s.get("index")
    return f"{index + 1}. {s.get('label', s.get('type', '?'))}" if isinstance(index, int) else str(s.get("label", "?"))


# ---- page sections -----------------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list[str]], numeric: Iterable[int], row_classes: Optional[list[str]] = None,
          details: Optional[list[str]] = None) -> str:
    """A table of already-escaped cells with right-aligned `numeric` columns; a row's detail, when it has one, goes
    on a full-width line under it."""
    numeric = set(numeric)
    cell = lambda tag, i, c: f'<{tag} class="num">{c}</{tag}>' if i in numeric else f"<{tag}>{c}</{tag}>"  # noqa: E731
    body = []
    for r, row in enumerate(rows):
        detail = details[r] if details else ""
        cls = f'{row_classes[r] if row_classes else ""}{" has-detail" if detail else ""}'.strip()
        body.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>")
        if detail:
            body.append(f'<tr class="detail {cls}"><td colspan="{len(headers)}">{detail}</td></tr>')
    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def header(report: dict) -> str:
    target = report.get("target") or {}
    final, data = report.get("final") or {}, report.get("data") or {}
    facts = [("targets" if len(target_names(report)) > 1 else "target", ", ".join(target_names(report))),
             ("runtime", ", ".join(dict.fromkeys(t.get("runtime", "–") for t in report.get("targets") or [target]))),
             ("created", report.get("created", "–")), ("seed", report.get("seed", "–")),
             ("device", report.get("device", "–")), ("wall time", fmt(report.get("seconds"), lambda v: f"{v:.1f} s")),
             ("dataset", f"{data.get('dataset', '–')} ({data.get('train', '?')} / {data.get('val', '?')} / "
                         f"{data.get('test', '?')})"),
             ("final val accuracy", fmt(final.get("val_accuracy"), pct)),
             ("final test accuracy", fmt(final.get("test_accuracy"), pct)),
             ("config hash", str(report.get("config_hash", "–"))[:16])]
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    versions = " · ".join(f"{esc(k)} {esc(v)}" for k, v in (report.get("versions") or {}).items())
    versions += f" · config hash {esc(report.get('config_hash', '–'))}"
    return (f'<header><h1>{esc(report.get("name", "compress run"))}</h1><p class="sub">compress report · '
            f'{esc(target.get("description", target.get("name", "")))} · pipeline <code>{esc(report.get("pipeline", "–"))}'
            f'</code></p></header><section><h2>Run</h2><dl class="facts">{items}</dl>'
            f'<div class="versions">{versions}</div></section>')


def deploy_section(report: dict) -> str:
    matrix = deployments(report)
    if len(matrix) > 1:
        return matrix_section(matrix)
    deploy = next(iter(matrix.values()))
    if not deploy:
        reasons = "".join(f"<li><code>{esc(artifact_name(a))}</code>: {esc(a.get('status', '?'))} — "
                          f"{esc(a.get('reason') or 'no reason recorded')}</li>" for a in report.get("artifacts") or [])
        return (f'<section class="deploy none"><h2>Deploy: nothing deployable</h2>'
                f'<p>Every artifact was rejected or failed.</p><ul>{reasons}</ul></section>')
    bundle = (f"<p>Build on the device from <code>{esc(deploy['bundle'])}</code>.</p>" if deploy.get("bundle") else "")
    variant = f" of {esc(deploy['variant'])}" if deploy.get("variant") else ""
    runtime = runtime_text(deploy)
    return (f'<section class="deploy"><h2>Deploy: <code>{esc(Path(str(deploy.get("path", ""))).name)}</code>{variant} '
            f'<span class="badge ok">{esc(deploy.get("precision", "?"))}</span></h2>'
            f'<p>{esc(deploy.get("reason", ""))}</p>{f"<p>Runtime: {esc(runtime)}</p>" if runtime else ""}'
            f'<p class="small">{esc(deploy.get("format", ""))} · <code>{esc(deploy.get("path", ""))}</code></p>'
            f'{bundle}</section>')


def runtime_text(deploy: dict) -> str:
    """The runtime settings a deployment runs with, where they come from and why; empty when not recorded."""
    runtime = deploy.get("runtime")
    if not isinstance(runtime, dict):
        return ""
    setting = runtime.get("setting")
    label = setting.get("label", "?") if isinstance(setting, dict) else "the runtime's defaults"
    return f"{label} ({runtime.get('source', '?')}): {runtime.get('reason', '')}"


def matrix_section(matrix: dict) -> str:
    """The deployment matrix: for every target, the artifact chosen across the whole model family, or none."""
    rows, classes = [], []
    for target, d in matrix.items():
        if d:
            rows.append([f"<code>{esc(target)}</code>", esc(d.get("variant") or "primary"),
                         f"<code>{esc(Path(str(d.get('path', ''))).name)}</code>", esc(d.get("precision", "–")),
                         fmt(d.get("accuracy"), pct), fmt(d.get("estimated_latency_ms"), ms), esc(d.get("reason", "")),
                         esc(runtime_text(d) or "–")])
        else:
            rows.append([f"<code>{esc(target)}</code>", "–", "–", "–", "–", "–",
                         "<b>nothing deployable: every artifact was rejected or failed</b>", "–"])
        classes.append("deployed" if d else "")
    headers = ["target", "model", "artifact", "precision", "val accuracy", "b1 on target", "why", "runtime"]
    none = " none" if not all(matrix.values()) else ""
    return (f'<section class="deploy{none}"><h2>Deployment matrix</h2>{table(headers, rows, [4, 5], classes)}'
            f'<p class="small">Per target: the most accurate model of the family with an artifact within every budget '
            f'of the target, and of its artifacts the fastest.</p></section>')


def variant_section(report: dict) -> str:
    """The models of the stages' families besides the primary one."""
    variants = [v for v in report.get("variants") or [] if isinstance(v, dict) and isinstance(v.get("metrics"), dict)]
    if not variants:
        return ""
    rows = [[f"<code>{esc(v.get('name', '?'))}</code>", esc(v.get("stage", "–")), fmt(v["metrics"].get("params"), lambda x: f"{x:,}"),
             fmt(v["metrics"].get("macs"), si), fmt(v["metrics"].get("size_bytes"), size),
             fmt(v["metrics"].get("val_accuracy"), pct)] for v in variants]
    body = table(["variant", "stage", "params", "MACs", "size", "val accuracy"], rows, range(2, 6))
    return f"<section><h2>Model family</h2>{body}{family_notes(report)}</section>"


def family_notes(report: dict) -> str:
    """What family stages say beyond the table: the model chosen for each target, layers kept at full width."""
    notes = []
    for s in report.get("stages") or []:
        m = s.get("metrics") if isinstance(s, dict) and isinstance(s.get("metrics"), dict) else {}
        if isinstance(m.get("chosen"), dict) and m["chosen"]:
            picks = ", ".join(f"{esc(t)}: <code>{esc(n)}</code>" for t, n in m["chosen"].items())
            notes.append(f"<p>{esc(stage_label(s))} chose, per target: {picks}.</p>")
        if isinstance(m.get("fixed_layers"), dict) and m["fixed_layers"]:
            fixed = ", ".join(f"<code>{esc(n)}</code> ({esc(why)})" for n, why in m["fixed_layers"].items())
            notes.append(f"<p>{esc(stage_label(s))} kept at full width: {fixed}.</p>")
        if isinstance(m.get("scenarios"), dict) and m["scenarios"]:
            notes.append(assembly_table(stage_label(s), m["scenarios"]))
    return "".join(notes)


def assembly_table(label: str, scenarios: dict) -> str:
    """A factory stage's scenarios: budget, cost, accuracy and wall time of the assembly, the prefix rule and the search."""
    rows = []
    for name, m in scenarios.items():
        if not isinstance(m, dict):
            continue
        budget, prefix, search = (m.get(k) if isinstance(m.get(k), dict) else {} for k in ("budget", "prefix", "search"))
        rows.append([f"<code>{esc(name)}</code>", f"{esc(budget.get('kind', '?'))} {fmt(budget.get('value'), lambda v: f'{v:.4g}')}",
                     fmt(m.get("cost"), lambda v: f"{v:.4g}"), fmt(m.get("accuracy"), pct), fmt(m.get("assembly_seconds"), lambda v: f"{v:.2f} s"),
                     fmt(prefix.get("accuracy"), pct), fmt(search.get("accuracy"), pct), fmt(search.get("seconds"), lambda v: f"{v:.1f} s")])
    body = table(["scenario", "budget", "cost", "accuracy", "assembled in", "prefix rule", "search", "search time"], rows, range(2, 8))
    return f"<p>{esc(label)} assembled, without search (accuracy on each scenario's classes):</p>{body}"


def stage_section(report: dict) -> str:
    headers = ["stage", "type", "status", "params", "non-zero", "MACs", "size", "sparsity", "val accuracy", "time"]
    rows = []
    for s in report.get("stages") or []:
        m = s.get("metrics") or {}
        rows.append([esc(stage_label(s)), esc(s.get("type", "–")), esc(s.get("status", "–")),
                     fmt(m.get("params"), lambda v: f"{v:,}"), fmt(m.get("nonzero_params"), lambda v: f"{v:,}"),
                     fmt(m.get("macs"), si), fmt(m.get("size_bytes"), size), fmt(m.get("sparsity"), lambda v: f"{v:.1%}"),
                     fmt(m.get("val_accuracy"), pct), fmt(m.get("seconds"), lambda v: f"{v:.1f} s")])
    body = table(headers, rows, range(3, 10)) if rows else '<p class="empty">No stages.</p>'
    return f"<section><h2>Stages</h2>{body}</section>"


def batch_keys(artifacts: list[dict]) -> list[str]:
    keys = {str(k) for a in artifacts for k in (a.get("latency_ms") or {})}
    return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)) or ["1", "32"]


def artifact_section(report: dict) -> str:
    matrix, several = deployments(report), len(target_names(report)) > 1
    parts = []
    for target in target_names(report):
        artifacts = of_target(report, target)
        batches = batch_keys(artifacts)
        deployed = str((matrix.get(target) or {}).get("path", ""))
        headers = ["artifact", "format", "precision", "size", "accuracy", "max|diff|", "top-1 agree",
                   *(f"b{b} here" for b in batches), "b1 on target", "status"]
        rows = [artifact_cells(a, batches) for a in artifacts]
        classes = ["deployed" if deployed and a.get("path") == deployed else "" for a in artifacts]
        details = [" · ".join(([reason(a)] if a.get("reason") else []) + [esc(n) for n in a.get("notes") or []]) for a in artifacts]
        body = table(headers, rows, range(3, 8 + len(batches)), classes, details) if rows else '<p class="empty">No artifacts.</p>'
        parts.append(f"<h3>{esc(target)}</h3>{body}" if several else body)
    return (f'<section><h2>Artifacts</h2>{"".join(parts)}<p class="small">Parity and accuracy: ONNX Runtime against '
            f'torch on the validation split (accuracy change vs torch in brackets). "here": median measured on this '
            f'machine; "on target": batch 1, measured when the target is this machine, otherwise estimated by the cost '
            f'model. The highlighted row is deployed; reasons and notes are under each row.</p></section>')


def reason(a: dict) -> str:
    """Why an artifact was rejected or failed stands out; a bundle's reason is plain advice."""
    return f"<b>{esc(a['reason'])}</b>" if a.get("status") in ("rejected", "failed") else esc(a["reason"])


def artifact_cells(a: dict, batches: list[str]) -> list[str]:
    parity, latency = a.get("parity") or {}, a.get("latency_ms") or {}
    status = str(a.get("status", "?"))
    source = {"measured": "meas.", "estimated": "est."}.get(a.get("latency_source"), a.get("latency_source"))
    accuracy = fmt(a.get("accuracy"), pct)
    if is_num(a.get("accuracy")) and is_num(a.get("accuracy_drop")):
        accuracy += f' <span class="small">({round(-a["accuracy_drop"], 4) + 0.0:+.2%})</span>'
    return [f"<code>{esc(artifact_name(a))}</code>", f'<span class="nowrap">{esc(a.get("format", "–"))}</span>',
            f'<span class="nowrap">{esc(a.get("precision", "–"))}</span>',
            fmt(a.get("size_bytes") or None, size), accuracy, fmt(parity.get("max_abs_diff"), lambda v: f"{v:.1e}"),
            fmt(parity.get("top1_agreement"), pct), *(fmt(latency.get(b), ms) for b in batches),
            fmt(a.get("estimated_latency_ms"), lambda v: f'{ms(v)} <span class="small">({esc(source)})</span>'),
            f'<span class="badge {esc(status)}">{esc("deployable" if status == "ok" else status)}</span>']


def figure(caption: str, body: str, legend: str = "") -> str:
    return f"<figure><figcaption>{esc(caption)}</figcaption>{body}{legend}</figure>"


def pareto_legend(points: list[Point]) -> str:
    items = [f'<span><i class="dot" style="background:{ACCENT};border:2px solid {FRONT}"></i>on the Pareto front</span>',
             f'<span><i class="dot" style="background:#fff;border:2px solid {ACCENT}"></i>dominated</span>']
    if any(p.group == "variant" for p in points):
        items.append(f'<span><i class="dot" style="background:{VARIANT}"></i>variant / sub-network</span>')
    if not all(p.eligible for p in points):
        items.append(f'<span><i class="dot" style="background:#fff;border:2px solid {MUTED}"></i>rejected or failed '
                     f'(off the front)</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def pareto_section(report: dict) -> str:
    plots, names = [], target_names(report)
    latency = [(f"Accuracy vs latency on {name if len(names) > 1 else 'the target'} (artifacts)",
                latency_points(of_target(report, name)), f"batch-1 latency on {name if len(names) > 1 else 'target'} (ms)",
                "num", ms) for name in names]
    for caption, points, xlabel, xunit, xfmt in (
            *latency,
            ("Accuracy vs MACs (stages and variants)", macs_points(report), "MACs per example", "si",
             lambda v: f"{si(v)} MACs")):
        body = pareto_svg(points, caption, xlabel, xunit, xfmt) if points else '<p class="empty">No points to plot.</p>'
        plots.append(figure(caption, body, pareto_legend(points) if points else ""))
    return f'<section><h2>Pareto plots</h2><div class="plots">{"".join(plots)}</div></section>'


def pruning_section(report: dict) -> str:
    """Schedule and per-layer sparsity of every stage that records them; empty when none does."""
    plots = []
    for s in report.get("stages") or []:
        m, label = s.get("metrics") or {}, stage_label(s)
        schedule = [e for e in m.get("schedule") or [] if isinstance(e, (list, tuple)) and len(e) == 2
                    and is_num(e[0]) and is_num(e[1])]
        if schedule:
            plots.append(figure(f"Pruning schedule: {label}", schedule_svg(schedule, f"Pruning schedule of {label}")))
        layers = {str(k): v for k, v in (m.get("layer_sparsity") or {}).items() if is_num(v)}
        if layers:
            plots.append(figure(f"Per-layer sparsity: {label}", bars_svg(layers, f"Per-layer sparsity of {label}")))
    return f'<section><h2>Pruning</h2><div class="plots">{"".join(plots)}</div></section>' if plots else ""


def profile_section(report: dict) -> str:
    profile = report.get("profile")
    if not isinstance(profile, dict):
        return ""
    rows = []
    classes = []
    for r in profile.get("results") or []:
        fastest = r.get("fastest") if isinstance(r.get("fastest"), dict) else {}
        for row in r.get("settings") or [{"label": "–", "batches": r.get("batches")}]:
            for batch, t in (row.get("batches") or {}).items():
                rows.append([f"<code>{esc(r.get('file', '?'))}</code>", esc(r.get("precision") or "–"),
                             esc(r.get("provider", "–")), esc(row.get("label", "?")), esc(batch), fmt(t.get("p50_ms"), ms),
                             fmt(t.get("p90_ms"), ms), fmt(t.get("p99_ms"), ms),
                             fmt(t.get("throughput_per_s"), lambda v: f"{v:,.0f}/s"),
                             fmt(r.get("peak_rss_mb"), lambda v: f"{v:.0f} MB")])
                classes.append("deployed" if fastest.get(batch) == row.get("label") else "")
    headers = ["file", "precision", "provider", "setting", "batch", "p50", "p90", "p99", "throughput", "peak RSS"]
    body = table(headers, rows, range(4, 10), classes) if rows else '<p class="empty">No measurements.</p>'
    machine = profile.get("machine") or {}
    skipped = "".join(f"<li>{esc(s)}</li>" for s in profile.get("skipped") or [])
    failed = "".join(f"<li><code>{esc(f.get('file', '?'))}</code>: <b>{esc(f.get('reason', ''))}</b></li>"
                     for f in profile.get("failed") or [] if isinstance(f, dict))
    facts = [f"target {profile.get('target', '?')}", machine.get("platform"), machine.get("processor"),
             f"{profile['runs']} runs" if profile.get("runs") else None]
    return (f'<section><h2>Measured on the device</h2><p class="small">{esc(" · ".join(f for f in facts if f))}</p>'
            f'{body}{f"<h3>Failed</h3><ul>{failed}</ul>" if failed else ""}'
            f'{f"<h3>Skipped</h3><ul>{skipped}</ul>" if skipped else ""}</section>')


def render_html(report: dict) -> str:
    """The whole page for one report.json dict; optional keys may be missing."""
    sections = [header(report), deploy_section(report), stage_section(report), variant_section(report),
                artifact_section(report), pareto_section(report), pruning_section(report), profile_section(report)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(report.get("name", "compress"))} · compress report</title><style>{CSS}</style></head>'
            f'<body><main>{"".join(sections)}</main></body></html>\n')
