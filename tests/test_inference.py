"""Two-step inference (DentatePredictor) with a tiny model trained through the real training API."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from inference_helpers import toy_scan, trained_toy_model

from dentate_research.data.io import DataError, save_nifti
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, world_centroid
from dentate_research.data.overlap import dice
from dentate_research.data.postprocess import postprocess_dn_labels, side_statistics
from dentate_research.inference import DentatePredictor, SegmentationError
from dentate_research.inference.outputs import OUTPUT_SUFFIXES, VOLUMES_CSV, case_output_paths, segment_file
from dentate_research.runtime.stage_model import load_stage


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """Tiny localizer + segmenter trained via train_stage (~4 s on idle cores, ~60 s on busy ones)."""
    return trained_toy_model(tmp_path_factory.mktemp("inference_model"))


@pytest.fixture(scope="session")
def predictor(toy_model):
    return DentatePredictor.from_model_dir(toy_model, device="cpu")


def reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored with axis codes ``codes`` (e.g. 'LAS', 'PSR')."""
    img = nib.Nifti1Image(array, affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    out = img.as_reoriented(nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target))
    return np.asarray(out.dataobj), out.affine


def write_scan(path, seed, codes="RAS", drop_right_dn=False):
    image, labels, _, affine = toy_scan(seed)
    if drop_right_dn:
        image[labels == RIGHT_DN] = 0.06  # cerebellum value: no right DN to find
        labels[labels == RIGHT_DN] = 0
    image_o, affine_o = reorient(image, affine, codes)
    labels_o, _ = reorient(labels, affine, codes)
    save_nifti(image_o, affine_o, path)
    return labels_o, affine_o


def test_predict_array_labels_sides_in_world_ras(predictor):
    image, truth, _, affine = toy_scan(11)
    result = predictor.predict_array(image, affine)
    assert result.labels.shape == image.shape and result.status == "ok", result.flags
    for side in (LEFT_DN, RIGHT_DN):
        assert dice(result.labels == side, truth == side) > 0.5
    assert world_centroid(result.labels == LEFT_DN, affine)[0] < 0 < world_centroid(result.labels == RIGHT_DN,
                                                                                    affine)[0]
    assert set(result.timings_s) >= {"localization", "crop", "segmentation", "postprocess"}
    assert result.statistics["left_volume_mm3"] == pytest.approx(result.statistics["left_voxels"] * 27.0)


def test_same_anatomy_stored_las_and_ras_gives_same_world_labels(predictor, tmp_path):
    results = {}
    for codes in ("RAS", "LAS"):
        truth, affine = write_scan(tmp_path / f"scan_{codes}.nii.gz", 12, codes)
        written = segment_file(predictor, tmp_path / f"scan_{codes}.nii.gz", tmp_path / "out")
        seg = nib.load(written.paths["seg"])
        assert np.allclose(seg.affine, affine, atol=1e-4) and seg.shape == truth.shape
        data = np.asarray(seg.dataobj)
        for side in (LEFT_DN, RIGHT_DN):  # correct in the file's own orientation
            assert dice(data == side, truth == side) > 0.5
        assert world_centroid(data == LEFT_DN, seg.affine)[0] < 0 < world_centroid(data == RIGHT_DN, seg.affine)[0]
        results[codes] = data
    # the LAS file stores x reversed: its labels are the RAS labels flipped along axis 0, sides NOT swapped
    assert np.array_equal(results["LAS"], results["RAS"][::-1])
    # Python API on an in-memory LAS array: labels come back in the array's own orientation
    las = nib.load(tmp_path / "scan_LAS.nii.gz")
    labels, affine = predictor.predict_array(np.asarray(las.dataobj), las.affine).labels_in_input_orientation()
    assert np.array_equal(labels, results["LAS"]) and np.allclose(affine, las.affine, atol=1e-5)


def test_uncrop_restores_exact_grid_and_crop_bookkeeping(predictor, tmp_path):
    path = tmp_path / "oblique_axes.nii.gz"
    write_scan(path, 13, "PSR")  # axes permuted and flipped relative to RAS
    src = nib.load(path)
    written = segment_file(predictor, path, tmp_path / "out")
    for key in ("seg", "cerebellar_mask"):
        out = nib.load(written.paths[key])
        assert out.shape == src.shape
        assert np.allclose(out.affine, src.affine, atol=1e-5)
    box = written.metadata["crop"]["box_voxels_file"]
    cropped = nib.load(written.paths["cropped"])
    expected = np.asarray(src.dataobj)[tuple(slice(a, b) for a, b in zip(box["start"], box["stop"], strict=True))]
    assert np.array_equal(np.asarray(cropped.dataobj), expected)
    # the crop's affine puts its first voxel where the box starts in world mm
    start_world = src.affine[:3, :3] @ np.asarray(box["start"]) + src.affine[:3, 3]
    assert np.allclose(cropped.affine[:3, 3], start_world, atol=1e-4)
    cropped_seg = np.asarray(nib.load(written.paths["cropped_seg"]).dataobj)
    full_seg = np.asarray(nib.load(written.paths["seg"]).dataobj)
    assert cropped_seg.sum() == full_seg.sum() > 0


