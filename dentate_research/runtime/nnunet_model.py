"""The stage model of the ``nnunet`` framework: nnU-Net v2's own predictor (manual initialization from the run
folder's plans, dataset.json and checkpoint) and the environment nnU-Net reads its settings from."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import DataError, Volume
from ..model_contract import ModelCard
from .inferer import InfererSettings, tta_average
from .stage_model import NetworkStageModel


def load_nnunet_json(path: Path | str) -> Any:
    """A JSON file of nnU-Net's (plans, dataset.json, splits)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def nnunet_environment(root: Path | None, n_proc_DA: int = 0, n_proc: int = 2) -> Iterator[None]:
    """Set nnU-Net's environment variables for the duration of the block (restored afterwards).

    nnunetv2 2.8 resolves its folders lazily from ``os.environ``; ``nnUNet_def_n_proc`` is read at import, so
    the first import of nnunetv2 should happen inside this block.
    """
    env = {"nnUNet_compile": "f", "nnUNet_n_proc_DA": str(int(n_proc_DA)), "nnUNet_def_n_proc": str(int(n_proc))}
    if root is not None:
        root = Path(root)
        env.update({"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
                    "nnUNet_results": str(root / "results")})
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(env[key]).mkdir(parents=True, exist_ok=True)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_nnunet_predictor(run_dir: Path, card: Any, device: torch.device, checkpoint: str | None = None) -> Any:
    """nnUNetPredictor for a trained run (manual_initialization; no trainer lookup by name).

    ``checkpoint``: ``best`` (default) or ``final``, or a path relative to ``run_dir``. nnU-Net's own mirroring
    is off: the StageModel applies the card's TTA policy itself (same flips and left/right channel swap as for
    every other architecture).
    """
    nn = card.nnunet
    settings = InfererSettings.from_dict(card.inferer, card.patch_size)  # the schema's defaults fill gaps
    with nnunet_environment(None, 0, 2):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        key = checkpoint or "best"
        rel = nn["checkpoints"].get(key, key)
        ckpt_path = Path(run_dir) / rel
        if not ckpt_path.exists():
            raise DataError(f"{ckpt_path}: nnU-Net checkpoint not found in run directory {run_dir}")
        plans = load_nnunet_json(Path(run_dir) / nn["plans"])
        dataset_json = load_nnunet_json(Path(run_dir) / nn["dataset_json"])
        plans_manager = PlansManager(plans)
        configuration = plans_manager.get_configuration(nn["configuration"])
        n_in = determine_num_input_channels(plans_manager, configuration, dataset_json)
        n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration, n_in, n_out,
                                                           enable_deep_supervision=False)
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        network.load_state_dict(state["network_weights"])
        network.eval()
        mirror_axes = tuple(a for a in nn.get("inference_allowed_mirroring_axes", []) if a != nn["lr_axis"])
        predictor = nnUNetPredictor(tile_step_size=1 - float(settings.overlap),
                                    use_gaussian=settings.mode == "gaussian",
                                    use_mirroring=False, perform_everything_on_device=device.type == "cuda",
                                    device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, plans_manager, configuration, [state["network_weights"]],
                                        dataset_json, "DentateNnUNetTrainer", mirror_axes)
    return predictor


class NnUNetStageModel(NetworkStageModel):
    """Stage model backed by nnU-Net's own predictor (nnUNetPredictor.manual_initialization).

    nnU-Net reads NIfTI with SimpleITK, so its arrays are (z, y, x) = our canonical RAS arrays transposed; the
    left-right axis is nnU-Net's LAST axis. nnU-Net's own mirroring is off; the card's TTA policy runs here, through
    the same :func:`~dentate_research.runtime.inferer.tta_average` as the MONAI inferer (flips on our RAS axes,
    left/right channel swap); nnU-Net does its own resampling and z-score.
    """

    def __init__(self, card: ModelCard, run_dir: Path, device: torch.device, checkpoint: str | None = None):
        super().__init__(card, run_dir, device, checkpoint)
        if card.nnunet is None:
            raise DataError(f"{run_dir}/model.json: framework nnunet but no 'nnunet' section")
        self.predictor = build_nnunet_predictor(self.run_dir, card, device, checkpoint)

    def _predict_once(self, array: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
        zyx = np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32)[None]
        spacing_zyx = [float(s) for s in spacing_xyz[::-1]]
        _, probs = self.predictor.predict_single_npy_array(zyx, {"spacing": spacing_zyx}, None, None, True)
        return np.asarray(probs, dtype=np.float32).transpose(0, 3, 2, 1)  # (C, z, y, x) -> (C, x, y, z)

    def predict_probabilities(self, volume: Volume) -> tuple[np.ndarray, Volume]:
        def predict_flipped(flip: tuple[int, ...]) -> np.ndarray:  # (C, X, Y, Z) of the flipped volume
            return self._predict_once(np.flip(volume.array, flip) if flip else volume.array, volume.spacing)

        total = tta_average(predict_flipped, self.settings.tta, 0, self.lateralized, channel_axis=0)
        return np.ascontiguousarray(total), volume

    @classmethod
    def files(cls, card: dict[str, Any]) -> list[str]:
        """The checkpoint, and nnU-Net's plans and dataset.json that its predictor reads."""
        return [str(card["checkpoint"]), str(card["nnunet"]["plans"]), str(card["nnunet"]["dataset_json"])]
