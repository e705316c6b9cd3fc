"""Self-contained HTML reports: summary table, a histogram per metric, a gallery of pairs.

The page needs no network: CSS and JavaScript are inline, histograms are inline SVG, and pictures
are PNG data URIs. Every text that comes from the data (file names, paths, reasons) is HTML-escaped.
The gallery shows each pair's pictures side by side; clicking a thumbnail enlarges it, and a filter
box hides the cards whose name does not contain the text typed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from .metrics import METRICS
from .report import format_value


@dataclass(frozen=True)
class Panel:
    """One picture of a card: its thumbnail and enlarged view (data URIs), or why it has none."""

    label: str
    thumb: str | None
    full: str | None
    caption: str
    missing: str = ""
    scale: tuple[float, float] | None = None  # a heat map's colour scale (low, high), exactly


@dataclass(frozen=True)
class Card:
    """One pair in the gallery: its pictures side by side and its numbers."""

    name: str
    status: str
    values: list[tuple[str, str]]  # (label, value as text)
    panels: list[Panel]
    notes: str = ""
    lines: list[str] = field(default_factory=list)  # extra lines, e.g. the metrics that got worse


@dataclass(frozen=True)
class Page:
    """Everything an HTML report shows; :func:`render_page` lays it out."""

    title: str
    header: list[str]  # lines under the title
    sections: list[tuple[str, str]]  # (heading, HTML already escaped) before the gallery
    gallery_intro: str
    cards: list[Card]


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> str:
    """A table, every cell escaped; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if index >= numeric_from else "text"}">{_e(cell)}</td>'
            for index, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


HIST_WIDTH, HIST_HEIGHT, HIST_BINS = 300, 150, 20


def histogram_svg(metric: str, values: Sequence[float], bins: int = HIST_BINS) -> str:
    """An inline SVG histogram of the finite ``values`` (``bins`` equal bins from min to max);
    infinite values (identical pairs' PSNR) are counted in a line under it."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    infinite = sum(1 for v in values if isinstance(v, (int, float)) and math.isinf(v))
    arrow = {"higher": "↑ higher is better", "lower": "↓ lower is better"}[METRICS[metric].better]
    title = f"{metric} ({arrow}), {len(finite)} pairs"
    if not finite:
        return f'<figure class="hist"><figcaption>{_e(metric)}: no finite values</figcaption></figure>'
    low, high = min(finite), max(finite)
    width = (high - low) / bins if high > low else 1.0
    counts = [0] * bins
    for value in finite:
        counts[min(int((value - low) / width), bins - 1) if high > low else 0] += 1
    top = max(counts)
    left, right, upper, lower = 30, 8, 14, 30
    plot_w, plot_h = HIST_WIDTH - left - right, HIST_HEIGHT - upper - lower
    bar_w = plot_w / bins
    bars = []
    for index, count in enumerate(counts):
        if not count:
            continue
        bar_h = plot_h * count / top
        start, stop = low + index * width, low + (index + 1) * width
        bars.append(
            f'<rect x="{left + index * bar_w + 0.5:.1f}" y="{upper + plot_h - bar_h:.1f}" '
            f'width="{bar_w - 1:.1f}" height="{bar_h:.1f}"><title>{_e(format_value(start))} to '
            f"{_e(format_value(stop))}: {count} pair{'s' if count != 1 else ''}</title></rect>"
        )
    axis_y = upper + plot_h
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {HIST_WIDTH} {HIST_HEIGHT}" '
        f'width="{HIST_WIDTH}" height="{HIST_HEIGHT}" role="img" aria-label="{_e(title)}">'
        f"<title>{_e(title)}</title>"
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" class="axis"/>'
        f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{axis_y}" class="axis"/>'
        + "".join(bars)
        + f'<text x="{left}" y="{axis_y + 14}" text-anchor="start">{_e(format_value(low))}</text>'
        f'<text x="{left + plot_w}" y="{axis_y + 14}" text-anchor="end">{_e(format_value(high))}</text>'
        f'<text x="{left - 4}" y="{upper + 4}" text-anchor="end">{top}</text>'
        f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>'
        f'<text x="{left + plot_w / 2:.1f}" y="{axis_y + 26}" text-anchor="middle">{_e(metric)}</text>'
        "</svg>"
    )
    note = f"; {infinite} pair(s) at inf not shown" if infinite else ""
    return f'<figure class="hist">{svg}<figcaption>{_e(title)}{_e(note)}</figcaption></figure>'


def _panel_html(panel: Panel) -> str:
    if panel.thumb is None:
        return (
            f'<figure class="panel missing"><div class="none">{_e(panel.missing)}</div>'
            f"<figcaption>{_e(panel.label)}</figcaption></figure>"
        )
    scale = f' data-low="{panel.scale[0]!r}" data-high="{panel.scale[1]!r}"' if panel.scale else ""
    return (
        f'<figure class="panel"><img class="thumb" src="{_e(panel.thumb)}" data-full="{_e(panel.full or "")}" '
        f'data-caption="{_e(panel.caption)}" alt="{_e(panel.caption)}"{scale} tabindex="0">'
        f"<figcaption>{_e(panel.label)}</figcaption></figure>"
    )


def _card_html(rank: int, card: Card) -> str:
    values = "".join(
        f'<div class="value"><span class="metric">{_e(label)}</span> <b>{_e(value)}</b></div>'
        for label, value in card.values
    )
    lines = "".join(f"<li>{_e(line)}</li>" for line in card.lines)
    notes = f'<p class="notes">{_e(card.notes)}</p>' if card.notes else ""
    return (
        f'<section class="card status-{_e(card.status)}" data-name="{_e(card.name.lower())}">'
        f'<h3><span class="rank">#{rank}</span> <span class="name">{_e(card.name)}</span></h3>'
        f'<div class="panels">{"".join(_panel_html(panel) for panel in card.panels)}</div>'
        + (f'<ul class="lines">{lines}</ul>' if lines else "")
        + (f'<div class="values">{values}</div>' if values else "")
        + notes
        + "</section>"
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1a1a1a;background:#fafafa}
h1{font-size:1.5em;margin:0 0 .3em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;margin:.1em 0}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.2em .6em;border-bottom:1px solid #e4e4e4}
th{text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.hists{display:flex;flex-wrap:wrap;gap:1em}.hist{margin:0;background:#fff;border:1px solid #e4e4e4;padding:.3em}
.hist rect{fill:#7b2382}.hist .axis{stroke:#444}.hist text{font-size:10px;fill:#333}
.hist figcaption{font-size:12px;color:#444;max-width:300px}
.controls{position:sticky;top:0;background:#fafafa;padding:.5em 0;z-index:1}
#filter{font-size:1em;padding:.3em .5em;width:22em}
#gallery{display:flex;flex-direction:column;gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card h3{margin:.1em 0 .5em;font-size:1.05em;word-break:break-all}.rank{color:#888}
.panels{display:flex;flex-wrap:wrap;gap:.8em}.panel{margin:0;text-align:center}
.panel img{max-width:200px;max-height:200px;cursor:zoom-in;border:1px solid #ccc;image-rendering:auto}
.panel figcaption{font-size:12px;color:#555}
.missing .none{width:200px;height:120px;display:flex;align-items:center;justify-content:center;
background:#f0f0f0;color:#a33;font-size:12px;padding:.5em;box-sizing:border-box;word-break:break-word}
.values{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.1em 1em;margin:.5em 0}
.value .metric{color:#555}.value b{font-weight:600;font-variant-numeric:tabular-nums}
.notes{color:#8a5a00}.lines{margin:.4em 0}.status-error,.status-unmatched{border-color:#d88}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.85);display:flex;flex-direction:column;
align-items:center;justify-content:center;z-index:10;cursor:zoom-out}
#lightbox img{height:85vh;width:auto;max-width:95vw;object-fit:contain;image-rendering:pixelated}
#lightbox p{color:#fff;margin:.6em;word-break:break-all}
[hidden]{display:none!important}
"""

