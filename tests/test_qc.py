"""Plausibility QC of DN segmentations (dentate_research.inference.qc): one test per flag (triggered / not),
StageModel.predict_with_confidence, and end to end: a DN found in the wrong place is flagged in the result,
X_metadata.json, volumes.csv and the exit code of ``segment``."""

from __future__ import annotations

import json

import inference_helpers
import numpy as np
import pandas as pd
import pytest
import torch

from dentate_research.cli.main import main
from dentate_research.data.io import Volume, save_nifti
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN
from dentate_research.inference import DentatePredictor
from dentate_research.inference.outputs import VOLUMES_CSV, segment_file
from dentate_research.inference.qc import QCThresholds, qc_status, quality_check
from dentate_research.model_contract import ModelCard
from dentate_research.runtime.stage_model import NetworkStageModel, load_stage

SPACING = 2.0
SHAPE = (60, 50, 40)  # world x -60..58, y -110..-12, z -80..-2 (2 mm voxels)
ORIGIN = np.array([-60.0, -110.0, -80.0])
CEREBELLUM = (np.array([-50.0, -100.0, -65.0]), np.array([50.0, -40.0, -20.0]))  # world box (mm)
# plausible DN centres: 14 mm from the midline, normalized y 0.65, z 0.55 in the cerebellum box
GOOD_CENTRES = {LEFT_DN: (-14.0, -61.0, -40.25), RIGHT_DN: (14.0, -61.0, -40.25)}
RADII_MM = (6.0, 8.0, 5.0)  # ellipsoid ~1000 mm^3


