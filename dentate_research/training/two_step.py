"""Train a two-step model folder: a localizer and a segmenter, through :func:`~dentate_research.training.train_stage`.

A two-step model folder holds two run directories (see :mod:`dentate_research.model_contract`)::

    MODEL_DIR/localization/   model.json, checkpoints/best.pt, ...
    MODEL_DIR/segmentation/   model.json, checkpoints/best.pt, ...

``segment --model MODEL_DIR`` (:class:`~dentate_research.inference.pipeline.DentatePredictor`) applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.atomic import write_text_atomic

# Networks of the two-step recipe (README "Converged models"): a small localizer at 4 mm and a 4-level U-Net that
# segments at 1 mm on 64^3 patches of the localizer's crops.
DEFAULT_LOCALIZER = {"arch": "unet", "spacing_mm": 4.0, "patch_size": [32, 32, 32],
                     "arch_kwargs": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}}
DEFAULT_SEGMENTER = {"arch": "unet", "spacing_mm": 1.0, "patch_size": [64, 64, 64],
                     "arch_kwargs": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}}


def train_two_step_model(out_dir: Path | str, manifest: Path | str, *, localizer: dict[str, Any] | None = None,
                         segmenter: dict[str, Any] | None = None, train_ids: list[str] | None = None,
                         val_ids: list[str] | None = None, epochs: int = 10, iterations_per_epoch: int = 20,
                         seed: int = 0, device: str = "cpu", lr: float | None = None,
                         augmentation: dict[str, Any] | str | None = None, label_scheme: str = "lateral",
                         crops_from_localizer: bool = False, localizer_epochs: int | None = None,
                         trainer: dict[str, Any] | None = None, label_rater: str = "true",
                         stage_minutes: dict[str, float] | None = None,
                         segmenter_trainer: dict[str, Any] | None = None) -> Path:
    """Train a localizer and a segmenter into ``out_dir/localization`` and ``out_dir/segmentation``.

    Args:
        out_dir: model folder (created).
        manifest: phantom/user manifest with ``label_true`` (or rater) and ``cerebellum`` columns.
        localizer, segmenter: stage specs (``arch``, ``arch_kwargs``, ``spacing_mm``, ``patch_size``);
            default :data:`DEFAULT_LOCALIZER` / :data:`DEFAULT_SEGMENTER`.
        train_ids, val_ids: case IDs (default: the last subject validates, every other case trains).
        epochs, iterations_per_epoch: per-stage budget (batches of random patches); ``localizer_epochs``
            overrides the localizer's epochs.
        lr: learning rate (default: the architecture's recommendation; poly decay).
        augmentation: segmentation augmentation (dict or ``configs/augmentation`` name; default ``default``).
        label_scheme: ``lateral`` (0/1/2) or ``merged`` (one DN class, sides from world x).
        crops_from_localizer: train and validate the segmenter on the crops of the localizer just trained.
        trainer: extra trainer keys for both stages (``patience``, ``min_delta``, ``max_minutes``, ``val_every``).
        stage_minutes: wall-clock budget per stage in minutes (``{"localization": .., "segmentation": ..}``).
        segmenter_trainer: trainer keys for the segmentation stage only (e.g. ``batch_size``, ``foreground_prob``).
    """
    from dentate_research.data.manifest import read_manifest

    from .api import train_stage
    from .stage_config import stage_config

    out_dir = Path(out_dir)
    manifest = Path(manifest)
    if train_ids is None:
        cases = read_manifest(manifest)
        val_subject = cases[-1].subject  # validation = the last subject's scans (subject-level, no leakage)
        val_ids = [c.case_id for c in cases if c.subject == val_subject] if val_ids is None else val_ids
        train_ids = [c.case_id for c in cases if c.case_id not in set(val_ids)]
    for stage, spec in (("localization", localizer or DEFAULT_LOCALIZER),
                        ("segmentation", segmenter or DEFAULT_SEGMENTER)):
        is_seg = stage == "segmentation"
        cfg = stage_config(manifest, stage, out_dir / stage, spec, train_ids=train_ids, val_ids=list(val_ids or []),
                           epochs=epochs if is_seg or localizer_epochs is None else localizer_epochs,
                           iterations_per_epoch=iterations_per_epoch, seed=seed, device=device, lr=lr,
                           augmentation=augmentation if is_seg or isinstance(augmentation, dict) else None,
                           label_scheme=label_scheme,
                           localizer_run=out_dir / "localization" if is_seg and crops_from_localizer else None,
                           trainer={**(trainer or {}), **((segmenter_trainer or {}) if is_seg else {}),
                                    **({"max_minutes": stage_minutes[stage]}
                                       if stage_minutes and stage in stage_minutes else {})},
                           label_rater=label_rater)
        train_stage(cfg)
    write_text_atomic(out_dir / "README.txt",
        "Two-step dentate nucleus model (localization/ + segmentation/ run directories) trained on "
        f"{manifest} by dentate_research.training.two_step.train_two_step_model.\n"
        "Synthetic phantom training data: for demonstration, not for clinical use.\n")
    return out_dir