SCRIPT = """
(function () {
  var box = document.getElementById('lightbox');
  var big = document.getElementById('lightbox-image');
  var caption = document.getElementById('lightbox-caption');
  function open(img) {
    big.src = img.getAttribute('data-full') || img.src;
    big.alt = img.alt;
    caption.textContent = img.getAttribute('data-caption');
    box.hidden = false;
  }
  function close() { box.hidden = true; big.removeAttribute('src'); }
  document.querySelectorAll('img.thumb').forEach(function (img) {
    img.addEventListener('click', function () { open(img); });
    img.addEventListener('keydown', function (e) { if (e.key === 'Enter') open(img); });
  });
  box.addEventListener('click', close);
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') close(); });
  var filter = document.getElementById('filter');
  var shown = document.getElementById('shown');
  var cards = Array.prototype.slice.call(document.querySelectorAll('#gallery .card'));
  function update() {
    var query = filter.value.trim().toLowerCase();
    var count = 0;
    cards.forEach(function (card) {
      var match = card.getAttribute('data-name').indexOf(query) !== -1;
      card.hidden = !match;
      if (match) count += 1;
    });
    shown.textContent = count + ' of ' + cards.length + ' shown';
  }
  if (filter) { filter.addEventListener('input', update); update(); }
})();
"""


