"""One source of truth: the typed config schema holds every default, YAML files are checked deltas, the settings
objects of every config instantiate, the code uses what the config says, layers import only downward, and a wheel
install (configs inside the package) trains."""

from __future__ import annotations

import ast
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dentate_research import schema
from dentate_research.schema import CONFIG_DIR, compose

PACKAGE = Path(schema.__file__).resolve().parent
REPO = PACKAGE.parent
TRAIN_GROUPS = ("data", "stage", "split", "trainer", "augmentation", "inferer", "logger", "experiment")
REQUIRED = {("data", "manifest"): ["data.manifest=/data/manifest.tsv"], ("split", "loso"): ["split.site=siteA"],
            ("split", "explicit"): ["split.train=[a,b]"], ("experiment", "paper"): ["data.manifest=/d/m.tsv"]}


def _train_choices() -> list[list[str]]:
    choices = [[f"+arch={p.stem}"] for p in sorted((CONFIG_DIR / "arch").glob("*.yaml"))]
    for group in TRAIN_GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            choices.append(["+arch=unet", f"{group}={path.stem}", *REQUIRED.get((group, path.stem), [])])
    return choices


@pytest.mark.parametrize("overrides", _train_choices(), ids=lambda o: " ".join(o))
def test_every_train_config_instantiates_its_settings_objects(overrides):
    """Each config file composes onto the schema into a typed TrainConfig, and the runtime settings objects the
    code builds from it (trainer, augmentation, inferer: the objects every backend reads) hold exactly the composed
    values."""
    from dentate_research.runtime.inferer import InfererSettings
    from dentate_research.training.augmentation import AugmentationSettings

    cfg = compose("train", overrides)
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, schema.TrainConfig) and isinstance(typed.trainer, schema.TrainerSettings)
    composed = OmegaConf.to_container(cfg, resolve=True)

    trainer = schema.trainer_settings(composed["trainer"])
    assert isinstance(trainer, schema.TrainerSettings)
    assert dataclasses.asdict(trainer) == composed["trainer"]

    aug = AugmentationSettings.from_dict(composed["augmentation"])
    aug.validate()
    for key, value in composed["augmentation"].items():
        got = getattr(aug, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key

    inferer = InfererSettings.from_dict(composed["inferer"], composed["stage"]["patch_size"])
    assert inferer.to_dict() == {"roi_size": list(composed["stage"]["patch_size"]),
                                 **{k: v for k, v in composed["inferer"].items()
                                    if k != "largest_component_per_class"}}


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "reproduce" / "experiment").glob("*.yaml")))
def test_every_reproduce_preset_instantiates_study_settings(preset):
    from dentate_research.studies import StudySettings

    cfg = compose("reproduce/reproduce", [f"experiment={preset}"])
    assert isinstance(OmegaConf.to_object(cfg), schema.ReproduceConfig)
    settings = StudySettings.from_config(cfg)
    assert settings.name == preset and settings.out_dir == Path("experiments") / preset
    assert settings.failure_modes.preset == cfg.failure_modes.preset
    assert settings.loso_overrides == list(cfg.loso_overrides) and isinstance(settings, schema.ReproduceConfig)
    for arch in {settings.pipeline_arch, settings.localizer_arch, *settings.architectures}:  # every run composes
        compose("train", [f"+arch={arch}", *settings.train_overrides, *settings.arch_overrides.get(arch, [])])


def test_yaml_files_state_no_schema_default():
    """A value written in a group's base file that equals the schema's default is a second copy of it."""
    defaults = OmegaConf.to_container(OmegaConf.structured(schema.TrainConfig))
    for group in ("trainer", "augmentation", "inferer", "paths", "split", "stage", "data", "logger"):
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
            if "defaults" in raw:  # files that extend another option state their own deltas only
                raw.pop("defaults")
            for key, value in raw.items():
                if group == "stage" and key == "name":
                    continue
                base = defaults[group].get(key) if isinstance(defaults[group], dict) else None
                assert value != base or isinstance(value, dict), f"{path}: {key}={value} repeats the schema default"


def test_unknown_keys_are_rejected_with_their_name():
    from dentate_research.data.io import DataError
    from dentate_research.studies import StudySettings
    from dentate_research.training.api import _as_config

    forced = compose("train", ["+arch=unet", "+trainer.bogus=1"])  # Hydra's '+' adds it; the run refuses it
    with pytest.raises(DataError, match="bogus"):
        _as_config(forced)
    with pytest.raises(Exception, match="rotate_degs"):
        compose("train", ["+arch=unet", "augmentation.rotate_degs=3"])
    base = OmegaConf.to_container(compose("train", ["+arch=unet"]))
    base["trainer"]["epoch"] = 3  # a typo in a hand-written dict (library use without Hydra)
    with pytest.raises(DataError, match="epoch"):
        _as_config(base)
    with pytest.raises(Exception, match="bogus"):
        StudySettings.from_config({"name": "x", "bogus": 1})


