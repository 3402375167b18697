"""The batch QC report: one self-contained ``report.html`` per ``segment`` output folder.

``segment`` rewrites ``OUT/report.html`` after every case it finishes (and at the end, also into the ``--bids-out``
folder); ``python -m dentate_research report OUT`` rebuilds it. The report is made only from what is on disk -
``volumes.csv``, each case's ``X_metadata.json`` and its ``X_mosaic.png`` - so an interrupted, resumed or
concurrent batch always has the report of what is finished. Contents:

* a summary: scans, pass / flagged / failed counts (plus case folders still being written or left partial), run
  time, software version, and the model(s) used with their cards (the ``models`` section of the metadata);
* the scans that need review (failed, then flagged) FIRST, each flag explained in words (:data:`FLAG_EXPLANATIONS`,
  the one place that says what each flag of :mod:`.pipeline` and :mod:`.qc` means; :func:`explain_flag` fills in
  the measured value and the thresholds the case was checked with);
* group plots: DN volume per side (outliers beyond 1.5 IQR or outside the QC range marked), left vs right volume,
  mean susceptibility per side;
* every scan: a table row and its mosaic (:func:`~.outputs.mosaic_png`: axial / coronal / sagittal through each DN in
  canonical RAS, left DN red, right DN blue, ``L``/``R`` marks).

Images are embedded as base64 PNG data URIs; the page needs no network and no JavaScript. Output folders written
before mosaics existed get theirs made from ``X_cropped.nii.gz`` + ``X_cropped_seg.nii.gz`` (else ``X_seg`` and the
input recorded in the metadata), saved as ``X_mosaic.png``; failing that the overlay PNG is shown, else a "no
image" note. The report is written atomically under its own lock (``OUT/.report.html.lock``), so concurrent
writers serialize and the last one, which sees every finished case, wins.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from dentate_research.data.atomic import TEMP_PREFIX, file_lock, is_temp_file, write_bytes_atomic, write_text_atomic
from dentate_research.data.geometry import bbox_from_mask, crop
from dentate_research.data.io import DataError, load_image, load_label
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, SIDE_NAMES

from .outputs import (
    DN_COLOURS,
    VOLUMES_CSV,
    case_output_paths,
    case_state,
    figure_png_bytes,
    load_case_record,
    mosaic_png,
    read_volumes_table,
)
from .qc import QCThresholds

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
REPORT_LOCK = ".report.html.lock"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIDES = (SIDE_NAMES[LEFT_DN], SIDE_NAMES[RIGHT_DN])
STATUS_ORDER = {"failed": 0, "flagged": 1, "ok": 2}
MOSAIC_MARGIN_MM = 15.0  # around the DN when a mosaic is made from X_seg and the full input
MAX_PLOT_LABELS = 15  # case names written next to outliers in the group plots

# ------------------------------------------------------------------------------------------------ flag vocabulary
# flag kind -> (short title, explanation). The kind is the flag without its "left_"/"right_" prefix and without the
# measured value after ":" (see parse_flag). Placeholders: {side}, {value} (text after ":"), {number} (its leading
# number), {faces}, {axes}, {measures}, {how}, {p_mean}, {p_uncertain} and the QC thresholds the case was checked
# with ({min_volume_mm3}, {y_range}, ...; see _context). Keep in step with cli/segment.py's EPILOG; tests/test_report.py
# fails when the pipeline or the QC emits a kind that is not here.
FLAG_EXPLANATIONS: dict[str, tuple[str, str]] = {
    # pipeline (inference/pipeline.py)
    "dn_empty": ("one DN not found",
                 "No {side} dentate nucleus was found; only the other side was segmented, so the {side} volume and "
                 "susceptibility are missing. The nucleus may be missed (low contrast, artefact) or outside the field "
                 "of view."),
    "cerebellum_touches_fov": ("cerebellum at the image border",
                               "The localized cerebellum reaches the {faces} border of the image: part of the "
                               "cerebellum may lie outside the field of view, so the crop and the DN may be "
                               "incomplete."),
    "dn_touches_crop_border": ("DN at the crop border",
                               "The segmented DN reaches the {faces} border of the cerebellar crop: the nucleus may "
                               "be cut off, or a structure outside the cerebellum was labelled."),
    "dn_same_hemisphere": ("both DN on one side",
                           "Both nuclei lie on the same side of the cerebellar midline: one of them is probably not "
                           "the dentate nucleus."),
    "dn_sides_from_one_component": ("no separate DN pair",
                                    "No two separate nuclei were found: one connected blob was {how} to make the left "
                                    "and right DN. The nuclei may be merged with each other or with a neighbouring "
                                    "structure."),
    "nonfinite_voxels_in_dn": ("NaN/Inf voxels in the DN",
                               "{number} voxels inside the DN are NaN or Inf in the input image. They are left out of "
                               "the mean susceptibility, but the QSM map has holes or artefacts there."),
    # plausibility QC (inference/qc.py)
    "dn_volume_implausible": ("implausible DN volume",
                              "The {side} DN volume is {number} mm\u00b3, outside the plausible range "
                              "{min_volume_mm3}-{max_volume_mm3} mm\u00b3: the nucleus is probably partly missed or "
                              "leaks into neighbouring tissue."),
    "dn_volume_ratio_implausible": ("left/right volumes differ",
                                    "The larger DN is {number} times the volume of the smaller one (limit "
                                    "{max_volume_ratio}): one side is probably partly missed or leaks into a "
                                    "neighbouring structure such as a vein."),
    "dn_lateral_offset_implausible": ("DN too close to / far from the midline",
                                      "The centre of the {side} DN is {number} mm from the cerebellar midline; "
                                      "expected {min_lateral_mm}-{max_lateral_mm} mm. The label probably lies on "
                                      "another structure."),
    "dn_outside_cerebellum_box": ("DN outside the cerebellum",
                                  "The centre of the {side} DN lies outside the bounding box of the cerebellar mask "
                                  "along {axes}: the label is not in the cerebellum."),
    "dn_position_implausible": ("DN in an unexpected part of the cerebellum",
                                "The centre of the {side} DN is not in the anterior, mid-height part of the "
                                "cerebellum: {measures} (position in the cerebellar box, 0 = posterior / inferior "
                                "edge, 1 = anterior / superior edge; expected y {y_range}, z {z_range})."),
    "dn_pair_asymmetric": ("DN pair not symmetric",
                           "The two nuclei do not mirror each other across the midline: {measures} (limits "
                           "{max_pair_offset_mm} mm in y and z, {max_lateral_asymmetry_mm} mm for the distances "
                           "from the midline). One side probably lies on a vein, a neighbouring nucleus or only part "
                           "of the DN."),
    "dn_low_confidence": ("low segmenter confidence",
                          "The segmenter is unsure inside the {side} DN: mean confidence {p_mean}, {p_uncertain} of "
                          "its voxels below {uncertain_probability} (limits: mean at least {min_mean_confidence}, at "
                          "most {max_uncertain_fraction_pct} uncertain voxels)."),
    # failures (no X_seg written): pipeline.FAILURE_REASONS and inference/batch.py (failure records)
    "localizer_empty": ("no cerebellum found",
                        "Failed: the localizer found no cerebellum (empty mask, or a constant image). No segmentation "
                        "was written. Is this a QSM map of the head in ppm that covers the cerebellum?"),
    "no_dn_found": ("no DN found",
                    "Failed: neither dentate nucleus was found in the cerebellar crop. No segmentation was written; "
                    "check the image quality and the DN contrast."),
    "bad_input": ("unreadable input",
                  "Failed: the input could not be read as a usable 3D NIfTI image (see the error message)."),
    "error": ("unexpected error",
              "Failed: an unexpected {value} occurred while this scan was processed (see the error message); the "
              "rest of the batch went on."),
}
FACE_NAMES = {"x-": "left (x-)", "x+": "right (x+)", "y-": "posterior (y-)", "y+": "anterior (y+)",
              "z-": "inferior (z-)", "z+": "superior (z+)"}
AXIS_NAMES = {"x": "x (left-right)", "y": "y (posterior-anterior)", "z": "z (inferior-superior)"}
MEASURE_NAMES = {"dy": "centroids apart in y by", "dz": "centroids apart in z by",
                 "lateral": "distances from the midline differ by", "x": "x =", "y": "y =", "z": "z ="}
SPLIT_NAMES = {"split_at_midline": "cut at the cerebellar midline", "split_at_centroid": "cut at its own centre"}


@dataclass(frozen=True)
class Flag:
    """A parsed flag: ``left_dn_volume_implausible:3100mm3`` -> kind ``dn_volume_implausible``, side ``left``,
    value ``3100mm3``; ``dn_pair_asymmetric:dy=15.0mm,lateral=20.1mm`` -> params ``{"dy": "15.0mm", ...}``."""

    raw: str
    kind: str
    side: str | None
    value: str
    params: dict[str, str] = field(default_factory=dict)


def parse_flag(flag: str) -> Flag:
    """Split a flag (or failure reason) into kind, side, value and ``key=value`` parameters."""
    code, _, value = str(flag).strip().partition(":")
    side = None
    for name in SIDES:
        if code.startswith(f"{name}_"):
            side, code = name, code[len(name) + 1:]
            break
    params = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    return Flag(str(flag), code, side, value, params)


def _g(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _context(flag: Flag, thresholds: Mapping[str, Any] | None) -> dict[str, str]:
    limits = {**asdict(QCThresholds()), **(thresholds or {})}
    number = re.match(r"[-+]?(\d+(\.\d*)?|\.\d+)", flag.value)
    ctx = {key: _g(v) for key, v in limits.items() if not isinstance(v, (list, tuple))}
    ctx.update({
        "side": flag.side or "", "value": flag.value, "number": number.group(0) if number else flag.value,
        "faces": _and([FACE_NAMES.get(f, f) for f in flag.value.split(",") if f]),
        "axes": _and([AXIS_NAMES.get(a, a) for a in flag.value.split(",") if a]),
        "measures": ", ".join(f"{MEASURE_NAMES.get(k, k)} {v.replace('mm', ' mm')}" for k, v in flag.params.items()),
        "how": SPLIT_NAMES.get(flag.value, f"cut ({flag.value})"),
        "p_mean": flag.params.get("mean", "?"),
        "p_uncertain": _percent(flag.params.get("uncertain")),
        "max_uncertain_fraction_pct": _percent(limits.get("max_uncertain_fraction")),
        "y_range": "-".join(_g(v) for v in limits["position_y_range"]),
        "z_range": "-".join(_g(v) for v in limits["position_z_range"]),
    })
    return ctx


def _and(items: list[str]) -> str:
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def _percent(value: Any) -> str:
    try:
        return f"{100 * float(value):.0f} %"
    except (TypeError, ValueError):
        return "?"


def flag_title(flag: str) -> str:
    """Short title of a flag's kind (the flag itself when the kind is unknown)."""
    entry = FLAG_EXPLANATIONS.get(parse_flag(flag).kind)
    return flag if entry is None else entry[0]


