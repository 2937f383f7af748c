"""Regional LV measurements on the AHA 16-segment model from a segmented short-axis (SAX) stack.

From the ED and ES label maps (0 background, 1 RV, 2 MYO, 3 LV) and the voxel-to-world affine:

- RV insertion points per slice: the two ends of the arc along which the RV cavity touches the LV epicardium;
- the AHA 16-segment model (Cerqueira et al., Circulation 2002;105:539-542): the slices holding an LV cavity are
  split into basal, mid and apical thirds by their position along the long axis (segment 17, the apical cap
  without cavity, is not measured); basal and mid slices have six 60-degree sectors, apical slices four 90-degree
  sectors, anchored on the septum (the bisector of the two insertion points);
- wall thickness along the myocardium's normal by the centreline method (Sheehan et al., Circulation
  1986;74:293-305) computed with distance transforms (as in Yezzi & Prince, IEEE TMI 2003;22:1332-1339): on the
  mid-wall curve, the points equidistant from the endocardial and the epicardial border, the thickness is the sum
  of the two distances, which is the diameter of the largest disc inscribed in the wall there and, for locally
  parallel borders, the chord along their common normal. Ray-casting from the cavity centroid, which overestimates
  thickness wherever the wall is oblique to the ray (eccentric or non-circular ventricles), is deliberately not used;
- systolic thickening (ES / ED - 1) per segment and globally, which is also the contour-based radial strain;
- circumferential strain from the mid-wall contour length, (L_ES - L_ED) / L_ED, the Lagrangian strain definition of
  the EACVI/ASE/industry consensus (Voigt et al., Eur Heart J Cardiovasc Imaging 2015;16:1-11) applied to the
  mid-wall line (mid-wall shortening: Shimizu et al., Circulation 1991;83:1676-1684), globally (all slices closed at
  both phases) and per segment (the sector's mid-wall arc).

Contour-based strain is not feature tracking: no material point is followed, so the segment boundaries at ES are
re-drawn from the ES insertion points around the ES centre; through-plane motion (the base descends 10-15 mm in
systole, so a basal slice cuts a more basal part of the ventricle at ES) and rotation/twist are ignored; and the
mid-wall line of a label map moves with the endocardial trabeculae the segmentation includes or excludes. The
numbers describe the segmentation's borders, not the tissue's deformation.

Orientation conventions (needed to name the segments):

- Long axis: the end of the ventricle where the cavity is larger is the base. Concretely, the cavity-area-weighted
  centroid of the cavity slices lies nearer the base than the middle of their extent does (the LV tapers to the
  apex). When the stack is obliquely oriented (a scanner affine) the result is compared with the anatomical apex
  direction (left, anterior, inferior in RAS+) and a disagreement is flagged.
- In-plane handedness: the affine is taken to map voxels to the patient's true (RAS+) space. Seen from the apex
  towards the base, with anterior up and the septum on the left, the segments run counter-clockwise
  anterior -> septum -> inferior -> lateral. The anterior insertion point is therefore the end of the septal arc
  from which a rotation that is positive about the base-to-apex axis crosses the septum. A file whose affine mirrors
  the anatomy (ACDC's NIfTI files carry a bare diagonal affine) keeps its septal and lateral segments but swaps
  anterior and inferior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "AHA_SEGMENTS",
    "LEVELS",
    "InsertionPoints",
    "SliceWall",
    "aha_segment_of",
    "insertion_points",
    "regional_analysis",
    "slice_wall",
]

RV_LABEL, MYO_LABEL, LV_LABEL = 1, 2, 3
LEVELS = ("basal", "mid", "apical")
# (number, name, level), in the AHA numbering
AHA_SEGMENTS = (
    (1, "basal anterior", "basal"),
    (2, "basal anteroseptal", "basal"),
    (3, "basal inferoseptal", "basal"),
    (4, "basal inferior", "basal"),
    (5, "basal inferolateral", "basal"),
    (6, "basal anterolateral", "basal"),
    (7, "mid anterior", "mid"),
    (8, "mid anteroseptal", "mid"),
    (9, "mid inferoseptal", "mid"),
    (10, "mid inferior", "mid"),
    (11, "mid inferolateral", "mid"),
    (12, "mid anterolateral", "mid"),
    (13, "apical anterior", "apical"),
    (14, "apical septal", "apical"),
    (15, "apical inferior", "apical"),
    (16, "apical lateral", "apical"),
)

# A slice takes part when its LV cavity covers at least this area: smaller apical cavities are a few voxels whose
# borders are mostly partial-volume guesses.
MIN_CAVITY_MM2 = 25.0
# The RV counts as touching the LV epicardium within this many in-plane voxels (one unlabelled voxel between the two
# labels is common in automatic segmentations).
CONTACT_VOXELS = 2.0
# A septal contact arc outside this range (degrees) is not a plausible septum: the insertion points are unsure.
SEPTAL_ARC_DEG = (30.0, 240.0)
# Fraction of a slice's mid-wall line allowed to run through a gap of the myocardium (open basal ring at the outflow
# tract) before the slice is left out of circumferential strain.
MAX_OPEN_FRACTION = 0.05
# Label maps are smoothed (Gaussian, this sigma in voxels) and resampled to voxels this many times smaller than the
# finest in-plane spacing before distances are measured: the staircase of the voxel borders would otherwise add up to
# half a voxel to local thickness and several percent to contour length.
SMOOTHING_VOXELS = 1.0
UPSAMPLING = 4
# The maximum thickness of a segment is the mean over its thickest stretch of mid-wall line this long (mm) on one
# slice: a single point of the line can be most of a voxel off where the voxel staircases of both borders line up.
MAX_STRETCH_MM = 8.0
# Anatomical apex direction in RAS+ (left, anterior, inferior), for the orientation check of oblique stacks.
_APEX_RAS = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)


# -------------------------------------------------------------------------------------------------------------------
# Geometry of the stack
# -------------------------------------------------------------------------------------------------------------------


def _in_plane_spacing(affine: np.ndarray) -> tuple[float, float]:
    sx, sy = np.linalg.norm(affine[:3, :2], axis=0)
    return float(sx), float(sy)


def _slice_positions(affine: np.ndarray, n_slices: int) -> tuple[np.ndarray, float]:
    """Slice centres along the stack normal (mm) and the slab thickness each slice stands for; the component of the
    slice step along the in-plane axes (a sheared stack) does not move a slice along the long axis."""
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    step = float(affine[:3, 2] @ normal)
    return np.arange(n_slices) * step, abs(step)


def _handedness(affine: np.ndarray, apex_at_high_index: bool) -> float:
    """+1 when increasing in-plane angle (voxel axis 0 towards axis 1) is a positive rotation about the
    base-to-apex axis, -1 otherwise."""
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    towards_apex = affine[:3, 2] if apex_at_high_index else -affine[:3, 2]
    return 1.0 if float(normal @ towards_apex) > 0 else -1.0


def _is_oblique(affine: np.ndarray) -> bool:
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.sort(np.abs(directions), axis=0)[1].max() > 1e-3)


# -------------------------------------------------------------------------------------------------------------------
# One slice: masks, mid-wall line and thickness
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class SliceWall:
    """The mid-wall line of one slice as short straight pieces (a marching-squares polyline).

    Attributes:
        points: (N, 2) piece midpoints in in-plane mm (voxel axis 0, axis 1), relative to `centre`.
        lengths: (N,) piece lengths in mm.
        thickness: (N,) wall thickness (mm) at each piece.
        on_wall: (N,) False where the line crosses a gap in the myocardium (cavity touching the outside).
        centre: the in-plane centroid (mm) of the epicardial region (cavity and myocardium).
        cavity_mm2: LV cavity area (holes filled).
    """

    points: np.ndarray
    lengths: np.ndarray
    thickness: np.ndarray
    on_wall: np.ndarray
    centre: np.ndarray
    cavity_mm2: float

    @property
    def open_fraction(self) -> float:
        total = float(self.lengths.sum())
        return float(self.lengths[~self.on_wall].sum()) / total if total > 0 else 1.0

    @property
    def closed(self) -> bool:
        return self.lengths.size > 0 and self.open_fraction <= MAX_OPEN_FRACTION

    def angles(self) -> np.ndarray:
        """Angle of each piece around the centre, degrees in [0, 360), from voxel axis 0 towards axis 1."""
        return np.degrees(np.arctan2(self.points[:, 1], self.points[:, 0])) % 360.0


def _largest(mask: np.ndarray) -> np.ndarray:
    parts, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(parts.ravel())[1:]
    return parts == 1 + int(np.argmax(sizes))


def _lv_regions(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cavity, epicardial region, myocardium) of one slice: the largest LV piece with its holes (papillary muscles
    labelled myocardium) filled, and the filled largest LV-plus-myocardium piece that holds it."""
    cavity = ndimage.binary_fill_holes(_largest(plane == LV_LABEL))
    epi = ndimage.binary_fill_holes(_largest((plane == LV_LABEL) | (plane == MYO_LABEL)))
    cavity &= epi
    return cavity, epi, epi & ~cavity