def render_page(page: Page) -> str:
    """The whole HTML document of ``page``."""
    header = "".join(f'<p class="meta">{_e(line)}</p>' for line in page.header)
    sections = "".join(f"<h2>{_e(heading)}</h2>{body}" for heading, body in page.sections)
    cards = "".join(_card_html(rank, card) for rank, card in enumerate(page.cards, start=1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page.title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_e(page.title)}</h1>{header}{sections}"
        f"<h2>Gallery</h2><p>{_e(page.gallery_intro)}</p>"
        '<div class="controls"><input id="filter" type="search" placeholder="Filter by name" '
        'aria-label="Filter pairs by name"> <span id="shown"></span></div>'
        f'<div id="gallery">{cards}</div>'
        '<div id="lightbox" hidden><img id="lightbox-image" alt=""><p id="lightbox-caption"></p></div>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _scale_sentence(metric: str, scale, scale_mode: str) -> str:
    from .colormap import NAME
    from .maps import MAP_METRICS

    what = f"Heat maps show {metric}: {MAP_METRICS[metric]}; {NAME} colours, dark is low and bright is high"
    if scale_mode == "shared" and scale is not None:
        return f"{what}, on one scale for every map, {scale.text()}."
    return f"{what}, each map on its own scale (stated under it)."


def eval_page(
    frame,
    summary: dict,
    info,
    cards: list[Card],
    sort_metric: str,
    limit: int,
    map_metric: str,
    scale,
    scale_mode: str,
) -> Page:
    """The page of ``lossctl eval --html``: the report's summary and histograms over every pair, the
    pairs not computed with their reasons, and the gallery ``cards`` (the worst pairs first)."""
    from .report import SUMMARY_HEADER, _convention_text, _counts_line, _summary_line, _summary_rows

    ok = frame[frame["status"] == "ok"]
    summary_html = table_html(SUMMARY_HEADER, _summary_rows(summary))
    if (summary_line := _summary_line(summary)) is not None:
        summary_html += f"<p>{_e(summary_line)}</p>"
    histograms = "".join(histogram_svg(name, ok[name].tolist()) for name in info.metrics)
    sections = [("Summary", summary_html), ("Distributions", f'<div class="hists">{histograms}</div>')]
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        rows = [[row.name, row.status, row.error] for row in failed.itertuples(index=False)]
        sections.append(
            (f"Pairs not computed ({len(failed)})", table_html(["name", "status", "reason"], rows, 3))
        )
    arrow = ARROWS_TEXT[METRICS[sort_metric].better]
    intro = (
        f"The {len(cards)} worst of {len(ok)} computed pairs by {sort_metric} ({arrow}), worst first "
        f"(--html-limit {limit}). {_without_values(ok, sort_metric)}The summary and the histograms cover "
        f"all {len(ok)} computed pairs. "
        + (
            _scale_sentence(map_metric, scale, scale_mode)
            if map_metric in info.metrics
            else "Segmentation pairs have no heat map."
        )
        + " Click a picture to enlarge it."
    )
    header = [
        f"{_counts_line(frame, info)} — {_convention_text(info)}",
        f"predictions {info.pred_root}, ground truth {info.gt_root}",
        f"device {info.device}, {info.precision}, lossctl {info.lossctl_version}, torch {info.torch_version}",
    ]
    return Page("lossctl eval", header, sections, intro, cards)


ARROWS_TEXT = {"higher": "higher is better", "lower": "lower is better"}


def _without_values(ok, metric: str) -> str:
    """A sentence on the computed pairs with no ``metric`` value, which the gallery puts last."""
    missing = int(ok[metric].isna().sum())
    if not missing:
        return ""
    if missing == len(ok):
        return f"No pair has a {metric} value (see their notes), so they are in name order. "
    return f"The {missing} pairs with no {metric} value come last, in name order. "


def compare_page(comparison, cards: list[Card], map_metric: str, scale, scale_mode: str, worse: int) -> Page:
    """The page of ``lossctl compare --html``: the change of each mean, the regressions and other
    changes as the terminal shows them, and a gallery of the pairs that got worse (``worse`` of them;
    ``cards`` may hold fewer), before and after side by side."""
    from .compare import REGRESSION_HEADER, SUMMARY_HEADER, other_lines, regression_rows, summary_rows

    sections = [(f"Means {comparison.means_scope}", table_html(SUMMARY_HEADER, summary_rows(comparison)))]
    rows = regression_rows(comparison)
    if rows:
        sections.append(("Regressions beyond tolerance, worst first", table_html(REGRESSION_HEADER, rows, 2)))
    if lines := other_lines(comparison):
        sections.append(
            ("Other changes", "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>")
        )
    intro = (
        f"{len(cards)} of the {worse} pairs that got worse, worst first (--html-limit): ground truth, "
        "before (BASE) and after (NEW) side by side. "
        + _scale_sentence(map_metric, scale, scale_mode)
        + " Click a picture to enlarge it."
    )
    if cards and comparison.base.params is None and comparison.new.params is None:
        intro += (
            " Neither report records its parameters (CSV without its .meta.json sidecar), so the maps"
            " are drawn under the default convention and parameters: where the runs used others"
            " (--crop-border, --y-channel, a preset), a map's mean is not the reported value."
        )
    header = [comparison.line(), f"BASE {comparison.base.path}", f"NEW {comparison.new.path}"]
    return Page("lossctl compare", header, sections, intro, cards)