def explain_flag(flag: str, thresholds: Mapping[str, Any] | None = None) -> str:
    """One or two plain-English sentences saying what ``flag`` means for this scan (measured value and the
    thresholds it was checked with filled in; ``thresholds``: the case's ``qc.thresholds``, default
    :class:`~.qc.QCThresholds`)."""
    parsed = parse_flag(flag)
    entry = FLAG_EXPLANATIONS.get(parsed.kind)
    if entry is None:
        return f"Flag '{flag}' has no explanation here; see 'python -m dentate_research segment --help'."
    return entry[1].format_map(_context(parsed, thresholds))


# ---------------------------------------------------------------------------------------------------- case data
@dataclass
class ReportCase:
    """One scan of the report: its ``volumes.csv`` row, metadata record and quick-look image."""

    name: str
    status: str
    row: dict[str, Any]
    record: dict[str, Any] | None
    image: bytes | None = None
    image_note: str = ""

    @property
    def flags(self) -> list[str]:
        if self.record is not None and isinstance(self.record.get("flags"), list):
            return [str(f) for f in self.record["flags"]]
        return [f for f in str(self.row.get("flags") or "").split(";") if f]

    @property
    def thresholds(self) -> dict[str, Any] | None:
        qc = (self.record or {}).get("qc") or {}
        return qc.get("thresholds") if isinstance(qc, dict) else None

    def number(self, column: str) -> float | None:
        return _number(self.row.get(column))


