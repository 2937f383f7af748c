"""``cohort.html``: one self-contained page over a cohort's table.

- histograms (inline SVG) of LVEF, RVEF, LVEDV, LVESV, RVEDV and LV mass, with approximate adult normal ranges
  shaded where the tool carries a published range (`REFERENCE_RANGES`, sources in `REFERENCES`);
- a table of every exam, sortable by clicking a column header, failed exams first, then exams with QC warnings,
  then exams outside a normal range; each analysed exam links to ``exams/<id>/report.html``;
- small mid-ventricular ED/ES thumbnails (image and overlay) of the first `MAX_THUMBNAIL_EXAMS` exams to review.

The page loads nothing: CSS and script are inline and allowed by a Content-Security-Policy of their own hashes
(``default-src 'none'``), pictures are data URIs. It names exams only by their ids, which come from the paths the user
chose; no field of the images' headers is shown.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

__all__ = ["MEASURES", "REFERENCE_RANGES", "exam_thumbnail", "render_cohort_html", "review_of"]

# (metrics key, label, unit) of the histograms, in page order
MEASURES = (
    ("lv_ef_pct", "LVEF", "%"),
    ("rv_ef_pct", "RVEF", "%"),
    ("lv_edv_ml", "LVEDV", "ml"),
    ("lv_esv_ml", "LVESV", "ml"),
    ("rv_edv_ml", "RVEDV", "ml"),
    ("lv_mass_g", "LV mass", "g"),
)

# Approximate adult normal ranges (SSFP cine, not indexed to body size, men and women pooled: the women's lower and
# the men's upper limit of mean +/- 2 SD), for orientation only; the reference tables by sex, age and body surface
# area are in Kawel-Boehm et al. 2020. key -> (low, high, source key in REFERENCES).
REFERENCE_RANGES: dict[str, tuple[float, float, str]] = {
    # Hudsmith 2005: LVEDV 160 +/- 29 ml (men), 135 +/- 26 ml (women)
    "lv_edv_ml": (83.0, 218.0, "hudsmith"),
    # Hudsmith 2005: LVESV 50 +/- 16 ml (men), 42 +/- 12 ml (women)
    "lv_esv_ml": (18.0, 82.0, "hudsmith"),
    # Hudsmith 2005: RVEDV 190 +/- 33 ml (men), 148 +/- 35 ml (women)
    "rv_edv_ml": (78.0, 256.0, "hudsmith"),
    # Kawel-Boehm 2015 pooled SSFP values: LVEF 67 +/- 5 % (men and women)
    "lv_ef_pct": (57.0, 77.0, "kawel2015"),
    # Kawel-Boehm 2015 pooled SSFP values: LV mass 134 +/- 21 g (men), 98 +/- 21 g (women)
    "lv_mass_g": (56.0, 176.0, "kawel2015"),
}
REFERENCES = {
    "kawel2020": "Kawel-Boehm N, Hetzel SJ, Ambale-Venkatesh B, et al. Reference ranges (\u201cnormal values\u201d) "
    "for cardiovascular magnetic resonance (CMR) in adults and children: 2020 update. J Cardiovasc Magn Reson. "
    "2020;22:87. doi:10.1186/s12968-020-00683-3",
    "hudsmith": "Hudsmith LE, Petersen SE, Francis JM, Robson MD, Neubauer S. Normal human left and right ventricular "
    "and left atrial dimensions using steady state free precession magnetic resonance imaging. J Cardiovasc Magn "
    "Reson. 2005;7:775-782 (one of the adult studies of Kawel-Boehm et al. 2020, Table 1).",
    "kawel2015": "Kawel-Boehm N, Maceira A, Valsangiacomo-Buechel ER, et al. Normal values for cardiovascular "
    "magnetic resonance in adults and children. J Cardiovasc Magn Reson. 2015;17:29 (the review that the 2020 "
    "update extends).",
}
MAX_THUMBNAIL_EXAMS = 100
THUMB_HEIGHT = 88
TEXT_SHOWN = 140  # characters of an exam's warnings shown before the rest is folded

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem auto;max-width:1200px;padding:0 1rem;
color:#1b1b1b}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.note{color:#555;font-size:.85rem}
.counts span{display:inline-block;margin-right:1.2rem}
.hists{display:flex;flex-wrap:wrap;gap:.8rem}
.hists figure{margin:0;border:1px solid #e2e2e2;border-radius:4px;padding:.3rem}
.hists figcaption{font-size:.85rem;font-weight:600;text-align:center}
svg text{font-size:10px;fill:#333}
table{border-collapse:collapse;font-size:.82rem;width:100%}
th,td{border-bottom:1px solid #e6e6e6;padding:.25rem .4rem;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fde8e8}tr.qc td{background:#fff6e0}tr.range td{background:#f1f6ff}
td.text{max-width:32rem;color:#444}
summary{cursor:pointer}
.thumbs{display:flex;flex-direction:column;gap:.6rem}
.thumbs figure{margin:0}.thumbs figcaption{font-size:.8rem}
.thumbs img{image-rendering:pixelated;border:1px solid #ccc}
"""

