"""``stage_config``: the train config of one stage run, composed from the packaged configs (no hand-built dicts).

Used by the two-step model trainer (:mod:`.two_step`), the demo, the benchmarks and the tests: every default comes
from :mod:`dentate_research.schema` and the YAML groups; this module only states what a two-step run changes (the
network spec, explicit train/validation cases, the budget, the run folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..schema import compose


def stage_config(manifest: Path | str, stage: str, run_dir: Path | str, spec: dict[str, Any], *,
                 train_ids: list[str], val_ids: list[str], epochs: int, iterations_per_epoch: int, seed: int = 0,
                 device: str = "cpu", batch_size: int | None = None, lr: float | None = None,
                 augmentation: dict[str, Any] | str | None = None, label_scheme: str = "lateral",
                 localizer_run: Path | str | None = None, label_rater: str = "true",
                 trainer: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete, resolved ``train_stage`` config for one stage run.

    ``spec`` gives ``arch``, ``arch_kwargs`` (replacing the arch file's kwargs), ``spacing_mm`` and ``patch_size``
    (voxels). ``augmentation``: the name of a ``configs/augmentation`` file (default ``default``; the localizer's
    then mirrors without a label swap: the cerebellum has no sides) or a dict of keys over ``default``.
    ``localizer_run`` (segmentation): cut train/validation crops with that localizer (``stage.crop.source=
    localizer``). ``trainer``: extra trainer keys (``patience``, ``max_minutes``, ...). Validation runs once, at the
    end of the budget (``val_every = epochs``), unless ``trainer`` says otherwise.
    """
    aug_name = augmentation if isinstance(augmentation, str) else "default"
    cfg = compose("train", [f"+arch={spec['arch']}", f"stage={stage}", "data=manifest", "split=explicit",
                            f"augmentation={aug_name}", "logger=none", "inferer=default", "trainer=default",
                            f"data.manifest={Path(manifest)}", "split.train=[]"])
    values: dict[str, Any] = {
        "seed": seed,
        "arch.kwargs": dict(spec["arch_kwargs"]),
        "data.root": str(Path(manifest).parent),
        "data.label_rater": label_rater,
        "stage.spacing_mm": spec["spacing_mm"],
        "stage.patch_size": list(spec["patch_size"]),
        "stage.label_rater": label_rater,
        "stage.label_scheme": label_scheme,
        "split.train": list(train_ids),
        "split.val": list(val_ids),
        "trainer.epochs": epochs,
        "trainer.iterations_per_epoch": iterations_per_epoch,
        "trainer.val_every": epochs,
        "trainer.val_iterations": 1,
        "trainer.foreground_prob": 0.5,
        "trainer.device": device,
        "paths.run_dir": str(run_dir),
        "paths.runs_dir": str(Path(run_dir).parent),
    }
    if batch_size is not None:  # None: the schema's default (trainer.batch_size)
        values["trainer.batch_size"] = batch_size
    if lr is not None:
        values["trainer.optimizer.lr"] = lr
    if stage == "segmentation" and localizer_run is not None:
        values["stage.crop.source"] = "localizer"
        values["stage.crop.localizer_run"] = str(localizer_run)
    if isinstance(augmentation, dict):
        values.update({f"augmentation.{k}": v for k, v in augmentation.items()})
    elif stage == "localization":
        values["augmentation.lr_flip"] = "plain"  # the cerebellum mask has no sides
    values.update({f"trainer.{k}": v for k, v in (trainer or {}).items()})
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)  # struct config: a key the schema lacks is an error
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