@dataclass
class ReportSummary:
    """What a report holds (counts of scans by status) and where it was written."""

    n_scans: int = 0
    n_ok: int = 0
    n_flagged: int = 0
    n_failed: int = 0
    n_incomplete: int = 0
    paths: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        incomplete = f", {self.n_incomplete} incomplete" if self.n_incomplete else ""
        return (f"{self.n_scans} scans: {self.n_ok} pass, {self.n_flagged} flagged, {self.n_failed} failed"
                f"{incomplete}")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def check_report_folder(out_dir: Path | str) -> Path:
    """``out_dir`` if it is a ``segment`` output folder (holds a volumes table); else DataError, one line."""
    out = Path(out_dir)
    hint = "give the output folder of 'python -m dentate_research segment -o OUT_DIR'"
    if not out.exists():
        raise DataError(f"{out}: folder not found; {hint}")
    if not out.is_dir():
        raise DataError(f"{out}: not a folder; {hint}")
    if not (out / VOLUMES_CSV).is_file():
        raise DataError(f"{out}: not a segment output folder (no {VOLUMES_CSV}); {hint}")
    return out


def collect_cases(out_dir: Path | str, *, make_missing_mosaics: bool = True) -> tuple[list[ReportCase], list[str]]:
    """The finished scans of an output folder (failed, flagged, then ok; by name) and the names of case folders
    that are not complete (being written by another process, or interrupted: ``segment --resume`` redoes them).

    A scan is a complete case (its values: the record's ``volumes_row``, the row it committed, even when
    ``volumes.csv`` was not updated yet) or a row of ``volumes.csv`` without a case folder."""
    out = check_report_folder(out_dir)
    frame = read_volumes_table(out / VOLUMES_CSV)
    rows: dict[str, dict[str, Any]] = {}
    if frame is not None:
        for row in frame.astype(object).where(frame.notna(), None).to_dict("records"):
            rows[str(row["case"])] = row
    names = set(rows) | {p.name for p in out.iterdir() if p.is_dir() and not is_temp_file(p)}
    cases, incomplete = [], []
    for name in sorted(names):
        state = case_state(out, name)
        if state == "partial":
            incomplete.append(name)
            continue
        record = load_case_record(out, name) if state == "complete" else None
        row = (record or {}).get("volumes_row")
        if not isinstance(row, dict):
            row = rows.get(name)
        if not isinstance(row, dict):
            continue  # a folder that is not a case (e.g. a --bids-out folder inside OUT)
        status = str(row.get("status") or (record or {}).get("status") or "unknown")
        case = ReportCase(name, status, row, record)
        case.image, case.image_note = case_image(out, case, make_missing=make_missing_mosaics)
        cases.append(case)
    cases.sort(key=lambda c: (STATUS_ORDER.get(c.status, 1), c.name))
    return cases, incomplete


def _png_file(path: Path) -> bytes | None:
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        if data.startswith(PNG_SIGNATURE):
            return data
    return None