_SCRIPT = """
(function () {
  function key(cell, numeric) {
    var v = cell.getAttribute("data-v");
    if (v === null || v === "") { return null; }
    return numeric ? parseFloat(v) : v.toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest("table");
    var body = table.tBodies[0];
    var column = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[column], numeric), y = key(b.cells[column], numeric);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      return x < y ? -direction : x > y ? direction : 0;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("th[data-type]"), function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
})();
"""

# review order: failed, QC warnings, outside a normal range, the rest
REVIEW_RANK = {"failed": 0, "qc": 1, "range": 2, "": 3}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def outside_ranges(row: Mapping[str, Any]) -> list[str]:
    """Labels of the measures of `row` outside their approximate normal range."""
    outside = []
    for key, label, _ in MEASURES:
        low, high, _ = REFERENCE_RANGES.get(key, (-math.inf, math.inf, ""))
        value = _number(row.get(key))
        if value is not None and not low <= value <= high:
            outside.append(label)
    return outside


def review_of(row: Mapping[str, Any]) -> str:
    """``failed``, ``qc`` (QC warnings), ``range`` (a measure outside its normal range) or ``""``."""
    if row.get("status") != "done":
        return "failed"
    if row.get("n_qc_warnings"):
        return "qc"
    return "range" if outside_ranges(row) else ""


# -------------------------------------------------------------------------------------------------------------------
# Thumbnails (made by the worker while the exam is in memory)
# -------------------------------------------------------------------------------------------------------------------


def exam_thumbnail(
    image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], ed: int, es: int, height: int = THUMB_HEIGHT
) -> bytes:
    """PNG strip of the mid-ventricular slice: ED image, ED overlay, ES image, ES overlay (ES left out when it is
    ED), cropped around the heart.

    Args:
        image: (X, Y, Z, T) intensities; labels: (X, Y, Z, T) labels on the same grid; spacing: (x, y, ...) in mm.
    """
    from PIL import Image

    from cinema.analysis.report import heart_box, mid_ventricular_slice, overlay_rgb

    z = mid_ventricular_slice(labels, ed)
    box = heart_box(labels[:, :, z], margin=10)
    planes = np.asarray(image[box[0], box[1], z], dtype=np.float32)
    low, high = np.percentile(planes, [1.0, 99.5])
    window = (float(low), float(max(high, low + 1e-6)))
    width = max(1, round(height * planes.shape[0] * float(spacing[0]) / (planes.shape[1] * float(spacing[1]))))
    tiles = []
    for frame in dict.fromkeys((ed, es)):
        plane, label = planes[..., frame], labels[box[0], box[1], z, frame]
        for shown in (np.zeros_like(label), label):
            tile = Image.fromarray(overlay_rgb(plane, shown, window))
            tiles.append(np.asarray(tile.resize((width, height), Image.Resampling.BILINEAR)))
            tiles.append(np.full((height, 3, 3), 255, np.uint8))
    strip = Image.fromarray(np.concatenate(tiles[:-1], axis=1))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------------------------------
# The page
# -------------------------------------------------------------------------------------------------------------------


