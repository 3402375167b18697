"""report.html, the batch QC report of ``segment``: contents, order, images, rebuild, the ``report`` verb, a browser.

The batch is real: NIfTI scans of the toy anatomy (``inference_helpers.toy_scan``) go through ``segment``'s command
line, the pipeline, post-processing, QC and the writer. Only the two networks are replaced by thresholds (the
cerebellum is brighter than 0.04 ppm, the DN than 0.15 ppm), so the batch takes seconds: one scan is ok, one ok scan
is stored LAS, one has an enlarged left DN (flagged: implausible volume and ratio) and one is blank (failed).
"""

from __future__ import annotations

import ast
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from inference_helpers import toy_scan
from PIL import Image
from scipy import ndimage

from dentate_research.cli.main import main
from dentate_research.data.io import Volume, load_image, load_label, save_nifti
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN
from dentate_research.inference import outputs, report
from dentate_research.inference.outputs import case_output_paths, case_state, mosaic_png, ras_slice_panel
from dentate_research.inference.pipeline import FAILURE_REASONS
from dentate_research.inference.report import (
    FLAG_EXPLANATIONS,
    explain_flag,
    find_outliers,
    parse_flag,
    regenerate_mosaic,
    render_report,
)

PACKAGE = Path(report.__file__).resolve().parents[1]
CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


class ThresholdModel:
    """A stage model (StageModel protocol) that labels voxels above a threshold (ppm) on the input grid."""

    def __init__(self, card: dict, threshold: float):
        self.card = card
        self.threshold = threshold

    def predict(self, volume):
        return (volume.array > self.threshold).astype(np.uint8)


def threshold_stage(run_dir, stage, device="cpu"):
    card = json.loads((Path(run_dir) / "model.json").read_text())
    assert card["stage"] == stage
    return ThresholdModel(card, 0.04 if stage == "localization" else 0.15)


def write_threshold_model(folder: Path) -> Path:
    common = {"arch": "threshold", "framework": "test", "target_spacing_mm": [3.0, 3.0, 3.0], "patch_size": [24] * 3}
    for stage, extra in (("localization", {"classes": ["background", "cerebellum"]}),
                         ("segmentation", {"classes": ["background", "dn"], "label_scheme": "merged"})):
        (folder / stage).mkdir(parents=True)
        (folder / stage / "model.json").write_text(json.dumps({"stage": stage, **common, **extra}))
    (folder / "MODEL_CARD.md").write_text("# Threshold test model\n\nThresholds, no network.\n")
    return folder


def write_scans(folder: Path) -> Path:
    folder.mkdir(parents=True)
    image, _, _, affine = toy_scan(60)
    save_nifti(image, affine, folder / "ok_a.nii.gz")
    image, _, _, affine = toy_scan(61)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = image.shape[0] - 1
    save_nifti(image[::-1].copy(), affine @ flip, folder / "ok_las.nii.gz")  # same anatomy, stored LAS
    image, labels, _, affine = toy_scan(62)
    image[ndimage.binary_dilation(labels == LEFT_DN, iterations=3)] = 0.25  # left DN ~4x its volume
    save_nifti(image, affine, folder / "big_left.nii.gz")
    save_nifti(np.zeros(image.shape, np.float32), affine, folder / "blank.nii.gz")
    return folder


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """(output folder, model folder) of one real segment batch: 2 ok, 1 flagged, 1 failed scan."""
    root = tmp_path_factory.mktemp("report_batch")
    model = write_threshold_model(root / "model")
    scans = write_scans(root / "scans")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dentate_research.runtime.stage_model.load_stage", threshold_stage)
        code = main(["segment", "-i", str(scans), "-o", str(root / "out"), "--model", str(model),
                     "--bids-out", str(root / "derivatives")])
    assert code == 3  # the worst input: the blank scan failed
    return root / "out", model