def case_image(out_dir: Path, case: ReportCase, *, make_missing: bool = True) -> tuple[bytes | None, str]:
    """``(PNG bytes or None, note)`` for a case: its mosaic; else one made now (and saved) from its files; else its
    overlay PNG; else None and why."""
    paths = case_output_paths(out_dir, case.name)
    if case.status == "failed":
        reason = (case.record or {}).get("failure_reason") or case.row.get("flags") or "failed"
        return None, f"no image: segmentation failed ({reason}), no X_seg was written"
    data = _png_file(paths["mosaic"])
    if data is not None:
        return data, "mosaic"
    if make_missing and case.record is not None:
        data = regenerate_mosaic(out_dir, case.name, case.record)
        if data is not None:
            return data, "mosaic (made for the report)"
    data = _png_file(paths["overlay"])
    if data is not None:
        return data, "overlay (no mosaic)"
    return None, "no image: no mosaic, no overlay and no readable segmentation files"


def regenerate_mosaic(out_dir: Path | str, name: str, record: Mapping[str, Any]) -> bytes | None:
    """Make a missing ``X_mosaic.png`` of a finished case from ``X_cropped`` + ``X_cropped_seg`` (else ``X_seg`` and
    the input path of the record, cropped around the DN); saved next to the overlay when the folder is writable.
    None when neither source is readable."""
    paths = case_output_paths(out_dir, name)
    try:
        if paths["cropped"].is_file() and paths["cropped_seg"].is_file():
            image = load_image(paths["cropped"])
            labels = load_label(paths["cropped_seg"], reference=image).array
            source = paths["cropped"].name
        elif paths["seg"].is_file() and record.get("input") and Path(str(record["input"])).is_file():
            full = load_image(Path(str(record["input"])))
            seg = load_label(paths["seg"], reference=full).array
            box = bbox_from_mask(seg > 0, full.affine, MOSAIC_MARGIN_MM)
            if box is None:
                return None
            image, labels = crop(full, box), seg[box.slices]
            source = f"{paths['seg'].name} + {record['input']}"
        else:
            return None
        data = mosaic_png(image, labels, title=f"{name}: {record.get('status', '')}")
    except (DataError, OSError, ValueError) as exc:
        log.warning("%s: cannot make the mosaic for the report (%s)", name, exc)
        return None
    try:
        write_bytes_atomic(paths["mosaic"], data)
        log.info("%s: made the missing %s from %s", name, paths["mosaic"].name, source)
    except OSError as exc:  # a read-only case folder: the report still shows it
        log.warning("%s: could not save %s (%s)", name, paths["mosaic"], exc)
    return data


# ----------------------------------------------------------------------------------------------------- group plots
@dataclass(frozen=True)
class Outlier:
    """A value marked in the group plots."""

    case: str
    side: str
    measure: str
    value: float
    why: str


def find_outliers(values: Mapping[str, float], measure: str, side: str, plausible: tuple[float, float] | None = None
                  ) -> list[Outlier]:
    """Values beyond 1.5 IQR of the quartiles (with 4 or more values) or outside ``plausible`` (the QC range)."""
    out = []
    arr = np.asarray(list(values.values()), dtype=float)
    fences = None
    if arr.size >= 4:
        q1, q3 = np.percentile(arr, [25, 75])
        fences = (q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1))
    for case, value in values.items():
        why = []
        if fences is not None and not fences[0] <= value <= fences[1]:
            why.append(f"beyond 1.5 IQR of the quartiles ({_value(fences[0])} to {_value(fences[1])})")
        if plausible is not None and not plausible[0] <= value <= plausible[1]:
            why.append(f"outside the QC range {plausible[0]:g}-{plausible[1]:g}")
        if why:
            out.append(Outlier(case, side, measure, float(value), "; ".join(why)))
    return out


def _side_values(cases: Sequence[ReportCase], column: str) -> dict[str, float]:
    values = {}
    for case in cases:
        value = case.number(column)
        if case.status != "failed" and value is not None:
            values[case.name] = value
    return values