def test_partial_dict_gets_the_schema_defaults():
    from dentate_research.training.api import _as_config

    cfg = _as_config({"arch": {"name": "unet"}, "data": {"manifest": "m.tsv"}, "stage": {}, "split": {},
                      "trainer": {"epochs": 3}, "augmentation": {}, "inferer": {}, "logger": {}, "paths": {}})
    assert cfg.trainer.epochs == 3 and cfg.trainer.iterations_per_epoch == schema.TrainerSettings.iterations_per_epoch
    assert cfg.augmentation.rotate_deg == schema.AugmentationSettings.rotate_deg
    assert cfg.stage.crop.margin_mm == schema.CropSettings.margin_mm


def test_stage_config_is_the_packaged_config_plus_its_stated_changes():
    """The two-step trainer's configs (default model, demo, benchmarks, tests) are composed, not hand-built: every
    key the recipe does not set equals the packaged default."""
    from dentate_research.training.stage_config import stage_config
    from dentate_research.training.two_step import DEFAULT_SEGMENTER

    cfg = stage_config("/d/manifest.tsv", "segmentation", "/r/seg", DEFAULT_SEGMENTER, train_ids=["a"], val_ids=["b"],
                       epochs=3, iterations_per_epoch=2, augmentation="domain_randomization")
    packaged = OmegaConf.to_container(compose("train", ["+arch=unet", "augmentation=domain_randomization"]),
                                      resolve=True)
    assert cfg["augmentation"] == packaged["augmentation"] and cfg["inferer"] == packaged["inferer"]
    changed = {"epochs", "iterations_per_epoch", "val_every", "val_iterations", "batch_size", "foreground_prob",
               "device"}
    assert {k: v for k, v in cfg["trainer"].items() if k not in changed} == \
        {k: v for k, v in packaged["trainer"].items() if k not in changed}
    assert cfg["stage"]["normalization"] == packaged["stage"]["normalization"]


# ------------------------------------------------------------------------------------------------ import layers
LAYERS = ("", "schema", "logs", "provenance", "data", "model_contract", "models", "runtime", "training", "inference",
          "evaluation", "baselines", "studies", "cli", "__main__")


def _imports() -> dict[str, tuple[set[str], set[str]]]:
    """Module -> (module-level imports, all imports) of dentate_research modules, from the source (AST)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        modules[name] = (path, is_pkg)
    graph = {}
    for name, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text())
        package = name if is_pkg else name.rsplit(".", 1)[0]
        top_nodes = {id(n) for n in tree.body}
        for block in tree.body:  # imports under a module-level if/try also run at import time
            if isinstance(block, (ast.If, ast.Try)):
                top_nodes |= {id(n) for n in ast.walk(block)}
        top, every = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if isinstance(node, ast.ImportFrom) and any(
                    isinstance(p, ast.If) and "TYPE_CHECKING" in ast.dump(p.test) and node in ast.walk(p)
                    for p in tree.body):
                continue  # type-only imports never run
            found = set()
            for n in names:
                while n and n not in modules:
                    n = n.rsplit(".", 1)[0] if "." in n else ""
                if n and n != name:
                    found.add(n)
            every |= found
            if id(node) in top_nodes:
                top |= found
        graph[name] = (top, every)
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "")


def test_layers_import_only_downward():
    """schema -> logs -> data -> model contract -> models -> runtime -> training -> inference -> evaluation ->
    baselines -> studies -> cli: no import (module-level or lazy) reaches a higher layer."""
    upward = [f"{m} -> {n}" for m, (_, every) in _imports().items() for n in every
              if _layer(n) > _layer(m) and n != "dentate_research"]
    assert not upward, upward


def test_inference_never_imports_training():
    """Inference (and the runtime layer it shares with training) loads and runs trained stages without importing
    the training package, at module level or inside a function."""
    offending = [f"{m} -> {n}" for m, (_, every) in _imports().items() for n in every
                 if m.split(".")[1] in ("inference", "runtime") and n.startswith("dentate_research.training")]
    assert not offending, offending


def test_no_import_cycle():
    """No cycle among the package's imports, module-level or inside functions (a lazy import closes a loop too)."""
    graph = {m: every for m, (_, every) in _imports().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


# reviewed ``.get(<schema key>, value)`` calls that read something other than a config (file:key -> what it reads)
NOT_CONFIG_READS = {
    "evaluation/metrics.py:fold": "a case's manifest metadata",
    "studies/architectures.py:train": "a run's timings_s record",
    "studies/tables.py:data": "a provenance record",
    "training/api.py:margin_mm": "setdefault from the localizer's own card (the margin it was trained with)",
}


def _schema_default(node: ast.AST) -> bool:
    """``CropSettings.margin_mm``: the schema's own default, read where it lives (not a second copy)."""
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and dataclasses.is_dataclass(getattr(schema, node.value.id, None)))