def test_outputs_match_documented_layout(predictor, tmp_path):
    write_scan(tmp_path / "subj.nii.gz", 14)
    written = segment_file(predictor, tmp_path / "subj.nii.gz", tmp_path / "out")
    folder = tmp_path / "out" / "subj"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"subj{s}" for s in OUTPUT_SUFFIXES.values())
    meta = json.loads((folder / "subj_metadata.json").read_text())
    assert meta["status"] == "ok" and meta["flags"] == [] and meta["sides_swapped"] is False
    for key in ("crop", "image", "models", "versions", "timings_s", "statistics", "warnings"):
        assert key in meta
    assert meta["models"]["segmentation"]["model_json"]["stage"] == "segmentation"
    assert set(meta["crop"]) >= {"box_voxels_ras", "box_voxels_file", "size_mm", "margin_mm"}
    assert meta["image"]["spacing_mm"] == [3.0, 3.0, 3.0]
    seg = np.asarray(nib.load(folder / "subj_seg.nii.gz").dataobj)
    image = np.asarray(nib.load(tmp_path / "subj.nii.gz").dataobj)
    expected = side_statistics(seg, image, (3.0, 3.0, 3.0))
    row = pd.read_csv(tmp_path / "out" / VOLUMES_CSV).set_index("case").loc["subj"]
    for key in ("left_volume_mm3", "right_volume_mm3", "left_mean_susceptibility_ppm"):
        assert row[key] == pytest.approx(expected[key], rel=1e-5)
    assert written.status == "ok"


def test_no_overwrite_without_flag_and_checked_before_work(predictor, tmp_path):
    write_scan(tmp_path / "again.nii.gz", 15)
    segment_file(predictor, tmp_path / "again.nii.gz", tmp_path / "out")
    seg = case_output_paths(tmp_path / "out", "again")["seg"]
    before = seg.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="again_"):
        segment_file(predictor, tmp_path / "again.nii.gz", tmp_path / "out")
    assert seg.stat().st_mtime_ns == before
    # only the volumes.csv row left: still refused
    for p in case_output_paths(tmp_path / "out", "again").values():
        p.unlink()
    with pytest.raises(FileExistsError, match="volumes.csv"):
        segment_file(predictor, tmp_path / "again.nii.gz", tmp_path / "out")
    segment_file(predictor, tmp_path / "again.nii.gz", tmp_path / "out", overwrite=True)
    assert len(pd.read_csv(tmp_path / "out" / VOLUMES_CSV)) == 1
    # a failed re-run with overwrite leaves no stale segmentation of the earlier run behind
    save_nifti(np.zeros((48, 56, 44), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]), tmp_path / "again.nii.gz")
    with pytest.raises(SegmentationError):
        segment_file(predictor, tmp_path / "again.nii.gz", tmp_path / "out", overwrite=True)
    assert not seg.exists() and pd.read_csv(tmp_path / "out" / VOLUMES_CSV).iloc[0]["status"] == "failed"


def test_localizer_finding_nothing_is_loud(predictor, tmp_path):
    blank = tmp_path / "blank.nii.gz"
    save_nifti(np.zeros((48, 56, 44), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]), blank)
    with pytest.raises(SegmentationError, match="no cerebellum") as info:
        segment_file(predictor, blank, tmp_path / "out")
    assert info.value.reason == "localizer_empty"
    paths = case_output_paths(tmp_path / "out", "blank")
    assert not paths["seg"].exists()
    meta = json.loads(paths["metadata"].read_text())
    assert meta["status"] == "failed" and meta["failure_reason"] == "localizer_empty"
    assert pd.read_csv(tmp_path / "out" / VOLUMES_CSV).iloc[0]["status"] == "failed"


def test_missing_side_is_flagged_not_silent(predictor, tmp_path):
    write_scan(tmp_path / "one_side.nii.gz", 16, drop_right_dn=True)
    written = segment_file(predictor, tmp_path / "one_side.nii.gz", tmp_path / "out")
    # the model either finds no right DN or labels part of the left DN as right: both must be flagged
    assert written.status == "flagged" and set(written.flags) & {"right_dn_empty", "dn_same_hemisphere"}
    if "right_dn_empty" in written.flags:
        assert written.metadata["statistics"]["right_mean_susceptibility_ppm"] is None
    row = pd.read_csv(tmp_path / "out" / VOLUMES_CSV).iloc[0]
    assert row["status"] == "flagged" and row["flags"] == ";".join(written.flags)