def group_plots_png(cases: Sequence[ReportCase], thresholds: Mapping[str, Any] | None = None
                    ) -> tuple[bytes | None, list[Outlier]]:
    """One PNG with three panels - DN volume per side (QC range shaded, outliers ringed and named), left vs right
    volume (identity and volume-ratio limit lines), mean susceptibility per side - and the outliers marked; None
    when no scan has a volume."""
    from matplotlib.figure import Figure

    limits = {**asdict(QCThresholds()), **(thresholds or {})}
    plausible = (float(limits["min_volume_mm3"]), float(limits["max_volume_mm3"]))
    volumes = {side: _side_values(cases, f"{side}_volume_mm3") for side in SIDES}
    chi = {side: _side_values(cases, f"{side}_mean_susceptibility_ppm") for side in SIDES}
    if not any(volumes.values()):
        return None, []
    outliers = [o for side in SIDES for o in find_outliers(volumes[side], "volume (mm\u00b3)", side, plausible)]
    outliers += [o for side in SIDES for o in find_outliers(chi[side], "mean susceptibility (ppm)", side)]
    flagged = {c.name for c in cases if c.status == "flagged"}
    fig = Figure(figsize=(13.5, 4.2), dpi=80)
    ax_vol, ax_lr, ax_chi = fig.subplots(1, 3)
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture

    def strip(ax: Any, data: dict[str, dict[str, float]], measure: str, ylabel: str) -> None:
        marked = {(o.case, o.side) for o in outliers if o.measure == measure}
        labelled = 0
        for pos, side in enumerate(SIDES):
            names, vals = list(data[side]), np.asarray(list(data[side].values()), dtype=float)
            if not vals.size:
                continue
            if vals.size >= 2:
                ax.boxplot(vals, positions=[pos], widths=0.5, showfliers=False, medianprops={"color": "black"})
            xs = pos + rng.uniform(-0.15, 0.15, vals.size)
            colour = DN_COLOURS[LEFT_DN if side == "left" else RIGHT_DN]
            is_flagged = np.array([name in flagged for name in names])
            is_marked = np.array([(name, side) in marked for name in names])
            ax.scatter(xs[~is_flagged], vals[~is_flagged], s=22, color=colour, alpha=0.8, zorder=3)  # one call each:
            ax.scatter(xs[is_flagged], vals[is_flagged], s=26, color=colour, marker="D", alpha=0.9,  # 300 scans
                       edgecolors="black", linewidths=0.6, zorder=3)  # draw in ~0.1 s
            ax.scatter(xs[is_marked], vals[is_marked], s=110, facecolors="none", edgecolors="black", linewidths=1.2,
                       zorder=4)
            for i in np.flatnonzero(is_marked):
                if labelled < MAX_PLOT_LABELS:
                    ax.annotate(names[i], (xs[i], vals[i]), xytext=(6, 2), textcoords="offset points", fontsize=7)
                    labelled += 1
        ax.set_xticks(range(len(SIDES)), [f"{s} DN" for s in SIDES])
        ax.set_xlim(-0.6, len(SIDES) - 0.4)
        ax.set_ylabel(ylabel)

    strip(ax_vol, volumes, "volume (mm\u00b3)", "DN volume (mm\u00b3)")
    every = [v for side in SIDES for v in volumes[side].values()]
    pad = max(0.15 * max(max(every) - min(every), 0.2 * max(every)), 1.0)
    ax_vol.set_ylim(max(0.0, min(every) - pad), max(every) + pad)  # zoom on the data; the QC band may extend beyond
    ax_vol.axhspan(*plausible, color="green", alpha=0.08, label=f"QC plausible range {plausible[0]:g}-{plausible[1]:g}")
    ax_vol.set_title("DN volume per side (ringed: outlier)", fontsize=10)
    ax_vol.legend(loc="upper right", fontsize=7, frameon=False)

    both = [n for n in volumes["left"] if n in volumes["right"]]
    if both:
        left = np.array([volumes["left"][n] for n in both])
        right = np.array([volumes["right"][n] for n in both])
        top = float(max(left.max(), right.max(), plausible[0]) * 1.15)
        line = np.array([0.0, top])
        ratio = float(limits["max_volume_ratio"])
        ax_lr.plot(line, line, color="grey", lw=1, label="left = right")
        ax_lr.plot(line, line * ratio, color="grey", lw=0.8, ls="--", label=f"volume ratio {ratio:g}")
        ax_lr.plot(line, line / ratio, color="grey", lw=0.8, ls="--")
        is_flagged = np.array([n in flagged for n in both])
        ax_lr.scatter(left[~is_flagged], right[~is_flagged], s=24, color="tab:green", label="pass", zorder=3)
        ax_lr.scatter(left[is_flagged], right[is_flagged], s=30, color="tab:orange", marker="D",
                      edgecolors="black", linewidths=0.6, label="flagged", zorder=3)
        odd = {o.case for o in outliers if o.measure.startswith("volume")} | flagged
        for n, x, y in [(n, x, y) for n, x, y in zip(both, left, right, strict=True) if n in odd][:MAX_PLOT_LABELS]:
            ax_lr.annotate(n, (x, y), xytext=(5, 2), textcoords="offset points", fontsize=7)
        ax_lr.set_xlim(0, top)
        ax_lr.set_ylim(0, top)
        ax_lr.legend(loc="upper left", fontsize=7, frameon=False)
    ax_lr.set_xlabel("left DN volume (mm\u00b3)")
    ax_lr.set_ylabel("right DN volume (mm\u00b3)")
    ax_lr.set_title("left vs right DN volume", fontsize=10)

    strip(ax_chi, chi, "mean susceptibility (ppm)", "mean susceptibility (ppm)")
    ax_chi.set_title("mean susceptibility per side (ringed: outlier)", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.12, wspace=0.3)
    return figure_png_bytes(fig), outliers


