"""Bad settings are refused when the config is composed: before any data is read or a run folder is made.

Each case runs the real ``train`` verb (in-process, and once as a subprocess) with a manifest path that does not
exist: had the run read its data first, the error would name the manifest instead of the setting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dentate_research.cli.train import run_hydra
from dentate_research.data.io import DataError
from dentate_research.schema import (
    TRAIN_SETTING_RANGES,
    Choice,
    LRSchedule,
    check_train_settings,
    closest_setting,
    compose,
    setting_keys,
    train_config,
)

# (override, words the one-line error must contain: the key, the value and what is allowed)
BAD_SETTINGS = [
    ("trainer.iterations_per_epoch=0", ["trainer.iterations_per_epoch", "0", "integer >= 1"]),
    ("trainer.epochs=-1", ["trainer.epochs", "-1", "integer >= 1"]),
    ("trainer.batch_size=0", ["trainer.batch_size", "0", "integer >= 1"]),
    ("trainer.optimizer.lr=-1", ["trainer.optimizer.lr", "-1", "number >= 0"]),
    ("trainer.lr_schedule=cosin", ["trainer.lr_schedule", "cosin", "poly, cosine, constant"]),
    ("inferer.tta=lrswap", ["inferer.tta", "lrswap", "none, lr_swap, all_flips_lr_swap"]),
    ("stage.normalization.scheme=zscore", ["stage.normalization.scheme", "zscore", "zscore_nonzero"]),
    ("augmentation.lr_flip=swap", ["augmentation.lr_flip", "swap", "swap_labels, none, plain"]),
    ("augmentation.gamma_prob=1.5", ["augmentation.gamma_prob", "1.5", "[0, 1]"]),
    ("stage.patch_size=[64,64]", ["stage.patch_size", "[64, 64]", "three integers"]),
    ("stage.crop.margin_mm=-2", ["stage.crop.margin_mm", "-2", ">= 0"]),
    ("trainer.device=gpu", ["trainer.device", "gpu", "cuda:N"]),
    ("trainer.foreground_prob=2", ["trainer.foreground_prob", "2", "[0, 1]"]),
    ("inferer.overlap=1", ["inferer.overlap", "1", "[0, 1)"]),
    ("trainer.max_iterations=-5", ["trainer.max_iterations", "no such setting", "did you mean trainer."]),
    ("+trainer.max_iterations=-5", ["trainer.max_iterations", "no such setting", "did you mean trainer."]),
    ("trainer.lr=-1", ["trainer.lr", "no such setting", "trainer.optimizer.lr"]),
    ("trainer=fast", ["trainer=fast", "no such option", "converge, default"]),
]


@pytest.mark.parametrize("override, expected", BAD_SETTINGS, ids=[b[0] for b in BAD_SETTINGS])
def test_bad_setting_is_refused_before_data_or_run_folder(override, expected, tmp_path, capsys):
    run_dir = tmp_path / "run"
    manifest = tmp_path / "absent" / "manifest.tsv"
    code = run_hydra(["+arch=unet", f"data.manifest={manifest}", f"hydra.run.dir={run_dir}",
                      f"paths.runs_dir={tmp_path / 'runs'}", override])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert "manifest" not in lines[0]  # refused before the data was looked at
    assert not run_dir.exists() and not (tmp_path / "runs").exists() and not Path("outputs").exists()


def test_a_sweep_with_one_bad_job_starts_none(tmp_path, capsys):
    code = run_hydra(["-m", "+arch=unet", f"data.manifest={tmp_path / 'absent.tsv'}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.batch_size=2,0"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "error: trainer.batch_size=0 is not allowed; allowed: an integer >= 1"
    assert not (tmp_path / "sweep").exists()


def test_the_real_cli_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dentate_research", "train", "+arch=unet",
                           f"data.manifest={tmp_path / 'absent.tsv'}", f"hydra.run.dir={tmp_path / 'run'}",
                           "trainer.lr_schedule=cosin"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: trainer.lr_schedule: Invalid value 'cosin', expected one of [poly, cosine, constant]"]
    assert list(tmp_path.iterdir()) == []


def test_library_train_stage_refuses_the_same_settings(tmp_path):
    from dentate_research.training.api import train_stage

    cfg = compose("train", ["+arch=unet", f"data.manifest={tmp_path / 'absent.tsv'}",
                            f"paths.run_dir={tmp_path / 'run'}"])
    cfg.trainer.iterations_per_epoch = 0  # a typed config refuses a bad choice on assignment; ranges at the check
    with pytest.raises(DataError, match=r"trainer\.iterations_per_epoch=0 is not allowed"):
        train_stage(cfg)
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain["trainer"]["iterations_per_epoch"] = 50
    plain["trainer"]["lr_schedule"] = "cosin"
    with pytest.raises(DataError, match=r"trainer\.lr_schedule: Invalid value 'cosin'"):
        train_stage(plain)
    assert not (tmp_path / "run").exists()


def test_every_range_key_exists_and_the_defaults_pass():
    cfg = train_config(compose("train", ["+arch=unet", "data.manifest=m.tsv"]))
    keys = set(setting_keys())
    assert set(TRAIN_SETTING_RANGES) <= keys, set(TRAIN_SETTING_RANGES) - keys
    check_train_settings(cfg)  # the shipped defaults are allowed
    for group in ("converge", "paper", "short", "smoke"):
        check_train_settings(train_config(compose("train", ["+arch=unet", "data.manifest=m.tsv",
                                                            f"trainer={group}"])))


def test_choices_read_and_write_as_plain_words(tmp_path):
    cfg = compose("train", ["+arch=unet", "data.manifest=m.tsv", "trainer.lr_schedule=cosine"])
    value = cfg.trainer.lr_schedule
    assert isinstance(value, Choice) and value == "cosine" and f"{value}" == "cosine" and value is LRSchedule.cosine
    assert "lr_schedule: cosine" in OmegaConf.to_yaml(cfg)
    assert json.loads(json.dumps(OmegaConf.to_container(cfg.trainer)))["lr_schedule"] == "cosine"
    assert {LRSchedule.cosine: 1}["cosine"] == 1  # hashes as its word: usable as a key of plain-string tables


def test_closest_setting_prefers_the_same_group():
    assert closest_setting("trainer.batchsize") == "trainer.batch_size"
    assert closest_setting("stage.normalisation") == "stage.normalization"
    assert closest_setting("augmentation.gama_prob") == "augmentation.gamma_prob"
