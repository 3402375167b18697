"""The converged-model recipe: label schemes, crops cut by the trained localizer, early stopping, time budgets.

Real ``train_stage`` runs on toy scans (seconds), real NIfTI files, real MONAI networks and nnU-Net.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from inference_helpers import LOCALIZER_SPEC, SEGMENTER_SPEC, trained_toy_model, write_toy_cases
from omegaconf import OmegaConf

from dentate_research.data.geometry import bbox_from_mask
from dentate_research.data.io import load_image, load_label
from dentate_research.data.laterality import LEFT_DN, RIGHT_DN, check_sides
from dentate_research.data.manifest import read_manifest
from dentate_research.inference.pipeline import DentatePredictor
from dentate_research.model_contract import ModelCard
from dentate_research.runtime.crops import crop_box_around, localize, min_crop_from_patch
from dentate_research.runtime.stage_model import load_stage_model
from dentate_research.training import train_stage
from dentate_research.training.augmentation import AugmentationSettings, Augmenter
from dentate_research.training.datasets import PatchSampler
from dentate_research.training.preprocessing import StageSample, prepare_samples, stage_classes
from dentate_research.training.stage_config import stage_config
from dentate_research.training.toy_data import make_toy_case
from dentate_research.training.validation import PlateauTracker


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, list[str]]:
    manifest = write_toy_cases(tmp_path_factory.mktemp("recipe_toy"), 5, seed0=300)
    return manifest, [c.case_id for c in read_manifest(manifest)]


def _config(manifest: Path, run_dir: Path, ids: list[str], stage: str = "segmentation", epochs: int = 2,
            iterations: int = 3, **kw):
    spec = LOCALIZER_SPEC if stage == "localization" else SEGMENTER_SPEC
    trainer = {"val_every": 1, "num_threads": 1, **kw.pop("trainer", {})}
    return stage_config(manifest, stage, run_dir, spec, train_ids=ids[:4], val_ids=ids[4:], epochs=epochs,
                        iterations_per_epoch=iterations, lr=1e-2, trainer=trainer, **kw)


def test_stage_classes_per_label_scheme():
    assert stage_classes("segmentation", "lateral") == ["background", "left_dn", "right_dn"]
    assert stage_classes("segmentation", "merged") == ["background", "dn"]
    assert stage_classes("localization", "merged") == ["background", "cerebellum"]
    with pytest.raises(ValueError, match="allowed"):
        stage_classes("segmentation", "bilateral")


def test_merged_scheme_sampler_and_free_lr_flips():
    image, labels, _, affine = make_toy_case(rng=np.random.default_rng(0))
    sample = StageSample("c", image, labels, affine)
    sampler = PatchSampler([sample], [16, 16, 16], 4, foreground_prob=1.0, seed=0, merge_labels=True)
    _, y = sampler.next_batch()
    assert set(np.unique(y.numpy())) <= {0, 1} and y.numpy().max() == 1  # one DN class, both sides in it
    # with one DN class a plain left-right flip is allowed (no side to swap) and keeps the label set
    aug = Augmenter(AugmentationSettings(lr_flip="plain", lr_flip_prob=1.0, affine_prob=0, intensity_prob=0,
                                         noise_prob=0, smooth_prob=0), lateralized_labels=False)
    merged = (labels > 0).astype(np.uint8)
    _, out = aug(image, merged, affine)
    assert out.sum() == merged.sum() and not np.array_equal(out, merged)


@pytest.mark.slow
def test_merged_scheme_trains_and_pipeline_assigns_world_sides(toy, tmp_path):
    manifest, ids = toy
    model = trained_toy_model(tmp_path)  # lateral toy localizer (shared with the inference tests)
    seg_dir = tmp_path / "seg_merged"
    train_stage(_config(manifest, seg_dir, ids, epochs=6, iterations=10, label_scheme="merged",
                        localizer_run=model / "localization", augmentation={"enabled": True, "lr_flip": "plain",
                                                                            "lr_flip_prob": 0.5, "affine_prob": 0}))
    card = ModelCard.from_json(seg_dir / "model.json")
    assert card.classes == ["background", "dn"]
    assert card.crop["source"] == "localizer" and Path(card.crop["localizer_run"]).is_dir()
    # validation reports both sides (sides assigned from world x like inference) and the Dice is real
    assert {"val_dice_left", "val_dice_right"} <= set(card.metrics)
    stage_model = load_stage_model(seg_dir)
    assert not stage_model.lateralized
    case = read_manifest(manifest)[4]
    image = load_image(case.image)
    result = DentatePredictor(model / "localization", seg_dir).predict_volume(image)
    sides = check_sides(result.labels, image.affine)
    assert sides["left_x_mm"] < sides["right_x_mm"]
    truth = load_label(case.labels["true"], reference=image).array
    for side in (LEFT_DN, RIGHT_DN):
        overlap = ((result.labels == side) & (truth == side)).sum()
        assert overlap > 0.5 * (truth == side).sum(), f"side {side} not found where the truth is"


def test_localizer_crops_equal_the_pipeline_crops(toy, tmp_path):
    """Training/validation crops with source=localizer are the very boxes DentatePredictor cuts at inference."""
    manifest, ids = toy
    model = trained_toy_model(tmp_path)
    localizer = load_stage_model(model / "localization")
    predictor = DentatePredictor(model / "localization", model / "segmentation")
    cases = read_manifest(manifest)
    min_crop = min_crop_from_patch(SEGMENTER_SPEC["patch_size"], SEGMENTER_SPEC["spacing_mm"])
    assert predictor.min_crop_mm == pytest.approx(min_crop)
    samples = prepare_samples(cases, "segmentation", spacing_mm=3.0, normalization={"scheme": "zscore_nonzero"},
                              crop_cfg={"source": "localizer", "margin_mm": predictor.margin_mm, "jitter_mm": 0.0},
                              training=False, localizer=localizer, min_crop_mm=min_crop)
    for case, sample in zip(cases, samples, strict=True):
        image = load_image(case.image)
        result = predictor.predict_volume(image)
        assert sample.crop_box == result.crop_box, case.case_id
        found = localize(localizer, image)
        assert sample.midline_x_mm == pytest.approx(found.midline_x_mm)
        assert crop_box_around(found.mask, image.affine, predictor.margin_mm, min_crop) == result.crop_box


def test_localizer_source_requires_a_localization_run(toy, tmp_path):
    manifest, ids = toy
    cfg = _config(manifest, tmp_path / "run", ids)
    cfg["stage"]["crop"]["source"] = "localizer"
    with pytest.raises(Exception, match="localizer_run"):
        train_stage(cfg)


def test_plateau_tracker_keeps_its_reference_until_a_real_gain():
    """A curve rising 0.003 per validation with min_delta 0.005 is progressing (every second validation beats the
    last progress by 0.006); following every small gain would have stopped it after two validations (the bug that
    stopped an Attention U-Net at 1800 iterations, 0.013 above its score 8 validations earlier). A flat or falling
    curve still stops after ``patience`` validations, and a small gain is not progress."""
    rising = PlateauTracker(min_delta=0.005)
    for k in range(20):
        rising.update(0.80 + 0.003 * k)
        assert not rising.plateaued(2), k
    flat = PlateauTracker(min_delta=0.005)
    assert [flat.update(score) for score in (0.80, 0.804, 0.79, 0.8049)] == [True, False, False, False]
    assert flat.plateaued(3) and not flat.plateaued(4) and not flat.plateaued(None)
    assert flat.reference == 0.80
    assert flat.update(0.806) and flat.since_progress == 0 and flat.reference == 0.806


def test_early_stopping_on_plateau_and_timestamps(toy, tmp_path):
    manifest, ids = toy
    run = tmp_path / "plateau"
    # learning rate 0: the validation score can never improve, so patience 2 stops after 3 validations
    cfg = _config(manifest, run, ids, epochs=20, iterations=2, trainer={"patience": 2, "min_delta": 0.0})
    cfg["trainer"]["optimizer"]["lr"] = 0.0
    train_stage(cfg)
    info = json.loads((run / "run_info.json").read_text())
    summary = info["training_summary"]
    assert summary["stop_reason"] == "plateau" and summary["epochs_run"] == 3 and summary["iterations_run"] == 6
    rows = pd.read_csv(run / "metrics.csv")
    epochs = rows[rows["phase"].fillna("") != "final"] if "phase" in rows else rows
    assert len(epochs) == 3
    assert epochs["wall_time_s"].is_monotonic_increasing and epochs["timestamp_utc"].notna().all()
    assert epochs["val_time_s"].notna().all() and (epochs["val_time_s"] > 0).all()
    assert set(summary["time_to_dice"]) >= {"0.8", "0.85", "0.9"}
    assert (run / "checkpoints" / "best.pt").exists() and (run / "checkpoints" / "final.pt").exists()


def test_wall_clock_budget_stops_training(toy, tmp_path):
    manifest, ids = toy
    run = tmp_path / "budget"
    train_stage(_config(manifest, run, ids, epochs=50, iterations=2, trainer={"max_minutes": 1e-4}))
    summary = json.loads((run / "run_info.json").read_text())["training_summary"]
    assert summary["stop_reason"] == "time_budget" and summary["epochs_run"] == 1
    card = json.loads((run / "model.json").read_text())
    assert card["metrics"]  # the last epoch was validated before stopping


def test_loop_settings_reject_bad_budget_values(toy, tmp_path):
    manifest, ids = toy
    for key, value in (("patience", 0), ("max_minutes", -1.0), ("min_delta", -0.1)):
        with pytest.raises(ValueError, match=f"trainer.{key}"):
            train_stage(_config(manifest, tmp_path / f"bad_{key}", ids, trainer={key: value}))


@pytest.mark.slow
def test_nnunet_merged_scheme_mirrors_lr_axis_and_predicts_one_class(toy, tmp_path):
    manifest, ids = toy
    run = tmp_path / "nn_merged"
    spec = {"arch": "nnunet", "spacing_mm": 3.0, "patch_size": [24, 24, 24],
            "arch_kwargs": {"n_stages": 3, "features_base": 8, "max_features": 32, "n_proc_DA": 0, "n_proc": 1}}
    cfg = stage_config(manifest, "segmentation", run, spec, train_ids=ids[:4], val_ids=ids[4:], epochs=1,
                       iterations_per_epoch=2, label_scheme="merged", trainer={"num_threads": 1})
    train_stage(OmegaConf.create(cfg))
    card = ModelCard.from_json(run / "model.json")
    assert card.classes == ["background", "dn"]
    dataset = json.loads((run / card.nnunet["dataset_json"]).read_text())
    assert set(dataset["labels"].values()) == {0, 1}
    assert card.nnunet["lr_axis"] in card.nnunet["inference_allowed_mirroring_axes"]  # LR mirroring is free
    labels = load_stage_model(run).predict(load_image(read_manifest(manifest)[4].image))
    assert set(np.unique(labels)) <= {0, 1}


def test_bbox_of_localizer_mask_contains_dn_on_toy(toy, tmp_path):
    """The toy localizer's crop holds the whole DN (the recall the recipe relies on)."""
    manifest, _ = toy
    model = trained_toy_model(tmp_path)
    localizer = load_stage_model(model / "localization")
    for case in read_manifest(manifest):
        image = load_image(case.image)
        dn = load_label(case.labels["true"], reference=image).array > 0
        box = crop_box_around(localize(localizer, image).mask, image.affine, 10.0, None)
        assert box is not None and dn[box.slices].sum() == dn.sum()
        assert bbox_from_mask(dn, image.affine) is not None