def _nice_step(span: float, n: int) -> float:
    raw = span / max(n, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def histogram_svg(values: Sequence[float], label: str, unit: str, reference: tuple[float, float] | None) -> str:
    """An inline SVG histogram of `values` with the normal range (when given) shaded behind the bars."""
    width, height, left, bottom, top = 300, 150, 30, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(label)} histogram">'
    ]
    if data.size == 0:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no values</text></svg>')
        return "".join(parts)
    low, high = float(data.min()), float(data.max())
    if reference is not None:
        low, high = min(low, reference[0]), max(high, reference[1])
    if high - low < 1e-9:
        low, high = low - 1.0, high + 1.0
    step = _nice_step(high - low, 20)
    start = math.floor(low / step) * step
    n_bins = max(1, math.ceil((high - start) / step + 1e-9))
    if start + n_bins * step <= high:
        n_bins += 1
    edges = start + step * np.arange(n_bins + 1)
    counts, _ = np.histogram(data, bins=edges)
    x0, x1 = float(edges[0]), float(edges[-1])

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * plot_w

    peak = max(int(counts.max()), 1)
    if reference is not None:
        a, b = sx(reference[0]), sx(reference[1])
        parts.append(
            f'<rect x="{a:.1f}" y="{top}" width="{b - a:.1f}" height="{plot_h}" fill="#d9f0d9">'
            f"<title>approximate normal range {reference[0]:g}-{reference[1]:g} {html.escape(unit)}</title></rect>"
        )
    for count, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
        if count == 0:
            continue
        bar_h = count / peak * plot_h
        parts.append(
            f'<rect x="{sx(lo) + 0.5:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(sx(hi) - sx(lo) - 1, 1):.1f}" '
            f'height="{bar_h:.1f}" fill="#0072b2"><title>{lo:g} to {hi:g} {html.escape(unit)}: {count} exam(s)'
            "</title></rect>"
        )
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#555"/>')
    tick = _nice_step(x1 - x0, 5)
    value = math.ceil(x0 / tick) * tick
    while value <= x1 + 1e-9:
        x = sx(value)
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 3}" stroke="#555"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{value:g}</text>')
        value += tick
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>')
    parts.append("</svg>")
    return "".join(parts)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


_TABLE_COLUMNS = (
    # (header, row key or None, type, digits)
    ("Exam", "exam_id", "text", 0),
    ("Status", "status", "text", 0),
    ("Review", "review_rank", "num", 0),
    ("LVEF %", "lv_ef_pct", "num", 1),
    ("RVEF %", "rv_ef_pct", "num", 1),
    ("LVEDV ml", "lv_edv_ml", "num", 1),
    ("LVESV ml", "lv_esv_ml", "num", 1),
    ("RVEDV ml", "rv_edv_ml", "num", 1),
    ("LV mass g", "lv_mass_g", "num", 1),
    ("Confidence", "model_confidence", "num", 3),
    ("QC warnings", "n_qc_warnings", "num", 0),
    ("Warnings / error", "text", "text", 0),
)


def _text_cell(value: str) -> str:
    """The warnings (or error) of an exam: the first sentence shown, the rest folded."""
    shown = html.escape(value)
    if len(value) > TEXT_SHOWN:
        cut = value.rfind(" ", 0, TEXT_SHOWN)
        head = value[: cut if cut > 0 else TEXT_SHOWN]
        shown = f"<details><summary>{html.escape(head)} \u2026</summary>{html.escape(value[len(head) :])}</details>"
    return f'<td class="text" data-v="{html.escape(value)}">{shown}</td>'


def _row_html(row: Mapping[str, Any], review: str) -> str:
    exam_id = str(row["exam_id"])
    outside = outside_ranges(row) if row.get("status") == "done" else []
    text = row.get("error") if review == "failed" else row.get("qc_warnings")
    review_text = {"failed": "failed", "qc": "QC warnings", "range": "", "": ""}[review]
    if outside:
        review_text = "; ".join(t for t in (review_text, "outside normal range: " + ", ".join(outside)) if t)
    cells = []
    for _, key, kind, digits in _TABLE_COLUMNS:
        if key == "exam_id":
            shown = html.escape(exam_id)
            if row.get("status") == "done":
                shown = f'<a href="exams/{quote(exam_id)}/report.html">{shown}</a>'
            cells.append(f'<td data-v="{html.escape(exam_id)}">{shown}</td>')
        elif key == "review_rank":
            cells.append(f'<td data-v="{REVIEW_RANK[review]}">{html.escape(review_text)}</td>')
        elif key == "text":
            cells.append(_text_cell(" ".join(str(text or "").split())))
        elif kind == "num":
            number = _number(row.get(key))
            shown = "" if number is None else (str(int(number)) if digits == 0 else f"{number:.{digits}f}")
            cells.append(f'<td class="num" data-v="{"" if number is None else repr(number)}">{shown}</td>')
        else:
            value = str(row.get(key) or "")
            cells.append(f'<td data-v="{html.escape(value)}">{html.escape(value)}</td>')
    return f'<tr class="{review}">{"".join(cells)}</tr>'