# ------------------------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1240px;
padding:16px 24px;color:#1d2430;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;border-bottom:2px solid #dfe3ea;padding-bottom:4px;
margin-top:28px}h3{font-size:1.05em;margin:0 0 6px}.sub{color:#5b6475;margin:0}
.counts{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}.count{border-radius:8px;padding:10px 16px;
min-width:110px;background:#f2f4f8}.count b{display:block;font-size:1.8em}.count.ok{background:#e3f4e6}
.count.flagged{background:#fff1d6}.count.failed{background:#fde2e1}.count.incomplete{background:#e8e8f0}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}td,th{border:1px solid #dfe3ea;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f2f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:170px}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:.8em;font-weight:600;vertical-align:middle}
.badge.ok{background:#cdebd3;color:#185c2a}.badge.flagged{background:#ffe0a3;color:#7a4b00}
.badge.failed{background:#f9c2bf;color:#8a1c14}.badge.unknown{background:#ddd}
.review{border:1px solid #e7c98a;border-left:6px solid #e0a100;border-radius:6px;padding:10px 14px;margin:12px 0;
display:flex;gap:16px;flex-wrap:wrap}.review.failed{border-color:#e9a7a2;border-left-color:#c62d22}
.review .text{flex:1 1 420px;min-width:300px}.review ul{margin:6px 0;padding-left:18px}.review li{margin:3px 0}
code{background:#f2f4f8;padding:0 4px;border-radius:3px;font-size:.9em}.path{color:#5b6475;font-size:.85em;
word-break:break-all}.error{color:#8a1c14}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
figure.case{margin:0;border:1px solid #dfe3ea;border-radius:6px;padding:6px;background:#fafbfc}
figure.case.flagged{border-color:#e0a100;background:#fffaf0}figure.case.failed{border-color:#c62d22;
background:#fff5f4}figure figcaption{font-size:.82em;margin-top:4px}img{max-width:100%;height:auto;display:block}
.noimage{display:flex;align-items:center;justify-content:center;min-height:120px;background:#eef0f4;color:#5b6475;
border-radius:4px;font-size:.85em;text-align:center;padding:8px}
details{margin:6px 0}summary{cursor:pointer;color:#2a55a0}pre{white-space:pre-wrap;font-size:.8em;
background:#f6f7f9;padding:8px;border-radius:4px;max-height:420px;overflow:auto}
.legend span{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle;margin:0 4px 0 10px}
footer{margin-top:32px;color:#5b6475;font-size:.85em}
"""


def _img(data: bytes | None, alt: str, note: str, width: int | None = None) -> str:
    if data is None:
        return f'<div class="noimage">{escape(note)}</div>'
    size = f' width="{width}"' if width else ""
    return (f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" alt="{escape(alt)}"'
            f'{size}>')


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _value(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _badge(status: str) -> str:
    kind = status if status in STATUS_ORDER else "unknown"
    label = "pass" if status == "ok" else status
    return f'<span class="badge {kind}">{escape(label)}</span>'


def _when(record: Mapping[str, Any] | None) -> _dt.datetime | None:
    with contextlib.suppress(TypeError, ValueError):
        return _dt.datetime.fromisoformat(str((record or {}).get("created_utc")))
    return None


def _run_time(cases: Sequence[ReportCase]) -> str:
    seconds = [sum(float(v) for v in ((c.record or {}).get("timings_s") or {}).values()
                   if isinstance(v, (int, float))) for c in cases if c.record is not None]
    seconds = [s for s in seconds if s > 0]
    parts = []
    if seconds:
        parts.append(f"{sum(seconds):.1f} s processing in total, {np.mean(seconds):.1f} s per scan (read, localize, "
                     "crop, segment, post-process, QC, write; model loading not included)")
    times = sorted(t for t in (_when(c.record) for c in cases) if t is not None)
    if times:
        span = times[-1] - times[0]
        parts.append(f"scans finished {times[0]:%Y-%m-%d %H:%M:%S} to {times[-1]:%Y-%m-%d %H:%M:%S} UTC "
                     f"(span {span})")
    return "; ".join(parts) or "n/a (no timing recorded)"


def _model_key(models: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(models.get("card_name") or ""), str(models.get("model_dir") or ""), str(models.get("source") or ""))


def _models_html(cases: Sequence[ReportCase]) -> str:
    groups: dict[tuple[str, str, str], tuple[dict[str, Any], int]] = {}
    for case in cases:
        models = (case.record or {}).get("models")
        if isinstance(models, dict):
            key = _model_key(models)
            groups[key] = (groups.get(key, (models, 0))[0], groups.get(key, (models, 0))[1] + 1)
    if not groups:
        return "<p>No model recorded (no metadata record with a <code>models</code> section).</p>"
    parts = []
    for (card_name, model_dir, source), (models, count) in groups.items():
        rows = [("model", f"<b>{escape(card_name or 'unnamed')}</b> ({count} scan{'s' if count != 1 else ''})"),
                ("source", escape(source or "n/a")), ("folder", f'<span class="path">{escape(model_dir or "n/a")}'
                                                               "</span>")]
        if models.get("shadows"):
            rows.append(("shadows", f'the shipped model <span class="path">{escape(str(models["shadows"]))}</span>'))
        cards = {}
        for stage in ("localization", "segmentation"):
            info = models.get(stage) if isinstance(models.get(stage), dict) else {}
            card = info.get("model_json") if isinstance(info.get("model_json"), dict) else {}
            cards[stage] = card
            spacing = card.get("target_spacing_mm")
            rows.append((stage, escape(", ".join(part for part in (
                f"{card.get('arch', '?')} ({card.get('framework', '?')})",
                f"spacing {spacing} mm" if spacing else "", f"patch {card.get('patch_size')}"
                if card.get("patch_size") else "", f"classes {card.get('classes')}" if card.get("classes") else "",
                f"label scheme {card.get('label_scheme')}" if card.get("label_scheme") else "") if part))
                + f'<br><span class="path">{escape(str(info.get("dir") or ""))}</span>'))
        table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        parts.append(f'<table class="kv">{table}</table>')
        card_md = Path(model_dir) / "MODEL_CARD.md" if model_dir else None
        if card_md is not None and card_md.is_file():
            with contextlib.suppress(OSError):
                parts.append(f"<details><summary>model card ({escape(str(card_md))})</summary>"
                             f"<pre>{escape(card_md.read_text(errors='replace'))}</pre></details>")
        parts.append("<details><summary>model.json of both stages</summary>"
                     f"<pre>{escape(json.dumps(cards, indent=1, default=str))}</pre></details>")
    return "".join(parts)


def _flag_list(case: ReportCase) -> str:
    items = []
    for flag in case.flags:
        items.append(f"<li><code>{escape(flag)}</code> <b>{escape(flag_title(flag))}</b>: "
                     f"{escape(explain_flag(flag, case.thresholds))}</li>")
    return f'<ul class="flags">{"".join(items)}</ul>' if items else ""


def _volumes_text(case: ReportCase) -> str:
    return " \u00b7 ".join(f"{side} {_fmt(case.number(f'{side}_volume_mm3'), '.0f')} mm\u00b3, "
                           f"{_fmt(case.number(f'{side}_mean_susceptibility_ppm'), '.4f')} ppm" for side in SIDES)


def _review_html(case: ReportCase) -> str:
    record = case.record or {}
    parts = [f"<h3>{escape(case.name)} {_badge(case.status)}</h3>",
             f'<div class="path">{escape(str(case.row.get("input") or record.get("input") or ""))}</div>']
    if case.status != "failed":
        parts.append(f"<div>{escape(_volumes_text(case))}</div>")
    parts.append(_flag_list(case))
    if record.get("error"):
        parts.append(f'<div class="error">error: {escape(str(record["error"]))}</div>')
    warnings = record.get("warnings") or []
    if warnings:
        parts.append("<details><summary>warnings</summary><ul>"
                     + "".join(f"<li>{escape(str(w))}</li>" for w in warnings) + "</ul></details>")
    image = _img(case.image, f"{case.name} mosaic", case.image_note)
    return (f'<article class="case review {escape(case.status)}" id="review-{escape(case.name)}" '
            f'data-case="{escape(case.name)}" data-status="{escape(case.status)}"><div class="text">{"".join(parts)}'
            f'</div><div class="image">{image}</div></article>')


def _table_html(cases: Sequence[ReportCase]) -> str:
    head = ("<tr><th>scan</th><th>status</th><th>QC</th><th>left mm\u00b3</th><th>right mm\u00b3</th><th>left ppm</th>"
            "<th>right ppm</th><th>ratio</th><th>flags</th></tr>")
    body = []
    for c in cases:
        cells = [f'<a href="#scan-{escape(c.name)}">{escape(c.name)}</a>', _badge(c.status),
                 escape(str(c.row.get("qc_status") or ""))]
        cells += [f'<td class="num">{_fmt(c.number(col), spec)}</td>' for col, spec in (
            ("left_volume_mm3", ".0f"), ("right_volume_mm3", ".0f"), ("left_mean_susceptibility_ppm", ".4f"),
            ("right_mean_susceptibility_ppm", ".4f"), ("volume_ratio", ".2f"))]
        cells.append("<br>".join(f"<code>{escape(f)}</code>" for f in c.flags))
        body.append("<tr>" + "".join(x if x.startswith("<td") else f"<td>{x}</td>" for x in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _outliers_html(outliers: Sequence[Outlier]) -> str:
    if not outliers:
        return "<p>No outlier: every value lies within 1.5 IQR of the quartiles and inside the QC range.</p>"
    rows = "".join(f'<tr><td><a href="#scan-{escape(o.case)}">{escape(o.case)}</a></td><td>{escape(o.side)}</td>'
                   f'<td>{escape(o.measure)}</td><td class="num">{_value(o.value)}</td><td>{escape(o.why)}</td></tr>'
                   for o in outliers)
    return ("<table><tr><th>scan</th><th>side</th><th>measure</th><th>value</th><th>why marked</th></tr>"
            f"{rows}</table>")


def render_report(out_dir: Path | str, *, make_missing_mosaics: bool = True) -> tuple[str, ReportSummary]:
    """The HTML text of the report of ``out_dir`` and its counts (reads the folder; writes only missing mosaics)."""
    from dentate_research import __version__

    out = Path(out_dir)
    cases, incomplete = collect_cases(out, make_missing_mosaics=make_missing_mosaics)
    count = {status: sum(c.status == status for c in cases) for status in STATUS_ORDER}
    summary = ReportSummary(len(cases), count["ok"], count["flagged"], count["failed"], len(incomplete))
    review = [c for c in cases if c.status != "ok"]
    thresholds = next((c.thresholds for c in cases if c.thresholds), None)
    plot, outliers = group_plots_png(cases, thresholds)
    versions = sorted({str(((c.record or {}).get("versions") or {}).get("dentate_research") or "")
                       for c in cases} - {""})
    no_conf = sum(str(c.row.get("qc_status")) == "pass_without_confidence" for c in cases)
    flag_counts: dict[str, int] = {}
    for case in cases:
        for flag in case.flags:
            key = parse_flag(flag).kind
            flag_counts[key] = flag_counts.get(key, 0) + 1
    now = _dt.datetime.now(_dt.timezone.utc)
    counts = [("scans", summary.n_scans, ""), ("pass", summary.n_ok, "ok"), ("flagged", summary.n_flagged, "flagged"),
              ("failed", summary.n_failed, "failed")]
    if incomplete:
        counts.append(("incomplete", len(incomplete), "incomplete"))
    kv = [("run time", escape(_run_time(cases))),
          ("software", escape(f"dentate_research {', '.join(versions) or 'n/a'} (report: {__version__})")),
          ("QC", escape(f"{no_conf} of the passing scans passed without the confidence check (the model gives no "
                        "probabilities)" if no_conf else "every check ran on the passing scans"))]
    if flag_counts:
        kv.append(("flags in this batch", "<br>".join(
            f"{n} \u00d7 {escape(FLAG_EXPLANATIONS[k][0] if k in FLAG_EXPLANATIONS else k)} (<code>{escape(k)}</code>)"
            for k, n in sorted(flag_counts.items(), key=lambda item: -item[1]))))
    if incomplete:
        kv.append(("incomplete", escape(f"{', '.join(incomplete)}: being written by another process, or left by an "
                                        "interruption ('segment --resume' redoes them); not counted as scans")))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>DN segmentation QC report: {escape(out.name or str(out))}</title><style>{_CSS}</style></head><body>",
        "<header><h1>Dentate nucleus segmentation: QC report</h1>",
        f'<p class="sub">{escape(str(out.resolve()))} \u00b7 built {now:%Y-%m-%d %H:%M:%S} UTC from volumes.csv and '
        "the per-scan metadata</p></header>",
        '<section id="summary"><h2>Summary</h2><div class="counts">',
        "".join(f'<div class="count {cls}"><b>{n}</b>{label}</div>' for label, n, cls in counts), "</div>",
        '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in kv) + "</table>",
        "<h3>Model</h3>", _models_html(cases), "</section>",
        f'<section id="review"><h2>Needs review: {summary.n_failed} failed, {summary.n_flagged} flagged</h2>',
        "".join(_review_html(c) for c in review) if review else "<p>No scan needs review.</p>", "</section>",
        '<section id="group"><h2>Group plots</h2>',
        _img(plot, "group plots: DN volume per side, left vs right volume, mean susceptibility per side",
             "no image: no segmented scan yet"),
        "<h3>Marked values</h3>", _outliers_html(outliers), "</section>",
        f'<section id="scans"><h2>All scans ({summary.n_scans})</h2>',
        '<p class="legend">Mosaics: one row per nucleus, axial / coronal / sagittal through its centre, canonical RAS '
        f'(L / R marks: the subject\'s left is on the left). <span style="background:{_css_colour(LEFT_DN)}"></span>'
        f'1 = left DN <span style="background:{_css_colour(RIGHT_DN)}"></span>2 = right DN</p>',
        _table_html(cases), '<div class="gallery">',
        "".join(f'<figure class="case {escape(c.status)}" id="scan-{escape(c.name)}" data-case="{escape(c.name)}" '
                f'data-status="{escape(c.status)}">{_img(c.image, f"{c.name} mosaic", c.image_note)}'
                f"<figcaption><b>{escape(c.name)}</b> {_badge(c.status)}<br>"
                f"{escape(_volumes_text(c) if c.status != 'failed' else ', '.join(c.flags))}</figcaption></figure>"
                for c in cases),
        "</div></section>",
        "<footer>Rebuilt after every finished scan by <code>segment</code>; rebuild it with <code>python -m "
        f"dentate_research report {escape(str(out))}</code>. Flags: <code>python -m dentate_research segment "
        "--help</code>.</footer></body></html>",
    ]
    return "\n".join(parts), summary


def _css_colour(value: int) -> str:
    r, g, b = (int(round(255 * c)) for c in DN_COLOURS[value])
    return f"rgb({r},{g},{b})"


def write_report(out_dir: Path | str, also_to: Sequence[Path | str] = (), *,
                 make_missing_mosaics: bool = True) -> ReportSummary:
    """Rebuild ``out_dir/report.html`` (and the same file in each folder of ``also_to``, e.g. the ``--bids-out``
    folder) from what is on disk, under the report lock, atomically. DataError (one line) when ``out_dir`` is not a
    ``segment`` output folder."""
    out = check_report_folder(out_dir)
    t0 = time.perf_counter()
    with file_lock(out / REPORT_LOCK):
        for leftover in out.glob(f"{TEMP_PREFIX}*-{REPORT_HTML}"):  # every writer holds the lock: stale
            with contextlib.suppress(OSError):
                leftover.unlink()
        text, summary = render_report(out, make_missing_mosaics=make_missing_mosaics)
        summary.paths = [write_text_atomic(out / REPORT_HTML, text)]
        summary.paths += [write_text_atomic(Path(folder) / REPORT_HTML, text) for folder in also_to]
    summary.seconds = time.perf_counter() - t0
    log.debug("%s: %s in %.2f s", summary.paths[0], summary.line(), summary.seconds)
    return summary