def test_no_config_default_outside_the_schema():
    """``cfg.get("<schema key>", <value>)`` / ``setdefault`` anywhere in the package would be a second default; the
    few reviewed reads of non-config records are listed in NOT_CONFIG_READS."""
    keys = set()
    for cls in (schema.TrainerSettings, schema.AugmentationSettings, schema.InfererConfig, schema.StageSettings,
                schema.CropSettings, schema.SplitSettings, schema.DataSettings, schema.ReproduceConfig,
                schema.FailureModeSettings, schema.StudyDataSettings, schema.StudySplitSettings,
                schema.NormalizationSettings, schema.OptimizerSettings, schema.GridSettings):
        keys |= {f.name for f in dataclasses.fields(cls)}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("get", "setdefault") and len(node.args) == 2
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys
                    and not (isinstance(node.args[1], ast.Constant) and node.args[1].value is None)
                    and not _schema_default(node.args[1]) and f"{rel}:{node.args[0].value}" not in NOT_CONFIG_READS):
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def test_architecture_settings_are_written_once():
    """configs/arch/<name>.yaml is where an architecture's keyword arguments live: the registry reads them from
    there (no literal copy in models/registry.py) and builders have no fallback values."""
    from dentate_research.models import available_architectures, get_arch

    for name in available_architectures():
        raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "arch" / f"{name}.yaml"))
        assert get_arch(name).default_kwargs == raw["kwargs"], name
    source = (PACKAGE / "models" / "registry.py").read_text()
    tree = ast.parse(source)
    literal_kwargs = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.keyword)
                      and node.arg == "default_kwargs"]
    fallbacks = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop") and len(node.args) == 2]
    assert not literal_kwargs and not fallbacks, (literal_kwargs, fallbacks)


# ---------------------------------------------------------------------------------------------- wheel install
@pytest.mark.slow
def test_wheel_install_trains_from_any_folder(tmp_path):
    """`pip install .` (not editable): the wheel holds the YAML configs, and `train` runs from another folder."""
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "dentate_research", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_wheel(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", build, str(wheels)], cwd=source, check=True, capture_output=True)
    wheel = next(wheels.glob("dentate_research-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    assert (target / "dentate_research" / "configs" / "train.yaml").is_file()
    assert (target / "dentate_research" / "configs" / "reproduce" / "experiment" / "cpu.yaml").is_file()

    from dentate_research.training.toy_data import make_toy_dataset

    manifest = make_toy_dataset(tmp_path / "toy", n_cases=4, seed=2)
    run_dir = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "DENTATE_ROOT": str(elsewhere), "WANDB_MODE": "disabled"}
    where = subprocess.run([sys.executable, "-c", "import dentate_research; print(dentate_research.__file__)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout
    assert Path(where.strip()).resolve().is_relative_to(target.resolve())  # the installed copy, not the source
    proc = subprocess.run(
        [sys.executable, "-m", "dentate_research", "train", "+arch=unet", "trainer=smoke", "logger=none",
         "data=manifest", f"data.manifest={manifest}", "data.label_rater='true'",
         "data.grid.segmentation.spacing_mm=2.0", "data.grid.segmentation.patch_size=[32,32,32]",
         "arch.kwargs.channels=[8,16,32]", "arch.kwargs.strides=[2,2]", "split=explicit",
         "split.train=[toy000,toy001,toy002]", "split.val=[toy003]", f"paths.run_dir={run_dir}", "trainer.epochs=1",
         "stage.crop.margin_mm=6"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "model.json").is_file() and (run_dir / "config.yaml").is_file()
    assert OmegaConf.load(run_dir / "config.yaml").augmentation.rotate_deg == schema.AugmentationSettings.rotate_deg
