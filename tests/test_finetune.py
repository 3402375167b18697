"""Fine-tuning (init_from): the network starts from a trained model's weights and adopts its card's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dentate_research.data.io import DataError
from dentate_research.training.api import train_stage
from dentate_research.training.finetune import SHIPPED_MODEL, resolve_init_run
from dentate_research.training.toy_data import make_toy_dataset
from tests.test_training import toy_config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finetune")
    manifest = make_toy_dataset(root / "toy", n_cases=5, seed=3)
    return manifest, train_stage(toy_config(manifest, root / "source", "unet"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_finetuning_starts_from_the_model_and_adopts_its_card(tmp_path, source_run):
    manifest, source = source_run
    # the config asks for another network size and patch: the card's settings win (the weights need them)
    cfg = toy_config(manifest, tmp_path / "tuned", "unet",
                     extra=[f"init_from={source}", "arch.kwargs.channels=[16,32,64]", "trainer.optimizer.lr=0.0",
                            "data.grid.segmentation.patch_size=[48,48,48]"])
    run = train_stage(cfg)
    before, after = _weights(source / "checkpoints" / "best.pt"), _weights(run / "checkpoints" / "final.pt")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the loaded weights, unchanged
    card, src = (json.loads((d / "model.json").read_text()) for d in (run, source))
    assert card["arch_kwargs"] == src["arch_kwargs"] and card["patch_size"] == src["patch_size"]
    assert card["classes"] == src["classes"] and card["target_spacing_mm"] == src["target_spacing_mm"]
    assert f"init_from: {source}" in (run / "config.yaml").read_text()


def test_finetuning_changes_weights_with_a_learning_rate(tmp_path, source_run):
    manifest, source = source_run
    run = train_stage(toy_config(manifest, tmp_path / "tuned", "unet", extra=[f"init_from={source}"]))
    before, after = _weights(source / "checkpoints" / "best.pt"), _weights(run / "checkpoints" / "final.pt")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_init_from_errors_name_the_problem(tmp_path, source_run):
    manifest, source = source_run
    with pytest.raises(DataError, match=r"weights are for arch 'unet', got \+arch=segresnet; use \+arch=unet"):
        train_stage(toy_config(manifest, tmp_path / "a", "segresnet", extra=[f"init_from={source}"]))
    with pytest.raises(DataError, match="a 'segmentation' model, but stage=localization"):
        train_stage(toy_config(manifest, tmp_path / "b", "unet", "localization", extra=[f"init_from={source}"]))
    with pytest.raises(DataError, match="no model.json"):
        train_stage(toy_config(manifest, tmp_path / "c", "unet", extra=[f"init_from={tmp_path}"]))


def test_init_from_resolves_two_step_folders_and_the_shipped_model(tmp_path, source_run):
    _, source = source_run
    (tmp_path / "two_step").mkdir()
    (tmp_path / "two_step" / "segmentation").symlink_to(source)
    assert resolve_init_run(tmp_path / "two_step", "segmentation") == source.resolve()
    if (SHIPPED_MODEL / "segmentation" / "model.json").exists():
        assert resolve_init_run("default", "localization") == (SHIPPED_MODEL / "localization").resolve()