def test_model_side_swap_is_corrected_and_reported(toy_model, tmp_path):
    class SwappedSides:  # a real trained segmenter whose output sides are inverted
        def __init__(self, model):
            self.model, self.card = model, model.card

        def predict(self, volume):
            labels = self.model.predict(volume)
            return np.where(labels == LEFT_DN, RIGHT_DN, np.where(labels == RIGHT_DN, LEFT_DN, labels))

    localizer = load_stage(toy_model / "localization", "localization")
    segmenter = load_stage(toy_model / "segmentation", "segmentation")
    image, truth, _, affine = toy_scan(17)
    result = DentatePredictor.from_models(localizer, SwappedSides(segmenter)).predict_array(image, affine)
    assert result.sides_swapped and any("sides_swapped" in w for w in result.warnings)
    assert dice(result.labels == LEFT_DN, truth == LEFT_DN) > 0.5


def test_postprocess_keeps_largest_component_per_side():
    labels = np.zeros((20, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = LEFT_DN
    labels[8, 8, 8] = LEFT_DN  # stray voxel
    labels[14:17, 2:5, 2:5] = RIGHT_DN
    cleaned, report = postprocess_dn_labels(labels, np.eye(4))
    assert report.removed_voxels == {"left": 1, "right": 0} and not report.sides_swapped
    assert cleaned[8, 8, 8] == 0 and (cleaned == LEFT_DN).sum() == 27
    with pytest.raises(ValueError, match="values \\[3\\]"):
        postprocess_dn_labels(np.where(labels == RIGHT_DN, 3, labels), np.eye(4))


def test_bad_inputs_give_clear_errors(predictor, tmp_path):
    with pytest.raises(DataError, match="file not found"):
        segment_file(predictor, tmp_path / "missing.nii.gz", tmp_path / "out")
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("not an image")
    with pytest.raises(DataError, match="fake.nii.gz"):
        segment_file(predictor, fake, tmp_path / "out")
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), four_d)
    with pytest.raises(DataError, match="expected a 3D volume"):
        segment_file(predictor, four_d, tmp_path / "out")
    with pytest.raises(DataError, match="3D array"):
        predictor.predict_array(np.zeros((8, 8)), np.eye(4))
    with pytest.raises(DataError, match="no model.json"):
        DentatePredictor(tmp_path, tmp_path)
    with pytest.raises(DataError, match="missing localization/model.json"):
        DentatePredictor.from_model_dir(tmp_path)
    assert not (tmp_path / "out").exists()


def test_stage_mismatch_is_an_error(toy_model):
    with pytest.raises(DataError, match="'segmentation' model, but a 'localization' model"):
        DentatePredictor(toy_model / "segmentation", toy_model / "segmentation")


def test_world_side_assignment_fixes_merged_sides():
    """A network that finds both DN but calls them all 'left' still yields true world sides."""
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS-like array: index grows towards the subject's left
    affine[0, 3] = 10.0
    labels = np.zeros((20, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = LEFT_DN   # x = 10 - 2..4 = +6..+8 mm: the subject's RIGHT
    labels[14:17, 2:5, 2:5] = LEFT_DN  # x = -4..-6 mm: the subject's LEFT
    cleaned, report = postprocess_dn_labels(labels, affine, midline_x_mm=0.0)
    assert (cleaned[2:5, 2:5, 2:5] == RIGHT_DN).all() and (cleaned[14:17, 2:5, 2:5] == LEFT_DN).all()
    assert report.side_assignment == "world" and report.model_side_agreement == pytest.approx(0.5)
    kept, report_model = postprocess_dn_labels(labels, affine, midline_x_mm=0.0, side_assignment="model")
    assert report_model.empty_sides == ["right"] and report_model.side_assignment == "model"


def test_trained_localizer_returning_an_empty_mask_is_loud(toy_model):
    """Not only a blank image: a real scan whose localizer output is empty fails with localizer_empty."""

    class FindsNothing:  # the real trained localizer, whose mask is then emptied
        def __init__(self, model):
            self.model, self.card = model, model.card

        def predict(self, volume):
            return np.zeros_like(self.model.predict(volume))

    localizer = load_stage(toy_model / "localization", "localization")
    segmenter = load_stage(toy_model / "segmentation", "segmentation")
    image, _, _, affine = toy_scan(18)
    with pytest.raises(SegmentationError, match="localization model found no cerebellum") as info:
        DentatePredictor.from_models(FindsNothing(localizer), segmenter).predict_array(image, affine)
    assert info.value.reason == "localizer_empty"