def render_cohort_html(
    rows: Sequence[Mapping[str, Any]],
    thumbnail: Callable[[str], bytes | None] = lambda exam_id: None,
    *,
    title: str = "CineMA cohort",
) -> str:
    """The page as one HTML string.

    Args:
        rows: the cohort table's rows (`cinema.cohort.table.record_row`).
        thumbnail: exam id -> its thumbnail PNG (`exam_thumbnail`) or None.
    """
    from cinema import __version__

    reviews = {str(r["exam_id"]): review_of(r) for r in rows}
    ordered = sorted(rows, key=lambda r: (REVIEW_RANK[reviews[str(r["exam_id"])]], str(r["exam_id"])))
    done = [r for r in rows if r.get("status") == "done"]
    counts = {name: sum(1 for v in reviews.values() if v == name) for name in REVIEW_RANK}
    models = sorted({str(r.get("model")) for r in rows if r.get("model")})
    versions = sorted({str(r.get("cinema_version")) for r in rows if r.get("cinema_version")})

    figures = []
    for key, label, unit in MEASURES:
        values = [v for v in (_number(r.get(key)) for r in done) if v is not None]
        reference = REFERENCE_RANGES.get(key)
        band = None if reference is None else reference[:2]
        caption = f"{label} ({unit}), n = {len(values)}"
        if band is not None:
            outside = sum(1 for v in values if not band[0] <= v <= band[1])
            caption += f"; normal \u2248 {band[0]:g}\u2013{band[1]:g}, {outside} outside"
        else:
            caption += "; no range shown"
        svg = histogram_svg(values, label, unit, band)
        figures.append(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>")

    header = "".join(
        f'<th data-type="{kind}" scope="col">{html.escape(name)}</th>' for name, _, kind, _ in _TABLE_COLUMNS
    )
    body = "".join(_row_html(r, reviews[str(r["exam_id"])]) for r in ordered)

    thumbs = []
    for row in ordered:
        if len(thumbs) >= MAX_THUMBNAIL_EXAMS:
            break
        exam_id = str(row["exam_id"])
        if reviews[exam_id] not in ("qc", "range"):
            continue
        png = thumbnail(exam_id)
        if not png:
            continue
        encoded = base64.b64encode(png).decode("ascii")
        frames = f"ED frame {row.get('ed_frame')}, ES frame {row.get('es_frame')}"
        thumbs.append(
            f'<figure><figcaption><a href="exams/{quote(exam_id)}/report.html">{html.escape(exam_id)}</a> &middot; '
            f"{html.escape(frames)} &middot; mid-ventricular slice: ED image, ED overlay, ES image, ES overlay"
            f'</figcaption><img alt="{html.escape(exam_id)} ED and ES" src="data:image/png;base64,{encoded}">'
            "</figure>"
        )
    n_review = counts["qc"] + counts["range"]
    thumbs_note = (
        f"Thumbnails of the first {len(thumbs)} of {n_review} exams to review (QC warnings first)."
        if thumbs
        else "No analysed exam to review."
    )
    used = sorted({source for _, _, source in REFERENCE_RANGES.values()})
    references = "".join(f"<li>{html.escape(REFERENCES[k])}</li>" for k in ["kawel2020", *used])
    csp = (
        f"default-src 'none'; img-src data:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_SCRIPT)}; "
        "base-uri 'none'; form-action 'none'"
    )
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">cinema {html.escape(", ".join(versions) or __version__)} &middot; model '
        f"{html.escape(', '.join(models) or 'n/a')} &middot; automatic segmentation, research use only, not a medical "
        "device: review the flagged exams before trusting the numbers.</p>",
        '<p class="counts">'
        f"<span>{len(rows)} exams</span><span>{len(done)} analysed</span><span>{counts['failed']} failed</span>"
        f"<span>{counts['qc']} with QC warnings</span><span>{counts['range']} otherwise outside a normal range</span>"
        "</p>",
        "<h2>Distributions</h2>",
        f'<div class="hists">{"".join(figures)}</div>',
        '<p class="note">Shaded: approximate adult normal ranges (SSFP cine, not indexed to body size, men and women '
        "pooled: the women's lower and the men's upper limit of mean \u00b1 2 SD), for orientation only; judge an exam "
        "against the tables by sex, age and body surface area of Kawel-Boehm et al. 2020. RVEF has no shaded range: "
        "this tool carries none it could source exactly.</p>",
        "<h2>Exams</h2>",
        '<p class="note">Click a column header to sort; the first click on Review restores the review order '
        "(failed, QC warnings, outside a normal range, the rest).</p>",
        f'<table id="exams"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>',
        "<h2>Exams to review</h2>",
        f'<p class="note">{html.escape(thumbs_note)}</p>',
        f'<div class="thumbs">{"".join(thumbs)}</div>',
        "<h2>References</h2>",
        f'<ol class="note">{references}</ol>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)