def grid_affine(origin: np.ndarray = ORIGIN, spacing: float = SPACING) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def world_coords(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def cerebellum_mask() -> np.ndarray:
    world = world_coords(SHAPE, grid_affine())
    low, high = CEREBELLUM
    return np.all((world >= low) & (world <= high), axis=-1).astype(np.uint8)


def dn_labels(centres: dict[int, tuple[float, float, float]], radii: dict[int, tuple[float, ...]] | None = None,
              shape: tuple[int, int, int] = SHAPE, affine: np.ndarray | None = None) -> np.ndarray:
    affine = grid_affine() if affine is None else affine
    world = world_coords(shape, affine)
    labels = np.zeros(shape, np.uint8)
    for side, centre in centres.items():
        r = np.asarray((radii or {}).get(side, RADII_MM))
        labels[(((world - np.asarray(centre)) / r) ** 2).sum(axis=-1) <= 1.0] = side
    return labels


def check(labels: np.ndarray, confidence: np.ndarray | None = None, affine: np.ndarray | None = None,
          **kwargs: object) -> tuple[list[str], dict]:
    return quality_check(labels, grid_affine() if affine is None else affine, cerebellum_mask(), grid_affine(),
                         confidence, confidence_measure="dn_vs_background", **kwargs)  # type: ignore[arg-type]


def names(flags: list[str]) -> set[str]:
    return {f.split(":")[0] for f in flags}


# ----------------------------------------------------------------------------- unit tests, one per flag
def test_plausible_dn_passes_every_check_and_reports_metrics():
    labels = dn_labels(GOOD_CENTRES)
    flags, qc = check(labels, np.full(SHAPE, 0.97, np.float32))
    assert flags == []
    assert 800 < qc["volume_mm3"]["left"] < 1200 and qc["volume_ratio"] == pytest.approx(1.0, abs=0.05)
    assert qc["midline_x_mm"] == pytest.approx(0.0, abs=1.5)
    assert qc["left"]["lateral_distance_mm"] == pytest.approx(14.0, abs=1.5)
    assert qc["left"]["position_in_cerebellum"]["y"] == pytest.approx(0.65, abs=0.03)
    assert qc["right"]["position_in_cerebellum"]["z"] == pytest.approx(0.55, abs=0.03)
    assert qc["confidence"]["left"]["mean"] == pytest.approx(0.97) and qc["confidence"]["measure"] == "dn_vs_background"
    assert qc["thresholds"]["max_volume_ratio"] == 2.0
    json.dumps(qc)  # JSON-friendly (written to X_metadata.json)
    # the same anatomy on another grid (a shifted crop stored with x reversed): same metrics, no flag
    crop_affine = np.diag([-SPACING, SPACING, SPACING, 1.0])
    crop_affine[:3, 3] = (30.0, -80.0, -56.0)
    crop_labels = dn_labels(GOOD_CENTRES, shape=(30, 20, 16), affine=crop_affine)
    crop_flags, crop_qc = check(crop_labels, affine=crop_affine)
    assert crop_flags == [] and crop_qc["confidence"] is None
    assert crop_qc["left"]["lateral_distance_mm"] == pytest.approx(qc["left"]["lateral_distance_mm"], abs=0.5)


@pytest.mark.parametrize(("radius_scale", "expected"), [(0.4, "left_dn_volume_implausible"),
                                                        (1.5, "left_dn_volume_implausible"),
                                                        (1.0, None)])
def test_volume_outside_plausible_range_is_flagged(radius_scale, expected):
    """~65 mm^3 and ~3400 mm^3 are not a dentate nucleus (plausible 250-2500 mm^3)."""
    radii = {LEFT_DN: tuple(radius_scale * r for r in RADII_MM)}
    right = {RIGHT_DN: tuple(radius_scale * r for r in RADII_MM)}  # keep the ratio at 1
    flags, qc = check(dn_labels(GOOD_CENTRES, {**radii, **right}))
    if expected is None:
        assert flags == []
    else:
        assert expected in names(flags) and "right_dn_volume_implausible" in names(flags)
        volume = qc["volume_mm3"]["left"]
        assert f"left_dn_volume_implausible:{volume:.0f}mm3" in flags
        assert not 250 <= volume <= 2500


def test_left_right_volume_ratio_is_flagged():
    small = {RIGHT_DN: tuple(0.7 * r for r in RADII_MM)}  # 0.34 x the left volume, still > 250 mm^3
    flags, qc = check(dn_labels(GOOD_CENTRES, small))
    assert names(flags) == {"dn_volume_ratio_implausible"} and qc["volume_ratio"] > 2.0
    assert flags[0] == f"dn_volume_ratio_implausible:{qc['volume_ratio']:.2f}"
    mild = {RIGHT_DN: tuple(0.85 * r for r in RADII_MM)}  # ratio ~1.6: within one subject's range
    assert check(dn_labels(GOOD_CENTRES, mild))[0] == []
    one_side = dn_labels({LEFT_DN: GOOD_CENTRES[LEFT_DN]})  # an empty side: flagged by the pipeline, no ratio
    flags, qc = check(one_side)
    assert flags == [] and qc["volume_ratio"] is None and qc["right"] is None


@pytest.mark.parametrize(("x_mm", "flagged"), [(3.0, True), (36.0, True), (8.0, False), (26.0, False)])
def test_lateral_distance_from_cerebellar_midline(x_mm, flagged):
    centres = {LEFT_DN: (-x_mm, -61.0, -40.25), RIGHT_DN: (x_mm, -61.0, -40.25)}
    radii = {side: (2.5, 8.0, 5.0) for side in centres}  # narrow, so x = 3 mm stays off the midline
    flags, qc = check(dn_labels(centres, radii))
    lateral = {f for f in flags if "lateral_offset" in f}
    assert bool(lateral) is flagged, flags
    if flagged:
        assert lateral == {f"{side}_dn_lateral_offset_implausible:{qc[side]['lateral_distance_mm']:.1f}mm"
                           for side in ("left", "right")}
    # the midline is the one that assigned the sides when given
    shifted_flags, shifted = check(dn_labels(GOOD_CENTRES), midline_x_mm=-12.0)
    assert shifted["left"]["lateral_distance_mm"] == pytest.approx(2.0, abs=0.5)
    assert "left_dn_lateral_offset_implausible" in names(shifted_flags)


def test_dn_outside_the_cerebellum_box_is_flagged():
    above = {LEFT_DN: (-14.0, -61.0, -12.0), RIGHT_DN: GOOD_CENTRES[RIGHT_DN]}  # 8 mm above the box (top z = -19)
    flags, qc = check(dn_labels(above))
    assert flags[0] == "left_dn_outside_cerebellum_box:z" and qc["left"]["position_in_cerebellum"]["z"] > 1.0
    assert flags[1:] == [f"dn_pair_asymmetric:dz={qc['pair_symmetry']['dz_mm']:.1f}mm"]  # 28 mm above its twin
    inside_top = {LEFT_DN: (-14.0, -61.0, -27.0), RIGHT_DN: GOOD_CENTRES[RIGHT_DN]}  # normalized z ~0.85
    assert check(dn_labels(inside_top))[0] == []


@pytest.mark.parametrize(("centre", "expected"), [((-14.0, -94.0, -40.25), "y="),    # posterior pole, y ~0.1
                                                  ((-14.0, -61.0, -60.0), "z="),     # inferior edge, z ~0.1
                                                  ((-14.0, -50.0, -36.0), None)])    # y 0.83, z 0.64: plausible
def test_normalized_position_in_cerebellum(centre, expected):
    flags, qc = check(dn_labels({LEFT_DN: centre, RIGHT_DN: GOOD_CENTRES[RIGHT_DN]}))
    position = qc["left"]["position_in_cerebellum"]
    if expected is None:
        assert flags == [], flags
    else:
        assert names(flags) == {"left_dn_position_implausible", "dn_pair_asymmetric"}, flags  # 20-33 mm off its twin
        assert expected in flags[0]
        axis = expected[0]
        assert flags[0].endswith(f"{axis}={position[axis]:.2f}") and position[axis] < 0.3


@pytest.mark.parametrize(("left_centre", "flag"), [((-14.0, -77.0, -40.25), "dn_pair_asymmetric:dy=16.0mm"),
                                                   ((-6.0, -61.0, -40.25), "dn_pair_asymmetric:lateral=16.0mm")])
def test_a_pair_that_does_not_mirror_itself_is_flagged(left_centre, flag):
    """Each nucleus alone is plausible (volume, offset 6-30 mm, position), but not as the partner of the other."""
    right = (22.0, -61.0, -40.25) if "lateral" in flag else GOOD_CENTRES[RIGHT_DN]
    flags, qc = check(dn_labels({LEFT_DN: left_centre, RIGHT_DN: right}))
    assert flags == [flag], flags
    assert check(dn_labels({LEFT_DN: (-14.0, -70.0, -36.0), RIGHT_DN: GOOD_CENTRES[RIGHT_DN]}))[0] == []  # 9 / 4 mm


def test_custom_thresholds_and_validation():
    labels = dn_labels(GOOD_CENTRES)
    flags, _ = check(labels, thresholds=QCThresholds(position_y_range=(0.7, 0.95)))
    assert names(flags) == {"left_dn_position_implausible", "right_dn_position_implausible"}
    with pytest.raises(ValueError, match="volume_mm3"):
        QCThresholds(min_volume_mm3=3000.0)
    with pytest.raises(ValueError, match="min_mean_confidence"):
        QCThresholds(min_mean_confidence=1.5)


def test_low_confidence_is_flagged_and_missing_confidence_is_recorded():
    labels = dn_labels(GOOD_CENTRES)
    confidence = np.full(SHAPE, 0.97, np.float32)
    confidence[labels == RIGHT_DN] = 0.62  # right DN drawn with low confidence
    flags, qc = check(labels, confidence)
    assert flags == ["right_dn_low_confidence:mean=0.62,uncertain=1.00"]
    assert qc["confidence"]["right"] == {"mean": pytest.approx(0.62), "uncertain_fraction": 1.0}
    # mean above 0.8 but half the voxels uncertain (< 0.7): flagged by the fraction
    split = np.full(SHAPE, 0.97, np.float32)
    right = np.argwhere(labels == RIGHT_DN)
    split[tuple(right[: len(right) // 2 + 1].T)] = 0.65
    flags, qc = check(labels, split)
    assert names(flags) == {"right_dn_low_confidence"} and qc["confidence"]["right"]["mean"] >= 0.8
    assert qc["confidence"]["right"]["uncertain_fraction"] > 0.4
    # a model without probabilities: no confidence check, recorded as None, qc_status says so
    flags, qc = check(labels, None)
    assert flags == [] and qc["confidence"] is None and qc["confidence_checked"] is False
    assert qc_status(flags, qc["confidence_checked"]) == "pass_without_confidence"
    assert qc_status([], True) == "pass" and qc_status(["x"], True) == "flagged"
    assert qc_status([], True, failed=True) == "failed"
    with pytest.raises(ValueError, match="confidence map has shape"):
        check(labels, np.ones((3, 3, 3), np.float32))


# ----------------------------------------------------------------------------- StageModel.predict_with_confidence
class FixedProbabilities(NetworkStageModel):
    """A StageModel whose network output is a fixed probability map on a coarser grid (the real resampling,
    argmax and post-processing code of StageModel run on it)."""

    def __init__(self, probs: np.ndarray, grid_affine: np.ndarray):
        card = ModelCard(stage="segmentation", arch="fixed", framework="monai", arch_kwargs={},
                         classes=["background", "left_dn", "right_dn"][: probs.shape[0]],
                         target_spacing_mm=[4.0, 4.0, 4.0], patch_size=[8, 8, 8], normalization={},
                         inferer={"tta": "none"})
        super().__init__(card, ".", torch.device("cpu"))
        self.probs, self.grid_affine = probs, grid_affine

    def predict_probabilities(self, volume: Volume) -> tuple[np.ndarray, Volume]:
        return self.probs, Volume(np.zeros(self.probs.shape[1:], np.float32), self.grid_affine)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_predict_with_confidence_shares_predict_and_gives_max_class_probability(n_classes):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n_classes, 8, 8, 8)).astype(np.float32)
    logits[0, :4] += 2.0  # background dominates half of the grid
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    coarse = np.diag([4.0, 4.0, 4.0, 1.0])
    model = FixedProbabilities(probs, coarse)
    same_grid = Volume(np.zeros((8, 8, 8), np.float32), coarse)
    labels, confidence = model.predict_with_confidence(same_grid)
    assert np.array_equal(labels, model.predict(same_grid)) and confidence.dtype == np.float32
    assert np.allclose(confidence, probs.max(axis=0), atol=1e-6)
    merged = model.predict_with_confidence(same_grid, merge_foreground=True)[1]
    assert np.allclose(merged, np.maximum(probs[0], 1 - probs[0]), atol=1e-6)
    if n_classes == 2:
        assert np.allclose(merged, confidence, atol=1e-6)
    else:
        dn = np.argmax(probs, axis=0) > 0
        assert (merged[dn] >= confidence[dn] - 1e-6).all() and (merged[dn] > confidence[dn] + 1e-3).any()
    # on a finer input grid: labels and confidence come from the same linearly resampled probabilities
    fine_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fine_affine[:3, 3] = 1.0
    fine = Volume(np.zeros((12, 12, 12), np.float32), fine_affine)
    labels, confidence = model.predict_with_confidence(fine)
    assert labels.shape == confidence.shape == (12, 12, 12)
    assert np.array_equal(labels, model.predict(fine))
    assert confidence.min() >= 1.0 / n_classes - 1e-6 and confidence.max() <= 1.0 + 1e-6


# ----------------------------------------------------------------------------- the pipeline, end to end
@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """The tiny two-step model of inference_helpers (trained once per process, shared with test_inference)."""
    return inference_helpers.trained_toy_model(tmp_path_factory.mktemp("inference_model"))


# the toy anatomy with both nuclei moved 18 mm backwards: inside the cerebellum, at its posterior pole
POSTERIOR_DN = {LEFT_DN: np.array([-15.0, -74.0, -36.0]), RIGHT_DN: np.array([15.0, -74.0, -36.0])}
POSITION_FLAGS = {f"{side}_dn_{check}" for side in ("left", "right")
                  for check in ("position_implausible", "outside_cerebellum_box", "lateral_offset_implausible")}


def misplaced_scan(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy scan whose bright DN ellipsoids sit in the wrong place; (image, true labels, affine)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference_helpers, "DN_CENTRES_MM", POSTERIOR_DN)
        image, labels, _, affine = inference_helpers.toy_scan(seed)
    return image, labels, affine


def test_pipeline_records_qc_and_passes_a_plausible_scan(toy_model):
    predictor = DentatePredictor.from_model_dir(toy_model)
    image, _, _, affine = inference_helpers.toy_scan(14)
    result = predictor.predict_array(image, affine)
    assert result.status == "ok", result.flags
    qc = result.qc
    assert qc["qc_status"] == "pass" and qc["confidence_checked"] and qc["confidence"]["measure"] == "dn_vs_background"
    assert qc["confidence"]["left"]["mean"] >= 0.8 and "qc" in result.timings_s
    assert qc["volume_mm3"]["left"] == pytest.approx(result.statistics["left_volume_mm3"])
    assert qc["midline_x_mm"] == pytest.approx(result.postprocess.midline_x_mm)


def test_segmenter_without_confidence_still_works(toy_model):
    class LabelsOnly:  # the real trained segmenter seen through the minimal protocol (predict + card)
        def __init__(self, model):
            self.model, self.card = model, model.card

        def predict(self, volume):
            return self.model.predict(volume)

    localizer = load_stage(toy_model / "localization", "localization")
    segmenter = load_stage(toy_model / "segmentation", "segmentation")
    image, _, _, affine = inference_helpers.toy_scan(15)
    result = DentatePredictor.from_models(localizer, LabelsOnly(segmenter)).predict_array(image, affine)
    assert result.qc["confidence"] is None and result.qc["confidence_checked"] is False
    assert result.status == "ok" and result.qc["qc_status"] == "pass_without_confidence", result.flags


def test_misplaced_dn_is_flagged_in_metadata_and_volumes_csv(toy_model, tmp_path):
    image, _, affine = misplaced_scan(60)
    save_nifti(image, affine, tmp_path / "posterior.nii.gz")
    predictor = DentatePredictor.from_model_dir(toy_model)
    written = segment_file(predictor, tmp_path / "posterior.nii.gz", tmp_path / "out", overlay=False)
    found = names(written.flags) & POSITION_FLAGS
    assert written.status == "flagged" and found, written.flags
    meta = json.loads(written.paths["metadata"].read_text())
    assert meta["status"] == "flagged" and set(meta["flags"]) == set(written.flags)
    assert meta["qc"]["qc_status"] == "flagged" and found <= names(meta["qc"]["flags"])
    assert meta["qc"]["left"]["position_in_cerebellum"]["y"] < 0.3
    row = pd.read_csv(tmp_path / "out" / VOLUMES_CSV).set_index("case").loc["posterior"]
    assert row["status"] == "flagged" and row["qc_status"] == "flagged"
    assert set(row["flags"].split(";")) == set(written.flags)
    assert row["left_confidence"] == pytest.approx(meta["qc"]["confidence"]["left"]["mean"])


def test_segment_cli_exits_non_zero_for_a_misplaced_dn(toy_model, tmp_path, capsys):
    folder = tmp_path / "scans"
    image, _, _, affine = inference_helpers.toy_scan(40)
    save_nifti(image, affine, folder / "good.nii.gz")
    image, _, affine = misplaced_scan(61)
    save_nifti(image, affine, folder / "misplaced.nii.gz")
    out = tmp_path / "out"
    assert main(["segment", "-i", str(folder / "good.nii.gz"), "-o", str(out), "--model", str(toy_model),
                 "--no-overlay"]) == 0
    assert main(["segment", "-i", str(folder / "misplaced.nii.gz"), "-o", str(out), "--model", str(toy_model),
                 "--no-overlay"]) == 4
    err = capsys.readouterr().err
    assert "FLAG" in err and any(flag in err for flag in POSITION_FLAGS)
    table = pd.read_csv(out / VOLUMES_CSV).set_index("case")
    assert table.loc["good", "qc_status"] == "pass" and table.loc["misplaced", "qc_status"] == "flagged"
    assert json.loads((out / "misplaced" / "misplaced_metadata.json").read_text())["status"] == "flagged"


def test_segment_help_lists_the_qc_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("_dn_volume_implausible", "dn_volume_ratio_implausible", "_dn_lateral_offset_implausible",
                 "_dn_outside_cerebellum_box", "_dn_position_implausible", "_dn_low_confidence", "qc_status",
                 "exit 4"):
        assert flag in text, flag