def _level_pieces(field: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The `level` set of a 2-D field as straight pieces, one per crossed cell (two in a saddle cell): marching
    squares without joining the pieces, since only their lengths and positions are needed. Returns (start, end)
    arrays (M, 2) in index units."""
    a, b, c, d = field[:-1, :-1], field[1:, :-1], field[1:, 1:], field[:-1, 1:]
    corners = ((a, b), (b, c), (d, c), (a, d))  # edges y=0, x=1, y=1, x=0 of each cell
    crossing = np.stack([(p >= level) != (q >= level) for p, q in corners], axis=-1)
    cells = np.flatnonzero(crossing.reshape(-1, 4).any(axis=1))
    if cells.size == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    flags = crossing.reshape(-1, 4)[cells]
    values = [(p.ravel()[cells], q.ravel()[cells]) for p, q in corners]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.stack([np.clip(np.nan_to_num((level - p) / (q - p), nan=0.5), 0, 1) for p, q in values], axis=-1)
    zero, one = np.zeros_like(t[:, 0]), np.ones_like(t[:, 0])
    points = np.stack(
        [
            np.stack([t[:, 0], zero], -1),
            np.stack([one, t[:, 1]], -1),
            np.stack([t[:, 2], one], -1),
            np.stack([zero, t[:, 3]], -1),
        ],
        axis=1,
    )  # (M, 4 edges, 2)
    ix, iy = np.unravel_index(cells, a.shape)
    offset = np.stack([ix, iy], -1).astype(float)
    count = flags.sum(axis=1)
    starts, ends = [], []
    two = count == 2
    order = np.argsort(~flags[two], axis=1, kind="stable")[:, :2]
    rows = np.flatnonzero(two)
    starts.append(points[rows, order[:, 0]] + offset[rows])
    ends.append(points[rows, order[:, 1]] + offset[rows])
    saddle = np.flatnonzero(count == 4)
    if saddle.size:
        centre = (a.ravel()[cells] + b.ravel()[cells] + c.ravel()[cells] + d.ravel()[cells])[saddle] / 4
        # the centre on corner a's side joins a with c, so the line cuts off corners b and d; otherwise a and c
        a_side = (centre >= level) == (a.ravel()[cells][saddle] >= level)
        for pick, pairs in ((saddle[a_side], ((0, 1), (2, 3))), (saddle[~a_side], ((0, 3), (1, 2)))):
            for p, q in pairs:
                starts.append(points[pick, p] + offset[pick])
                ends.append(points[pick, q] + offset[pick])
    return np.concatenate(starts), np.concatenate(ends)


def slice_wall(plane: np.ndarray, spacing_xy: Sequence[float]) -> SliceWall | None:
    """The mid-wall line of one (X, Y) label slice with the wall thickness along it; None without a cavity of at
    least `MIN_CAVITY_MM2` surrounded by myocardium.

    Anisotropic in-plane voxels are handled by resampling to a square grid of ``min(spacing) / UPSAMPLING`` mm.
    """
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    cavity, epi, myo = _lv_regions(np.asarray(plane))
    cavity_mm2 = float(cavity.sum()) * sx * sy
    if cavity_mm2 < MIN_CAVITY_MM2 or not myo.any():
        return None
    xs, ys = np.flatnonzero(epi.any(axis=1)), np.flatnonzero(epi.any(axis=0))
    margin = 3
    x0, x1 = max(xs[0] - margin, 0), min(xs[-1] + margin + 1, plane.shape[0])
    y0, y1 = max(ys[0] - margin, 0), min(ys[-1] + margin + 1, plane.shape[1])
    step = min(sx, sy) / UPSAMPLING
    # fine grid in mm, starting at voxel (x0, y0); coordinates back in (fractional) voxel indices of the crop
    gx = np.arange(0.0, (x1 - x0 - 1) * sx + 1e-9, step)
    gy = np.arange(0.0, (y1 - y0 - 1) * sy + 1e-9, step)
    coords = np.meshgrid(gx / sx, gy / sy, indexing="ij")

    def fine(mask: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(mask[x0:x1, y0:y1].astype(np.float32), SMOOTHING_VOXELS, mode="nearest")
        return ndimage.map_coordinates(smooth, coords, order=1, mode="nearest") >= 0.5

    cavity_f, epi_f, myo_f = fine(cavity), fine(epi), fine(myo)
    cavity_f &= epi_f
    if not cavity_f.any() or not (epi_f & ~cavity_f).any():
        return None
    # distances between voxel centres reach the border half a voxel early on each side
    to_endo = np.clip(ndimage.distance_transform_edt(~cavity_f) * step - step / 2, 0, None)
    to_epi = np.clip(ndimage.distance_transform_edt(epi_f) * step - step / 2, 0, None)
    to_endo[cavity_f] = 0.0
    to_epi[~epi_f] = 0.0
    total = to_endo + to_epi
    depth = np.where(total > 0, to_endo / np.where(total > 0, total, 1.0), 0.0)  # 0 endocardium .. 1 epicardium
    start, end = _level_pieces(depth, 0.5)
    if start.shape[0] == 0:
        return None
    middle = (start + end) / 2
    lengths = np.linalg.norm(end - start, axis=1) * step
    thickness = ndimage.map_coordinates(total, middle.T, order=1, mode="nearest")
    nearest = np.clip(np.rint(middle).astype(int), 0, np.array(myo_f.shape) - 1)
    on_wall = myo_f[nearest[:, 0], nearest[:, 1]] & (thickness > step)
    epi_points = np.argwhere(epi_f) * step
    centre = epi_points.mean(axis=0)
    points = middle * step - centre
    offset = np.array([x0 * sx, y0 * sy])
    return SliceWall(
        points=points,
        lengths=lengths,
        thickness=thickness,
        on_wall=on_wall,
        centre=centre + offset,
        cavity_mm2=cavity_mm2,
    )


# -------------------------------------------------------------------------------------------------------------------
# Insertion points and segments
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class InsertionPoints:
    """RV insertion points of one slice as angles (degrees, in the handedness-corrected in-plane frame where
    increasing angle runs anterior -> septum -> inferior) around the LV centre, or the reason they are unsure."""

    anterior_deg: float | None = None
    inferior_deg: float | None = None
    reason: str = ""
    anterior_voxel: tuple[int, int] | None = None
    inferior_voxel: tuple[int, int] | None = None

    @property
    def found(self) -> bool:
        return self.anterior_deg is not None

    @property
    def septum_deg(self) -> float | None:
        """The bisector of the septal arc."""
        if self.anterior_deg is None or self.inferior_deg is None:
            return None
        span = (self.inferior_deg - self.anterior_deg) % 360.0
        return (self.anterior_deg + span / 2) % 360.0


def insertion_points(
    plane: np.ndarray, spacing_xy: Sequence[float], centre_mm: Sequence[float], handedness: float
) -> InsertionPoints:
    """The anterior and inferior RV insertion points of one (X, Y) label slice: the ends of the arc of the LV
    epicardial border that the RV cavity touches (within `CONTACT_VOXELS`), seen from `centre_mm`.

    ``handedness``: +1 when increasing in-plane angle (voxel axis 0 towards 1) turns positively about the
    base-to-apex axis (see the module's orientation conventions), else -1.
    """
    plane = np.asarray(plane)
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    rv = plane == RV_LABEL
    if not rv.any():
        return InsertionPoints(reason="no RV on the slice")
    _, epi, _ = _lv_regions(plane)
    border = epi & ~ndimage.binary_erosion(epi)
    to_rv = ndimage.distance_transform_edt(~rv, sampling=(sx, sy))
    contact = np.argwhere(border & (to_rv <= CONTACT_VOXELS * max(sx, sy)))
    if contact.shape[0] < 3:
        return InsertionPoints(reason="the RV does not touch the LV")
    xy = contact * np.array([sx, sy]) - np.asarray(centre_mm, dtype=float)
    angles = handedness * np.degrees(np.arctan2(xy[:, 1], xy[:, 0])) % 360.0
    order = np.argsort(angles)
    angles = angles[order]
    gaps = np.diff(np.concatenate([angles, angles[:1] + 360.0]))
    widest = int(np.argmax(gaps))
    span = 360.0 - float(gaps[widest])
    if not SEPTAL_ARC_DEG[0] <= span <= SEPTAL_ARC_DEG[1]:
        return InsertionPoints(reason=f"the RV contact arc ({span:.0f} degrees) is not a plausible septum")
    first, last = order[(widest + 1) % angles.size], order[widest]
    return InsertionPoints(
        anterior_deg=float(angles[(widest + 1) % angles.size]),
        inferior_deg=float(angles[widest]),
        anterior_voxel=(int(contact[first, 0]), int(contact[first, 1])),
        inferior_voxel=(int(contact[last, 0]), int(contact[last, 1])),
    )


def aha_segment_of(relative_deg: np.ndarray, level: str) -> np.ndarray:
    """AHA segment numbers of angles measured from the septal bisector (degrees, positive towards inferior).

    Basal and mid: 60-degree sectors, anteroseptal just anterior of the bisector and inferoseptal just inferior of
    it; apical: 90-degree sectors with the septal one centred on the bisector.
    """
    relative = (np.asarray(relative_deg, dtype=float) + 180.0) % 360.0 - 180.0
    if level == "apical":
        sector = np.floor((relative + 225.0) / 90.0).astype(int) % 4
        return np.array([16, 13, 14, 15])[sector]
    first = {"basal": 0, "mid": 6}[level]
    sector = np.floor((relative + 180.0) / 60.0).astype(int) % 6
    return np.array([6, 1, 2, 3, 4, 5])[sector] + first


def _circular_mean(degrees: Sequence[float]) -> float:
    radians = np.radians(np.asarray(degrees, dtype=float))
    return float(np.degrees(np.arctan2(np.sin(radians).mean(), np.cos(radians).mean())) % 360.0)


# -------------------------------------------------------------------------------------------------------------------
# The whole stack
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class _Phase:
    walls: dict[int, SliceWall] = field(default_factory=dict)
    insertion: dict[int, InsertionPoints] = field(default_factory=dict)
    septum: dict[int, float] = field(default_factory=dict)  # slice -> septal bisector used (degrees)
    fallback: dict[int, str] = field(default_factory=dict)  # slice -> why the bisector was borrowed


def _round(value: float | None, digits: int = 2) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def _measure_phase(labels: np.ndarray, spacing_xy: tuple[float, float], slices: Sequence[int]) -> _Phase:
    phase = _Phase()
    for z in slices:
        wall = slice_wall(labels[:, :, z], spacing_xy)
        if wall is not None:
            phase.walls[z] = wall
    return phase


def _orient(
    phase: _Phase, labels: np.ndarray, spacing_xy: tuple[float, float], handedness: float, borrow: _Phase | None
) -> None:
    """Septal bisector per slice: from its own insertion points, else the same slice of `borrow` (ED for ES), else
    the circular mean of the phase's sure slices, else the direction of the RV centroid."""
    for z, wall in phase.walls.items():
        phase.insertion[z] = insertion_points(labels[:, :, z], spacing_xy, wall.centre, handedness)
        if phase.insertion[z].found:
            phase.septum[z] = float(phase.insertion[z].septum_deg)
    sure = [phase.septum[z] for z in phase.walls if z in phase.septum]
    rv = np.argwhere(labels == RV_LABEL)
    for z, wall in phase.walls.items():
        if z in phase.septum:
            continue
        reason = phase.insertion[z].reason
        if borrow is not None and z in borrow.septum:
            phase.septum[z], phase.fallback[z] = borrow.septum[z], f"{reason}; ED insertion points used"
        elif sure:
            phase.septum[z], phase.fallback[z] = _circular_mean(sure), f"{reason}; other slices' septum used"
        elif rv.size:
            towards = rv[:, :2].mean(axis=0) * np.array(spacing_xy) - wall.centre
            angle = handedness * np.degrees(np.arctan2(towards[1], towards[0])) % 360.0
            phase.septum[z], phase.fallback[z] = angle, f"{reason}; direction of the RV centroid used"


def _levels(
    ed: np.ndarray, affine: np.ndarray, walls: dict[int, SliceWall]
) -> tuple[dict[int, str], bool, dict[str, Any]]:
    """Level of each slice with a wall at ED, whether the apex lies at the high slice indices, and notes."""
    n_slices = ed.shape[2]
    positions, slab = _slice_positions(affine, n_slices)
    cavity_slices = sorted(walls)
    notes: dict[str, Any] = {}
    if not cavity_slices:
        return {}, True, notes
    areas = np.array([walls[z].cavity_mm2 for z in cavity_slices])
    where = positions[cavity_slices]
    centroid = float((areas * where).sum() / areas.sum())
    middle = (where.min() + where.max()) / 2
    if abs(centroid - middle) > 1e-6 * max(slab, 1.0):
        apex_high_position = centroid < middle
    else:  # a cylinder gives no cue; stacks are usually stored base first
        apex_high_position = True
        notes["apex_guess"] = True
    increasing = positions[-1] >= positions[0] if n_slices > 1 else True
    apex_at_high_index = apex_high_position == increasing
    if _is_oblique(affine):
        towards_apex = affine[:3, 2] if apex_at_high_index else -affine[:3, 2]
        towards_apex = towards_apex / np.linalg.norm(towards_apex)
        notes["apex_direction_agrees_with_anatomy"] = bool(towards_apex @ _APEX_RAS > 0)
    # each slice stands for a slab; the cavity runs from the outer face of the most basal slab to that of the most
    # apical one, and a slice belongs to the third that holds its centre
    sign = 1.0 if apex_high_position else -1.0
    base_face = (where.min() - slab / 2) if apex_high_position else (where.max() + slab / 2)
    extent = (where.max() - where.min()) + slab
    levels = {}
    for z in cavity_slices:
        fraction = sign * (positions[z] - base_face) / extent
        levels[z] = LEVELS[min(int(fraction * 3), 2)]
    return levels, apex_at_high_index, notes


def _pooled(values: np.ndarray, weights: np.ndarray) -> float | None:
    return float((values * weights).sum() / weights.sum()) if weights.sum() > 0 else None


_Samples = list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _segment_samples(phase: _Phase, levels: dict[int, str], handedness: float) -> dict[int, _Samples]:
    """segment -> [(slice, lengths, thickness, on_wall, angle from the septum)] of the mid-wall pieces in it."""
    out: dict[int, _Samples] = {s: [] for s, _, _ in AHA_SEGMENTS}
    for z, wall in phase.walls.items():
        if z not in levels or z not in phase.septum:
            continue
        relative = (handedness * wall.angles() - phase.septum[z]) % 360.0
        numbers = aha_segment_of(relative, levels[z])
        for segment in np.unique(numbers):
            pick = numbers == segment
            out[int(segment)].append((z, wall.lengths[pick], wall.thickness[pick], wall.on_wall[pick], relative[pick]))
    return out


def _thickness(samples: _Samples) -> tuple[float | None, float | None]:
    """Length-weighted mean thickness of a segment's wall, and that of its thickest `MAX_STRETCH_MM` stretch."""
    total, weight, peak = 0.0, 0.0, None
    for _, lengths, thickness, on_wall, angles in samples:
        lengths, thickness, angles = lengths[on_wall], thickness[on_wall], angles[on_wall]
        total += float((lengths * thickness).sum())
        weight += float(lengths.sum())
        order = np.argsort(angles)
        lengths, thickness = lengths[order], thickness[order]
        sector = np.floor((np.cumsum(lengths) - lengths / 2) / MAX_STRETCH_MM).astype(int)
        sums = np.bincount(sector, weights=lengths * thickness)
        norms = np.bincount(sector, weights=lengths)
        filled = norms > 0
        if filled.any():
            local = float((sums[filled] / norms[filled]).max())
            peak = local if peak is None else max(peak, local)
    return (total / weight if weight > 0 else None), peak


def regional_analysis(ed_labels: np.ndarray, es_labels: np.ndarray | None, affine: np.ndarray) -> dict[str, Any]:
    """AHA-segment wall thickness, thickening and contour strain of one exam, JSON-ready.

    Args:
        ed_labels, es_labels: (X, Y, Z) label maps (1 RV, 2 MYO, 3 LV) at end-diastole and end-systole on the SAX
            grid; `es_labels` None (one phase only) leaves every ES and change value None.
        affine: the SAX voxel-to-world matrix (RAS+, mm).

    Returns a dict with ``segments`` (one entry per AHA segment: ED and ES thickness mean / max in mm, thickening
    and circumferential strain in %), ``global``, ``levels`` (1-based slice numbers per level), ``orientation``,
    ``insertion_points`` (per phase, the slices whose insertion points were unsure, with why) and ``units``.
    """
    ed_labels = np.asarray(ed_labels)
    if ed_labels.ndim != 3:
        raise ValueError(f"labels must be 3-D (X, Y, Z), got shape {ed_labels.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if es_labels is not None:
        es_labels = np.asarray(es_labels)
        if es_labels.shape != ed_labels.shape:
            raise ValueError(f"ED labels {ed_labels.shape} and ES labels {es_labels.shape} differ in shape")
    spacing_xy = _in_plane_spacing(affine)
    slices = range(ed_labels.shape[2])
    ed = _measure_phase(ed_labels, spacing_xy, slices)
    levels, apex_at_high_index, orientation_notes = _levels(ed_labels, affine, ed.walls)
    handedness = _handedness(affine, apex_at_high_index)
    _orient(ed, ed_labels, spacing_xy, handedness, None)
    es = None
    if es_labels is not None:
        es = _measure_phase(es_labels, spacing_xy, [z for z in slices if z in levels])
        _orient(es, es_labels, spacing_xy, handedness, ed)

    ed_samples = _segment_samples(ed, levels, handedness)
    es_samples = _segment_samples(es, levels, handedness) if es is not None else None
    # circumferential strain uses slices whose mid-wall line is closed at both phases
    strain_slices = (
        sorted(z for z in levels if z in es.walls and ed.walls[z].closed and es.walls[z].closed)
        if es is not None
        else []
    )
    segments = []
    for number, name, level in AHA_SEGMENTS:
        entry: dict[str, Any] = {"segment": number, "name": name, "level": level}
        for key, samples in (("ed", ed_samples), ("es", es_samples)):
            mean, peak = _thickness(samples[number]) if samples is not None else (None, None)
            entry[key] = {"thickness_mean_mm": _round(mean), "thickness_max_mm": _round(peak)}
        ed_mean, es_mean = entry["ed"]["thickness_mean_mm"], entry["es"]["thickness_mean_mm"]
        entry["thickening_pct"] = _round(100 * (es_mean / ed_mean - 1), 1) if ed_mean and es_mean else None
        strain = None
        if es_samples is not None:
            length_ed = sum(float(s[1].sum()) for s in ed_samples[number] if s[0] in strain_slices)
            length_es = sum(float(s[1].sum()) for s in es_samples[number] if s[0] in strain_slices)
            strain = 100 * (length_es / length_ed - 1) if length_ed > 0 and length_es > 0 else None
        entry["circumferential_strain_pct"] = _round(strain, 1)
        segments.append(entry)

    def global_thickness(phase: _Phase | None, chosen: Sequence[int]) -> float | None:
        if phase is None:
            return None
        pieces = [phase.walls[z] for z in chosen if z in phase.walls]
        if not pieces:
            return None
        return _pooled(
            np.concatenate([w.thickness[w.on_wall] for w in pieces]),
            np.concatenate([w.lengths[w.on_wall] for w in pieces]),
        )

    measured = sorted(levels)
    # the global values pool the slices measured at both phases, so that slices seen at ED only do not bias them
    both = [z for z in measured if es is not None and z in es.walls]
    ed_global = global_thickness(ed, both if es is not None else measured)
    es_global = global_thickness(es, both)
    circumferential = None
    if strain_slices:
        length_ed = sum(float(ed.walls[z].lengths.sum()) for z in strain_slices)
        length_es = sum(float(es.walls[z].lengths.sum()) for z in strain_slices)
        circumferential = 100 * (length_es / length_ed - 1)
    radial = 100 * (es_global / ed_global - 1) if ed_global and es_global else None
    insertion = {}
    for key, phase in (("ed", ed), ("es", es)):
        if phase is None:
            continue
        insertion[key] = {
            "points_voxel_xy": [
                {
                    "slice": z + 1,
                    "anterior": list(phase.insertion[z].anterior_voxel),
                    "inferior": list(phase.insertion[z].inferior_voxel),
                }
                for z in sorted(phase.walls)
                if phase.insertion[z].found and z in levels
            ],
            "unsure_slices": [
                {"slice": z + 1, "reason": phase.fallback.get(z, phase.insertion[z].reason)}
                for z in sorted(phase.walls)
                if not phase.insertion[z].found and z in levels
            ],
            "no_orientation_slices": [z + 1 for z in sorted(phase.walls) if z in levels and z not in phase.septum],
        }
    by_level = {name: [z + 1 for z in measured if levels[z] == name] for name in LEVELS}
    return {
        "method": (
            "AHA 16-segment model (Cerqueira 2002) anchored on the RV insertion points; wall thickness by the "
            "distance-transform centreline method on the mid-wall line; contour-based strain (not feature tracking)"
        ),
        "units": {
            "thickness": "mm",
            "thickening": "% (ES/ED - 1)",
            "circumferential_strain": "% ((L_ES - L_ED)/L_ED of the mid-wall line)",
            "radial_strain": "% (global wall thickening)",
        },
        "segments": segments,
        "global": {
            "ed_thickness_mean_mm": _round(ed_global),
            "es_thickness_mean_mm": _round(es_global),
            "radial_strain_pct": _round(radial, 1),
            "circumferential_strain_pct": _round(circumferential, 1),
            "strain_slices": [z + 1 for z in strain_slices],
        },
        "levels": by_level,
        "orientation": {
            "apex_end": "high slice numbers" if apex_at_high_index else "low slice numbers",
            "apex_end_guessed": bool(orientation_notes.get("apex_guess", False)),
            "apex_direction_agrees_with_anatomy": orientation_notes.get("apex_direction_agrees_with_anatomy"),
        },
        "insertion_points": insertion,
        "open_slices_ed": [z + 1 for z in measured if not ed.walls[z].closed],
    }
