"""Human-readable outputs of `cinema analyze`: a self-contained HTML report and an animated overlay GIF.

Images are drawn in the stored voxel order with x across and y down, which is the scanner's own display for DICOM
input (x = column, y = row). Overlays use the Okabe-Ito colour-blind-safe palette. The report only shows
whitelisted, non-identifying fields of the input (grid, timing, scanner model), never names, IDs, dates or paths.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cinema.analysis.qc import MIN_CONFIDENCE

__all__ = [
    "COLOURS",
    "bullseye_png",
    "cine_gif_bytes",
    "heart_box",
    "overlay_rgb",
    "rate_plot_png",
    "render_report_html",
    "volume_plot_png",
]

# label -> RGB: RV blue, myocardium bluish green, LV vermillion
COLOURS = {1: (0, 114, 178), 2: (0, 158, 115), 3: (213, 94, 0)}
ALPHA = 0.45
LABEL_TEXT = {1: "RV", 2: "MYO", 3: "LV"}


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display window from the 1st-99.5th percentiles, robust to a few very bright voxels."""
    low, high = np.percentile(image, [1.0, 99.5])
    return float(low), float(max(high, low + 1e-6))


def overlay_rgb(image: np.ndarray, labels: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """(Y, X, 3) uint8 picture of an (X, Y) image with its (X, Y) labels blended on top."""
    low, high = window or _window(image)
    gray = np.clip((np.asarray(image, dtype=np.float32) - low) / (high - low), 0.0, 1.0).T * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    labels_t = np.asarray(labels).T
    for value, colour in COLOURS.items():
        mask = labels_t == value
        rgb[mask] = (1.0 - ALPHA) * rgb[mask] + ALPHA * np.asarray(colour, dtype=np.float32)
    return rgb.round().astype(np.uint8)


def heart_box(series: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    """In-plane (x, y) crop around every labelled voxel of an (X, Y, ...) label array; the whole plane when empty."""
    found = np.asarray(series).reshape(series.shape[0], series.shape[1], -1).any(axis=-1)
    if not found.any():
        return slice(0, series.shape[0]), slice(0, series.shape[1])
    xs, ys = np.flatnonzero(found.any(axis=1)), np.flatnonzero(found.any(axis=0))
    # a square box keeps tiles the same size across slices and phases
    half = max(xs[-1] - xs[0], ys[-1] - ys[0]) // 2 + margin
    centre = ((xs[0] + xs[-1]) // 2, (ys[0] + ys[-1]) // 2)
    bounds = [
        slice(max(0, c - half), min(size, c + half + 1)) for c, size in zip(centre, series.shape[:2], strict=True)
    ]
    return bounds[0], bounds[1]


def _figure_png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def slice_grid_png(
    image: np.ndarray, labels: np.ndarray, spacing: Sequence[float], box: tuple[slice, slice], title: str
) -> bytes:
    """PNG of every slice of an (X, Y, Z) frame, image beside overlay would double the size: overlay only, numbered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_slices = image.shape[2]
    columns = min(n_slices, 6)
    rows = int(np.ceil(n_slices / columns))
    window = _window(image[box[0], box[1]])
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows + 0.4), squeeze=False)
    for z, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if z >= n_slices:
            continue
        axis.imshow(
            overlay_rgb(image[box[0], box[1], z], labels[box[0], box[1], z], window),
            aspect=float(spacing[1]) / float(spacing[0]),
            interpolation="nearest",
        )
        axis.set_title(f"slice {z + 1}", fontsize=9)
    figure.suptitle(title, fontsize=11)
    return _figure_png(figure)


def volume_plot_png(
    curves: Mapping[str, np.ndarray], ed: int, es: int, times_ms: Sequence[float] | None = None
) -> bytes:
    """PNG of the LV, RV and myocardial volume-time curves with ED and ES marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_frames = len(curves["lv"])
    x = np.asarray(times_ms, dtype=float) if times_ms is not None else np.arange(n_frames, dtype=float)
    figure, axis = plt.subplots(figsize=(7.0, 3.6))
    for name, value in (("lv", 3), ("rv", 1), ("myo", 2)):
        colour = np.asarray(COLOURS[value]) / 255.0
        axis.plot(x, curves[name], marker="o", markersize=3, color=colour, label=LABEL_TEXT[value])
    for frame, text in ((ed, "ED"), (es, "ES")):
        axis.axvline(x[frame], color="0.4", linestyle="--", linewidth=1)
        axis.annotate(text, (x[frame], axis.get_ylim()[1]), ha="center", va="bottom", fontsize=9)
    axis.set_xlabel("time after R wave (ms)" if times_ms is not None else "frame")
    axis.set_ylabel("volume (ml)")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _figure_png(figure)


# AHA segments in the bullseye's clockwise-from-3-o'clock sector order per ring, with the angle (degrees from the
# septal bisector, positive towards inferior) where the ring's first sector starts; `cinema.analysis.regional`
# assigns the segments with the same sectors. Drawn with anterior up and the septum left, as seen from the apex.
_BULLSEYE_RINGS = (
    ("apical", (16, 13, 14, 15), -225.0, (0.2, 0.45)),
    ("mid", (12, 7, 8, 9, 10, 11), -180.0, (0.45, 0.72)),
    ("basal", (6, 1, 2, 3, 4, 5), -180.0, (0.72, 1.0)),
)


def bullseye_png(segments: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG of two AHA bullseyes (16 segments; the apical cap, segment 17, left blank): the ED wall thickness (mm)
    and the systolic thickening (%), from the ``segments`` of the ``regional`` metrics; grey where not measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Wedge

    by_number = {int(s["segment"]): s for s in segments}
    panels = (
        ("ED wall thickness (mm)", lambda s: s["ed"]["thickness_mean_mm"], "viridis", (0.0, 16.0)),
        ("Systolic thickening (%)", lambda s: s.get("thickening_pct"), "cividis", (-20.0, 100.0)),
    )
    figure, axes = plt.subplots(1, 2, figsize=(9.0, 4.4))
    for axis, (title, value_of, cmap_name, (low, high)) in zip(axes, panels, strict=True):
        cmap = plt.get_cmap(cmap_name)
        for _, numbers, start, (inner, outer) in _BULLSEYE_RINGS:
            width = 360.0 / len(numbers)
            for k, number in enumerate(numbers):
                value = value_of(by_number[number]) if number in by_number else None
                colour = "0.85" if value is None else cmap((float(value) - low) / (high - low))
                # angle psi from the septal bisector is drawn at 180 + psi degrees (counter-clockwise from 3 o'clock)
                theta1 = 180.0 + start + k * width
                axis.add_patch(
                    Wedge(
                        (0, 0),
                        outer,
                        theta1,
                        theta1 + width,
                        width=outer - inner,
                        facecolor=colour,
                        edgecolor="white",
                        linewidth=1.5,
                    )
                )
                middle = np.radians(theta1 + width / 2)
                radius = (inner + outer) / 2
                text = "n/a" if value is None else f"{float(value):.0f}"
                shade = "white" if value is not None and (float(value) - low) / (high - low) < 0.55 else "black"
                axis.text(
                    radius * np.cos(middle),
                    radius * np.sin(middle),
                    f"{number}\n{text}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=shade,
                )
        axis.set_xlim(-1.05, 1.05)
        axis.set_ylim(-1.05, 1.05)
        axis.set_aspect("equal")
        axis.axis("off")
        axis.set_title(title, fontsize=10)
        axis.text(0, 1.04, "anterior", ha="center", va="bottom", fontsize=8, color="0.35")
        axis.text(-1.04, 0, "septal", ha="right", va="center", fontsize=8, color="0.35", rotation=90)
        mappable = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(low, high), cmap=cmap)
        figure.colorbar(mappable, ax=axis, shrink=0.7, pad=0.02)
    return _figure_png(figure)


def rate_plot_png(rates: Mapping[str, Any], es_time_ms: float | None = None) -> bytes:
    """PNG of the LV volume rate curve (ml/s, filling positive) with the peak ejection and filling rates marked,
    from the ``volume_rates`` of the ``regional`` metrics (which must have a ``curve``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(rates["curve"]["time_ms"], dtype=float)
    y = np.asarray(rates["curve"]["rate_ml_s"], dtype=float)
    figure, axis = plt.subplots(figsize=(7.0, 3.2))
    axis.plot(x, y, marker="o", markersize=3, color=np.asarray(COLOURS[3]) / 255.0, label="dV/dt (LV)")
    axis.axhline(0, color="0.6", linewidth=0.8)
    for index, text in ((int(np.argmin(y)), "PER"), (int(np.argmax(y)), "PFR")):
        axis.annotate(
            text,
            (x[index], y[index]),
            textcoords="offset points",
            xytext=(0, 6 if y[index] > 0 else -12),
            ha="center",
            fontsize=9,
        )
    if es_time_ms is not None:
        axis.axvline(es_time_ms, color="0.4", linestyle="--", linewidth=1)
        axis.annotate("ES", (es_time_ms, axis.get_ylim()[1]), ha="center", va="bottom", fontsize=9)
    axis.set_xlabel("time after R wave (ms), midpoint of each frame interval")
    axis.set_ylabel("LV volume rate (ml/s)")
    axis.grid(alpha=0.3)
    return _figure_png(figure)


def mid_ventricular_slice(series: np.ndarray, ed: int) -> int:
    """The slice halfway between the first and last slice holding LV at ED (the stack middle if none)."""
    present = np.flatnonzero((series[..., ed] == 3).any(axis=(0, 1)))
    if present.size == 0:
        return series.shape[2] // 2
    return int((present[0] + present[-1]) // 2)


def cine_gif_bytes(
    image: np.ndarray,
    series: np.ndarray,
    spacing: Sequence[float],
    slice_index: int,
    frame_ms: float = 60.0,
    size: int = 240,
) -> bytes:
    """Animated GIF of one slice over time: the image on the left, the same with labels on the right.

    Args:
        image: (X, Y, Z, T) intensities; series: (X, Y, Z, T) labels.
        spacing: voxel size (x, y, ...) in mm, to keep the anatomy's aspect ratio.
        slice_index: which slice to animate.
        frame_ms: display time of each frame.
        size: height of each panel in pixels.
    """
    from PIL import Image

    box = heart_box(series[:, :, slice_index], margin=16)
    planes = image[box[0], box[1], slice_index]
    window = _window(planes)
    height = size
    width = max(1, round(size * (planes.shape[0] * spacing[0]) / (planes.shape[1] * spacing[1])))
    frames = []
    for t in range(image.shape[3]):
        raw = overlay_rgb(planes[..., t], np.zeros_like(series[box[0], box[1], slice_index, t]), window)
        blended = overlay_rgb(planes[..., t], series[box[0], box[1], slice_index, t], window)
        pair = np.concatenate([raw, np.full((raw.shape[0], 2, 3), 255, np.uint8), blended], axis=1)
        frames.append(Image.fromarray(pair).resize((2 * width + 4, height), Image.Resampling.NEAREST))
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(frame_ms), loop=0, optimize=False
    )
    return buffer.getvalue()


def _img(data: bytes, mime: str, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{float(value):.{digits}f}{(' ' + unit) if unit else ''}"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
th{font-weight:600;color:#444}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e5;border-left:4px solid #e69f00;padding:.4em .8em;margin:.3em 0}
.ok{background:#eef8f1;border-left:4px solid #009e73;padding:.4em .8em}
.note{color:#666;font-size:.9em}img{max-width:100%}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}
"""


_GROUP_TEXT = {
    "NOR": "normal",
    "DCM": "dilated cardiomyopathy",
    "HCM": "hypertrophic cardiomyopathy",
    "MINF": "previous myocardial infarction",
    "RV": "abnormal right ventricle",
}


def _disease_section(probabilities: Mapping[str, float] | None) -> str:
    """Group probabilities as a table, most likely first, with what they are and are not."""
    if not probabilities:
        return ""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    rows = "".join(
        f"<tr><th>{html.escape(_GROUP_TEXT.get(k, k))} ({html.escape(k)})</th>"
        f"<td class=num>{100 * float(v):.1f} %</td></tr>"
        for k, v in ranked
    )
    return (
        '<h2>Disease group (ACDC categories)</h2><table id="disease">' + rows + "</table>"
        '<p class="note">From the segmentation\'s volumes, ejection fractions, mass and wall thickness by a classifier '
        "trained on 65 ACDC exams (5 groups only): a research aid, not a diagnosis.</p>"
    )


def _regional_section(regional: Mapping[str, Any] | None, bullseye: bytes | None, rate: bytes | None) -> str:
    """The AHA bullseye, a table per segment, the global strains and the volume-curve rates, with their caveats."""
    if not regional:
        return ""
    parts = ["<h2>Regional function (AHA 16 segments)</h2>"]
    if bullseye is not None:
        parts.append(_img(bullseye, "image/png", "AHA bullseye of ED wall thickness and thickening"))
    header = (
        "<tr><th>Segment</th><th>ED thickness mean / max (mm)</th><th>ES thickness mean / max (mm)</th>"
        "<th>Thickening (%)</th><th>Circumferential strain (%)</th></tr>"
    )
    rows = []
    for s in regional.get("segments", []):
        ed, es = s["ed"], s["es"]
        rows.append(
            f"<tr><th>{int(s['segment'])} {html.escape(str(s['name']))}</th>"
            f"<td class=num>{_fmt(ed['thickness_mean_mm'])} / {_fmt(ed['thickness_max_mm'])}</td>"
            f"<td class=num>{_fmt(es['thickness_mean_mm'])} / {_fmt(es['thickness_max_mm'])}</td>"
            f"<td class=num>{_fmt(s.get('thickening_pct'))}</td>"
            f"<td class=num>{_fmt(s.get('circumferential_strain_pct'))}</td></tr>"
        )
    parts.append(f'<table id="segments">{header}{"".join(rows)}</table>')
    overall = regional.get("global", {})
    rates = regional.get("volume_rates") or {}
    summary = [
        ("LV wall thickness at ED, mean (mm)", _fmt(overall.get("ed_thickness_mean_mm"))),
        ("Global radial strain (wall thickening, %)", _fmt(overall.get("radial_strain_pct"))),
        ("Global circumferential strain (mid-wall, %)", _fmt(overall.get("circumferential_strain_pct"))),
        (
            "Peak ejection rate",
            f"{_fmt(rates.get('peak_ejection_rate_ml_s'), 'ml/s', 0)} "
            f"({_fmt(rates.get('peak_ejection_rate_edv_s'), 'EDV/s', 2)})",
        ),
        (
            "Peak filling rate",
            f"{_fmt(rates.get('peak_filling_rate_ml_s'), 'ml/s', 0)} "
            f"({_fmt(rates.get('peak_filling_rate_edv_s'), 'EDV/s', 2)})",
        ),
        ("Time from ES to peak filling", _fmt(rates.get("time_to_peak_filling_ms"), "ms", 0)),
        ("E/A filling ratio", _fmt(rates.get("e_a_ratio"), "", 2)),
    ]
    parts.append(
        '<table id="regional-global">'
        + "".join(f"<tr><th>{html.escape(k)}</th><td class=num>{html.escape(v)}</td></tr>" for k, v in summary)
        + "</table>"
    )
    if rate is not None:
        parts += ["<h3>LV volume rate</h3>", _img(rate, "image/png", "LV volume rate curve")]
    levels = regional.get("levels", {})
    level_text = "; ".join(
        f"{name} {', '.join(str(z) for z in levels.get(name, [])) or 'none'}" for name in ("basal", "mid", "apical")
    )
    parts.append(
        f'<p class="note">Slices per level (1-based): {html.escape(level_text)}. Thickness is measured along the '
        "myocardium's normal on the mid-wall line; strain is contour-based (mid-wall length and wall thickness at "
        "ED and ES), not feature tracking: it ignores through-plane motion and rotation and follows the "
        "segmentation's borders. Segments are anchored on the RV insertion points; anterior/inferior assume the "
        "input's orientation is the patient's.</p>"
    )
    return "\n".join(parts)


def render_report_html(
    *,
    metrics: Mapping[str, Any],
    input_summary: Sequence[tuple[str, str]],
    volume_png: bytes,
    ed_png: bytes,
    es_png: bytes | None,
    gif: bytes | None,
    not_checked: Sequence[str] = (),
    not_available: Sequence[str] = (),
    bullseye_png: bytes | None = None,
    rate_png: bytes | None = None,
) -> str:
    """The report as one HTML string with every picture embedded (base64), readable offline and by e-mail.

    ``bullseye_png`` and ``rate_png`` (from `bullseye_png` and `rate_plot_png`) go with ``metrics["regional"]``.
    """
    from cinema import __version__

    ed, es = metrics["ed_frame"], metrics["es_frame"]
    rows = [
        ("LV end-diastolic volume (LVEDV)", _fmt(metrics["lv_edv_ml"], "ml")),
        ("LV end-systolic volume (LVESV)", _fmt(metrics["lv_esv_ml"], "ml")),
        ("LV stroke volume (LVSV)", _fmt(metrics["lv_sv_ml"], "ml")),
        ("LV ejection fraction (LVEF)", _fmt(metrics["lv_ef_pct"], "%")),
        ("RV end-diastolic volume (RVEDV)", _fmt(metrics["rv_edv_ml"], "ml")),
        ("RV end-systolic volume (RVESV)", _fmt(metrics["rv_esv_ml"], "ml")),
        ("RV stroke volume (RVSV)", _fmt(metrics["rv_sv_ml"], "ml")),
        ("RV ejection fraction (RVEF)", _fmt(metrics["rv_ef_pct"], "%")),
        ("LV mass at ED (1.05 g/ml)", _fmt(metrics["lv_mass_g"], "g")),
        ("ED frame (0-based)", str(ed)),
        ("ES frame (0-based)", str(es)),
    ]
    landmarks = metrics.get("mitral_valve_landmarks")
    if landmarks and metrics.get("mapse_mm") is not None:
        view = str(landmarks.get("view", "LAX"))
        rows += [
            (f"MAPSE ({view})", _fmt(metrics["mapse_mm"], "mm")),
            (f"LV longitudinal shortening ({view})", _fmt(landmarks.get("longitudinal_shortening_pct"), "%")),
        ]
    metric_rows = "".join(f"<tr><th>{html.escape(k)}</th><td class=num>{html.escape(v)}</td></tr>" for k, v in rows)
    warnings = list(metrics.get("qc_warnings", []))
    if warnings:
        qc = "".join(f'<div class="warn">{html.escape(w)}</div>' for w in warnings)
    else:
        qc = '<div class="ok">No quality-control warnings.</div>'
    if metrics.get("model_confidence") is not None:
        qc += (
            f'<p class="note">Model confidence (mean top-class probability inside the heart, all frames): '
            f"{float(metrics['model_confidence']):.2f}; below {MIN_CONFIDENCE:.2f} is flagged.</p>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in [*not_checked, *not_available])
    disease = _disease_section(metrics.get("disease_probabilities"))
    legend = "".join(f'<span style="background:rgb{COLOURS[v]}"></span>{LABEL_TEXT[v]}' for v in (3, 2, 1))
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>CineMA cine analysis</title><style>{_CSS}</style></head><body>",
        "<h1>CineMA cine analysis</h1>",
        f'<p class="note">cinema {html.escape(__version__)} &middot; automatic segmentation, research use only, '
        "not a medical device: review the overlays before trusting the numbers.</p>",
        "<h2>Measurements</h2>",
        f"<table>{metric_rows}</table>",
        disease,
        "<h2>Quality control</h2>",
        qc,
        f'<ul class="note">{notes}</ul>' if notes else "",
        "<h2>Volume&ndash;time curves</h2>",
        _img(volume_png, "image/png", "volume-time curves"),
        _regional_section(metrics.get("regional"), bullseye_png, rate_png),
        f'<h2>Segmentation at ED (frame {ed})</h2><p class="legend">{legend}</p>',
        _img(ed_png, "image/png", "ED overlays"),
    ]
    if es_png is not None:
        parts += [f"<h2>Segmentation at ES (frame {es})</h2>", _img(es_png, "image/png", "ES overlays")]
    if gif is not None:
        parts += ["<h2>Cine, mid-ventricular slice</h2>", _img(gif, "image/gif", "cine overlay")]
    parts += ["<h2>Input</h2>", _table(input_summary), "</body></html>"]
    return "\n".join(parts)
