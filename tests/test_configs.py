"""Hydra configs: every file in every group composes; the train CLI runs end to end; a missing +arch is clear."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from dentate_research.cli.main import main
from dentate_research.models import available_architectures
from dentate_research.schema import CONFIG_DIR, compose

# groups of the train config: its defaults list plus `arch` (deliberately without a default)
_DEFAULTS = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml").defaults)
GROUPS = sorted({next(iter(d)) for d in _DEFAULTS if isinstance(d, dict)} | {"arch"})


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra_config: bool = False):
    return compose("train", overrides, return_hydra_config=hydra_config)


def test_config_groups_cover_every_swappable_part():
    assert set(GROUPS) == {"arch", "data", "stage", "split", "trainer", "augmentation", "inferer", "logger",
                           "paths", "experiment"}
    assert all(_options(g) for g in GROUPS)
    assert set(_options("arch")) == set(available_architectures())  # a config per registered network
    assert {"smoke", "paper"} <= set(_options("trainer"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_file_composes(group, option):
    overrides = [f"+arch={option}"] if group == "arch" else ["+arch=unet", f"{group}={option}"]
    if (group, option) == ("data", "manifest") or option == "paper":
        overrides.append("data.manifest=/data/manifest.tsv")
    if (group, option) == ("split", "loso"):
        overrides.append("split.site=siteA")
    if (group, option) == ("split", "explicit"):
        overrides.append("split.train=[a,b]")
    cfg = _compose(overrides)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert container["arch"]["name"] in available_architectures()
    assert container["stage"]["name"] in ("segmentation", "localization")
    assert len(container["stage"]["patch_size"]) == 3
    assert container["inferer"]["overlap"] == 0.5 and container["inferer"]["mode"] == "gaussian"


def test_slurm_launcher_composes():
    cfg = _compose(["+arch=nnunet", "hydra/launcher=slurm"], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert "submitit" in launcher._target_.lower() and launcher.timeout_min > 0


def test_architectures_share_everything_but_the_architecture():
    a = OmegaConf.to_container(_compose(["+arch=unet", "experiment=benchmark_small"]), resolve=True)
    b = OmegaConf.to_container(_compose(["+arch=nnunet", "experiment=benchmark_small"]), resolve=True)
    assert a.pop("arch") != b.pop("arch")
    assert a == b  # split, preprocessing, patch, budget, inferer, postprocessing identical


def test_missing_arch_gives_the_choices(capsys):
    """arch is a mandatory group (???): Hydra's own error, one line, with the choices; +arch= is accepted too."""
    assert main(["train", "trainer=smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "You must specify 'arch'" in err[0], err
    assert all(name in err[0] for name in available_architectures())
    for override in ("+arch=vnet", "arch=vnet"):
        assert main(["train", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: arch=vnet: no such option; allowed: {', '.join(sorted(available_architectures()))}"]
    assert _compose(["+arch=unet"]).arch.name == _compose(["arch=unet"]).arch.name == "unet"


def test_list_archs_names_every_architecture_without_torch():
    code = ("import sys; from dentate_research.cli.main import main; rc = main(['list-archs']); "
            "assert rc == 0 and 'torch' not in sys.modules and 'monai' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(f"\n{name} " in "\n" + proc.stdout for name in available_architectures()), proc.stdout


def test_train_cli_end_to_end(tmp_path):
    from dentate_research.training.toy_data import make_toy_dataset

    manifest = make_toy_dataset(tmp_path / "toy", n_cases=4, seed=2)
    run_dir = tmp_path / "run"
    code = main(["train", "arch=unet", "trainer=smoke", "logger=none", "data=manifest", f"data.manifest={manifest}",
                 "data.label_rater='true'", "data.grid.segmentation.spacing_mm=2.0",
                 "data.grid.segmentation.patch_size=[32,32,32]", "arch.kwargs.channels=[8,16,32]",
                 "arch.kwargs.strides=[2,2]", "split=explicit", "split.train=[toy000,toy001,toy002]",
                 "split.val=[toy003]", f"paths.run_dir={run_dir}", "trainer.epochs=1", "stage.crop.margin_mm=6"])
    assert code == 0
    card = json.loads((run_dir / "model.json").read_text())
    assert card["arch"] == "unet" and card["train_cases"] == ["toy000", "toy001", "toy002"]
    config = OmegaConf.load(run_dir / "config.yaml")  # the resolved composed config is recorded
    assert config.arch.name == "unet" and config.trainer.epochs == 1 and config.paths.run_dir == str(run_dir)


def test_local_multirun_sweeps_architectures_and_folds(tmp_path):
    """`train -m` sweeps architectures x folds with Hydra's basic launcher; each job gets its own run directory."""
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.splits import make_splits, write_splits
    from dentate_research.training.toy_data import make_toy_dataset

    manifest = make_toy_dataset(tmp_path / "toy", n_cases=4, seed=3)
    split_file = write_splits(make_splits(read_manifest(manifest), n_folds=2, test_fraction=0.0), tmp_path / "splits")
    sweep_dir = tmp_path / "sweep"
    code = main(["train", "-m", "+arch=unet,attention_unet", "split.fold=0,1", "trainer=smoke", "logger=none",
                 "data=manifest", f"data.manifest={manifest}", "data.label_rater='true'",
                 "data.grid.segmentation.spacing_mm=2.0", "data.grid.segmentation.patch_size=[32,32,32]",
                 f"split.file={split_file}", "trainer.epochs=1", "trainer.iterations_per_epoch=1",
                 "stage.crop.margin_mm=6", f"hydra.sweep.dir={sweep_dir}"])
    assert code == 0
    cards = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/model.json"))]
    assert sorted((c["arch"], len(c["val_cases"]) > 0) for c in cards) == [("attention_unet", True)] * 2 + \
        [("unet", True)] * 2
    assert len({tuple(c["val_cases"]) for c in cards}) == 2  # two different folds