def copy_batch(batch, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(batch[0], out)
    return out


class Page(HTMLParser):
    """Cases (``data-case`` / ``data-status`` in document order) and images of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.cases: list[tuple[str, str, str]] = []
        self.images: list[dict[str, str | None]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "data-case" in attributes:
            self.cases.append((tag, attributes["data-case"], attributes.get("data-status")))
        if tag == "img":
            self.images.append(attributes)


def png_size(uri: str | None) -> tuple[int, int]:
    """Decode a data URI and open it as a PNG (fails on anything else)."""
    assert uri is not None and uri.startswith("data:image/png;base64,"), (uri or "")[:60]
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def summary_counts(text: str) -> dict[str, int]:
    """The count boxes of the summary: {"scans": n, "pass": n, ...}."""
    return {label: int(n) for n, label in re.findall(r'<div class="count[^"]*"><b>(\d+)</b>(\w+)</div>', text)}


# --------------------------------------------------------------------------------------------- the segment batch
def test_segment_writes_the_report_failed_and_flagged_first(batch):
    out, _ = batch
    text = (out / "report.html").read_text()
    assert (out.parent / "derivatives" / "report.html").read_text() == text  # --bids-out gets the same report
    assert summary_counts(text) == {"scans": 4, "pass": 2, "flagged": 1, "failed": 1}
    table = pd.read_csv(out / "volumes.csv").set_index("case")
    assert table.loc["big_left", "status"] == "flagged" and table.loc["blank", "status"] == "failed"
    page = Page(text)
    gallery = [(case, status) for tag, case, status in page.cases if tag == "figure"]
    assert gallery == [("blank", "failed"), ("big_left", "flagged"), ("ok_a", "ok"), ("ok_las", "ok")]
    review = [case for tag, case, _ in page.cases if tag == "article"]
    assert review == ["blank", "big_left"] and text.index('id="review-big_left"') < text.index('id="scan-ok_a"')
    # flags explained in words, with the measured value and the threshold
    flagged = text[text.index('id="review-big_left"'):text.index('id="group"')]
    assert "left_dn_volume_implausible:" in flagged and "outside the plausible range 250-2500 mm" in flagged
    assert "times the volume of the smaller one" in flagged  # dn_volume_ratio_implausible
    assert "the localizer found no cerebellum" in text
    # model name and card, from the metadata; every scan has its mosaic next to the overlay
    assert "Threshold test model" in text and "Thresholds, no network." in text
    for name in ("ok_a", "ok_las", "big_left"):
        assert case_output_paths(out, name)["mosaic"].read_bytes().startswith(b"\x89PNG")
        assert json.loads(case_output_paths(out, name)["metadata"].read_text())["outputs"]["mosaic"]
    assert "no image: segmentation failed (localizer_empty)" in text
    assert len(page.images) == 3 + 1 + 1  # gallery mosaics, group plots, the flagged scan's mosaic in the review
    for image in page.images:
        png_size(image.get("src"))
    assert "<script" not in text and "http://" not in text and "https://" not in text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium; "
                                             ".ci/run installs it)")
def test_report_renders_in_headless_chromium(batch, tmp_path):
    out, _ = batch
    html_path = out / "report.html"
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
         "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Page(proc.stdout)
    source = Page(html_path.read_text())
    # (a) the flagged (and failed) scans come before the ok ones, in the review and in the gallery
    statuses = [status for _, _, status in dom.cases]
    assert statuses.index("flagged") < statuses.index("ok")
    assert [s for tag, _, s in dom.cases if tag == "figure"] == ["failed", "flagged", "ok", "ok"]
    # (b) no broken image: the rendered DOM has every image of the file, each a valid PNG data URI
    assert len(dom.images) == len(source.images) == 5
    sizes = [png_size(image.get("src")) for image in dom.images]
    assert all(w > 100 and h > 100 for w, h in sizes), sizes
    assert "left_dn_volume_implausible" in proc.stdout
    # (c) the screenshot is a non-blank PNG of the window
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


# ---------------------------------------------------------------------------------------------- flag vocabulary
def _sample_flag(node: ast.AST) -> str | None:
    """A representative flag of a string constant or f-string: a formatted part before ':' becomes 'left' (the side),
    after it '1' (the measured value)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    text = ""
    for part in node.values:
        if isinstance(part, ast.Constant):
            text += str(part.value)
        else:
            text += "1" if ":" in text else "left"
    return text


def emitted_flags() -> set[str]:
    """Sample flags of every kind the pipeline, the QC and the batch API's failure records emit, read from the code."""
    found = set()
    for module in ("inference/pipeline.py", "inference/qc.py", "inference/batch.py"):
        tree = ast.parse((PACKAGE / module).read_text())
        assigned = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = []
            if name in ("append", "extend") and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and func.value.id.endswith("flags") and node.args:
                arg = node.args[0]
                args.append(arg.elt if isinstance(arg, ast.GeneratorExp) else arg)
            elif name == "SegmentationError" and node.args:
                args.append(node.args[0])
            elif name == "_record_error" and len(node.args) > 1:
                arg = node.args[1]
                args.append(assigned.get(arg.id, arg) if isinstance(arg, ast.Name) else arg)
            found |= {flag for flag in map(_sample_flag, args) if flag}
    return found


def test_every_flag_kind_the_code_can_emit_has_an_explanation():
    flags = emitted_flags()
    kinds = {parse_flag(flag).kind for flag in flags}
    # the scan must see the whole vocabulary (6 pipeline, 7 QC, 4 failure kinds), so it cannot pass vacuously
    assert len(kinds) >= 17 and {"dn_empty", "dn_volume_implausible", "dn_low_confidence", "error"} <= kinds, kinds
    assert set(FAILURE_REASONS) <= kinds
    missing = sorted(kinds - set(FLAG_EXPLANATIONS))
    assert not missing, f"flag kinds without an explanation in inference/report.py FLAG_EXPLANATIONS: {missing}"
    for flag in flags:
        text = explain_flag(flag)
        assert "{" not in text and "no explanation" not in text and len(text) > 40, (flag, text)


def test_flag_parameters_are_parsed_into_the_explanation():
    flag = parse_flag("left_dn_volume_implausible:3100mm3")
    assert (flag.kind, flag.side, flag.value) == ("dn_volume_implausible", "left", "3100mm3")
    assert "left DN volume is 3100 mm\u00b3, outside the plausible range 250-2500" in explain_flag(flag.raw)
    assert "outside the plausible range 200-3000" in explain_flag(
        flag.raw, {"min_volume_mm3": 200.0, "max_volume_mm3": 3000.0})  # the case's own thresholds
    pair = parse_flag("dn_pair_asymmetric:dy=15.2mm,lateral=20.0mm")
    assert pair.side is None and pair.params == {"dy": "15.2mm", "lateral": "20.0mm"}
    assert "centroids apart in y by 15.2 mm" in explain_flag(pair.raw)
    fov = explain_flag("cerebellum_touches_fov:x-,x+,z+")
    assert "reaches the left (x-), right (x+) and superior (z+) border" in fov
    low = explain_flag("right_dn_low_confidence:mean=0.62,uncertain=0.55")
    assert "right DN: mean confidence 0.62, 55 % of its voxels below 0.7" in low
    assert "cut at the cerebellar midline" in explain_flag("dn_sides_from_one_component:split_at_midline")
    assert "unexpected RuntimeError" in explain_flag("error:RuntimeError")
    assert "no explanation" in explain_flag("brand_new_flag:1")


# ----------------------------------------------------------------------------------- rebuild and the report verb
def test_report_verb_rebuilds_after_an_interruption(batch, tmp_path, capsys):
    out = copy_batch(batch, tmp_path)
    (out / "report.html").unlink()
    case_output_paths(out, "ok_a")["metadata"].unlink()  # killed while writing ok_a: X_seg without its record
    frame = pd.read_csv(out / "volumes.csv")
    frame[frame["case"] != "ok_las"].to_csv(out / "volumes.csv", index=False)  # killed before its row was added
    assert case_state(out, "ok_a") == "partial"
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 scans: 1 pass, 1 flagged, 1 failed, 1 incomplete" in printed
    text = (out / "report.html").read_text()
    assert summary_counts(text) == {"scans": 3, "pass": 1, "flagged": 1, "failed": 1, "incomplete": 1}
    assert 'data-case="ok_las"' in text and 'data-case="ok_a"' not in text and "ok_a: being written" in text
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_old_output_folders_get_mosaics_else_the_overlay_else_a_note(batch, tmp_path):
    out = copy_batch(batch, tmp_path)
    for name in ("ok_a", "ok_las", "big_left"):  # the layout before mosaics: none written, none listed
        paths = case_output_paths(out, name)
        paths["mosaic"].unlink()
        record = json.loads(paths["metadata"].read_text())
        del record["outputs"]["mosaic"]
        paths["metadata"].write_text(json.dumps(record))
    for name, keys in (("ok_las", ("overlay",)), ("ok_a", ("cropped", "cropped_seg"))):
        paths = case_output_paths(out, name)  # ok_las as if written with --no-overlay; ok_a without its crops
        record = json.loads(paths["metadata"].read_text())
        for key in keys:
            paths[key].unlink()
            del record["outputs"][key]
        paths["metadata"].write_text(json.dumps(record))

    text, _ = render_report(out, make_missing_mosaics=False)  # mosaics not made: the overlay, else a note
    page = Page(text)
    assert text.count('class="noimage"') == 3  # ok_las (no mosaic, no overlay); blank (failed) in review + gallery
    assert len(page.images) == 2 + 1 + 1  # ok_a and big_left overlays, group plots, big_left in the review
    for image in page.images:
        png_size(image.get("src"))

    assert main(["report", str(out)]) == 0  # made from the saved crops (ok_a: X_seg + input) and kept
    for name in ("ok_a", "ok_las", "big_left"):
        assert case_output_paths(out, name)["mosaic"].read_bytes().startswith(b"\x89PNG")
        assert case_state(out, name) == "complete"  # an unlisted mosaic does not make the case partial
    assert len(Page((out / "report.html").read_text()).images) == 5


def test_report_verb_refuses_a_folder_that_is_not_a_segment_output(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    for path, message in ((tmp_path / "notes", "not a segment output folder (no volumes.csv)"),
                          (tmp_path / "missing", "folder not found")):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and message in err and "Traceback" not in err, err
    (tmp_path / "notes" / "volumes.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(tmp_path / "notes")]) == 2
    assert "is not a volumes table" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ mosaic and outliers
def test_mosaic_shows_canonical_ras_whatever_the_stored_orientation(batch):
    out, _ = batch
    paths = case_output_paths(out, "ok_las")
    stored = nib.load(paths["cropped"])
    assert "".join(nib.aff2axcodes(stored.affine)) == "LAS"  # the crop is written in the input's orientation
    record = json.loads(paths["metadata"].read_text())
    # remade from the LAS files on disk == made in memory from the canonical crop when the case was written
    assert regenerate_mosaic(out, "ok_las", record) == paths["mosaic"].read_bytes()
    image = load_image(paths["cropped"])
    labels = load_label(paths["cropped_seg"], reference=image).array
    centre = outputs.dn_centre_voxel(labels, LEFT_DN)
    axial = ras_slice_panel(image, labels, "axial", centre[2], "axial")
    columns = {value: np.argwhere(axial.labels == value)[:, 1].mean() for value in (LEFT_DN, RIGHT_DN)}
    assert columns[LEFT_DN] < columns[RIGHT_DN] and axial.edges == ("L", "R")  # the subject's left on the left
    las = nib.load(paths["cropped"])
    with pytest.raises(ValueError, match="canonical RAS"):  # an array as stored is refused, never shown mirrored
        mosaic_png(Volume(np.asarray(las.dataobj, np.float32), las.affine), labels)


def test_outliers_beyond_the_iqr_fences_or_the_qc_range():
    values = {f"s{i}": v for i, v in enumerate([900.0, 950.0, 1000.0, 1050.0, 1100.0, 2400.0, 240.0])}
    marked = {o.case: o.why for o in find_outliers(values, "volume", "left", (250.0, 2500.0))}
    assert set(marked) == {"s5", "s6"}
    assert "beyond 1.5 IQR" in marked["s5"] and "outside the QC range" not in marked["s5"]
    assert "outside the QC range 250-2500" in marked["s6"]
    assert find_outliers({"a": 1.0, "b": 50.0}, "volume", "left") == []  # too few values for quartiles
