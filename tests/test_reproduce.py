"""`reproduce experiment=smoke` writes every table T1-T6 from real training runs; the notebook runs on them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("T1_cohort", "T2_rater_reliability", "T3_architectures", "T4_one_vs_two_step", "T5_external",
          "T6_unseen_sites")


def test_every_preset_composes():
    from dentate_research.cli.reproduce import CONFIG_DIR, compose_train_config, settings_from_config
    from dentate_research.schema import compose

    presets = sorted(p.stem for p in (CONFIG_DIR / "reproduce" / "experiment").glob("*.yaml"))
    assert {"smoke", "cpu", "paper"} <= set(presets)
    for preset in presets:
        settings = settings_from_config(compose("reproduce/reproduce", [f"experiment={preset}"]))
        assert settings.name == preset
        # every training run of the preset composes against configs/train.yaml
        for arch in {*settings.architectures, settings.localizer_arch}:
            cfg = compose_train_config([*settings.train_overrides, f"+arch={arch}", "stage=segmentation",
                                        *settings.arch_overrides.get(arch, [])])
            assert cfg.arch.name == arch
            if arch != settings.localizer_arch or arch in settings.architectures:  # patch fits the network
                from omegaconf import OmegaConf

                from dentate_research.models import validate_patch_size

                validate_patch_size(arch, list(cfg.stage.patch_size), OmegaConf.to_container(cfg.arch.kwargs))


def test_unknown_study_is_an_error(capsys):
    from dentate_research.cli.reproduce import run_hydra
    from dentate_research.studies import study_names

    assert run_hydra(["studies=[cohort,tables]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown studies ['tables']" in err  # one line naming the culprit ...
    assert all(name in err.partition("allowed:")[2] for name in ["all", *study_names()])  # ... and the allowed


def test_every_registered_study_has_a_unique_name_and_table_id():
    from dentate_research.studies import registered_studies
    from dentate_research.studies.registry import STUDY_MODULES

    studies = registered_studies()
    assert [s.table_id for s in studies] == [f"T{i}" for i in range(1, 8)]  # T1-T7, in table order
    assert len({s.name for s in studies}) == len({s.table_id for s in studies}) == len(studies)
    assert {s.table.__module__.rsplit(".", 1)[-1] for s in studies} == set(STUDY_MODULES)  # each module registers
    assert all(s.title.strip() and "\n" not in s.title for s in studies)


def test_default_studies_are_every_registered_study_in_table_order():
    from dentate_research.schema import ReproduceConfig, compose
    from dentate_research.studies import StudySettings, study_names

    assert ReproduceConfig().studies == ["all"]  # the schema names no study: the registry does
    assert StudySettings.from_config(compose("reproduce/reproduce", [])).studies == study_names()
    picked = StudySettings.from_config({"name": "x", "studies": ["loso", "all", "cohort"]})
    assert picked.studies == ["loso", *(n for n in study_names() if n != "loso")]  # 'all' in place, no repeats


@pytest.fixture()
def dummy_study():
    """A study registered by one ``register`` call (what a new study module does), unregistered afterwards."""
    from dentate_research.studies import Study, register, unregister
    from dentate_research.studies.tables import write_table

    def table(runner):
        return write_table(pd.DataFrame({"n": [len(runner.s.studies)]}), runner.s.out_dir, "T99_dummy", "T99 Dummy",
                           runner.stamp())

    study = register(Study(name="dummy", table_id="T99", title="A test study", table=table,
                           runs=lambda runner: [("segmentation", runner.s.pipeline_arch, "0")]))
    try:
        yield study
    finally:
        unregister("dummy")


def test_adding_a_study_is_one_registration(dummy_study, tmp_path, monkeypatch, capsys):
    """Registered, a study is known to the settings (``all``, by name), ``--help``, the runner's look-up, its run
    plan and its run."""
    from dentate_research.cli.reproduce import compose_train_config, run_hydra
    from dentate_research.studies import Study, StudySettings, look_up_study, register, study_names
    from dentate_research.studies.runner import StudyRunner

    assert look_up_study("dummy") is dummy_study and study_names()[-1] == "dummy"
    assert StudySettings.from_config({"name": "x"}).studies[-1] == "dummy"
    assert run_hydra(["--help"]) == 0
    assert "dummy          T99 A test study" in capsys.readouterr().out
    settings = StudySettings.from_config({"name": "x", "studies": ["dummy"]}, out_dir=tmp_path / "out",
                                         work_dir=tmp_path / "work", command="test")
    runner = StudyRunner(settings, compose_train_config)
    assert runner.planned_runs() == [("segmentation", "unet", "0")]

    def no_data(self):
        self.provenance = {"command": "test", "study": "x", "data": "none", "git": {}, "finished_utc": ""}

    monkeypatch.setattr(StudyRunner, "prepare_data", no_data)
    written = runner.run()
    assert written == {"dummy": tmp_path / "out" / "T99_dummy.md"} and written["dummy"].exists()
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "T99_dummy.md" in readme and "Wall time: this invocation" in readme
    for clash in (Study(name="dummy", table_id="T98", title="t", table=dummy_study.table),
                  Study(name="other", table_id="T1", title="t", table=dummy_study.table)):
        with pytest.raises(ValueError, match="same name or table id"):
            register(clash)


@pytest.mark.slow
def test_smoke_reproduction_and_notebook(tmp_path):
    from dentate_research.cli.reproduce import run_hydra

    out = tmp_path / "experiments"
    rc = run_hydra([f"out_root={out}", f"work_root={tmp_path / 'work'}", "architectures=[unet,nnunet]",
                    "loso_sites=[siteA]"])
    assert rc == 0
    study = out / "smoke"
    for name in TABLES:
        table = pd.read_csv(study / f"{name}.csv")
        assert len(table) > 0, name
        md = (study / f"{name}.md").read_text()
        assert "Made by `python -m dentate_research reproduce" in md and "git" in md
    prov = json.loads((study / "provenance.json").read_text())
    # every model behind the tables is a real, completed training run
    assert {"localization/unet/0", "segmentation/unet/0", "segmentation/nnunet/0",
            "localization/unet/loso:siteA", "segmentation/unet/loso:siteA"} <= set(prov["runs"])
    for run in prov["runs"].values():
        run_dir = Path(run["run_dir"])
        assert (run_dir / "model.json").exists() and (run_dir / "run_info.json").exists()
    readme = (study / "README.md").read_text()
    for key, run in prov["runs"].items():  # each run listed in the README with its own wall time and commit
        assert run["train_wall_s"] > 0 and f"| {key} | this invocation |" in readme
    t3 = pd.read_csv(study / "per_case" / "T3_architectures.csv")
    assert set(t3["method"]) == {"unet", "nnunet"}
    assert t3["dice"].between(0, 1).all()
    t5 = pd.read_csv(study / "per_case" / "T5_external.csv")
    assert set(t5["site"]) == {"siteI"} and "classical baseline" in set(t5["method"])
    t6 = pd.read_csv(study / "per_case" / "T6_unseen_sites.csv")
    assert set(t6["site"]) == {"siteA"}
    assert t6["chi_ref_ppm"].notna().all()
    t2 = pd.read_csv(study / "T2_rater_reliability.csv")
    assert {"ICC2", "ICC3"} <= set(t2["form"])

    # the analysis notebook runs on these results
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    os.environ["DENTATE_EXPERIMENT_DIR"] = str(study)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        del os.environ["DENTATE_EXPERIMENT_DIR"]
    figures = {p.name for p in (study / "notebook_figures").glob("*.png")}
    assert {"T3_dice_by_architecture.png", "T6_volume_agreement.png", "T5_external_dice.png"} <= figures


@pytest.mark.slow
def test_failure_modes_study_on_smoke(tmp_path):
    """T7 on the smoke setup: fold-0 two-step model and baseline on 2 mm hard-case phantoms, binned per factor."""
    from dentate_research.cli.reproduce import run_hydra

    out = tmp_path / "experiments"
    rc = run_hydra([f"out_root={out}", f"work_root={tmp_path / 'work'}", "studies=[failure_modes]",
                    "failure_modes.n_subjects_per_site=1"])
    assert rc == 0
    study = out / "smoke"
    md = (study / "T7_failure_modes.md").read_text()
    assert "Made by `python -m dentate_research reproduce" in md and "Wilson" in md
    table = pd.read_csv(study / "T7_failure_modes_full.csv")
    assert {"contrast", "age", "vein_contact", "coverage", "artefact", "site"} <= set(table["factor"])
    assert set(table.loc[table["factor"] == "site", "bin"]) == {f"site{c}" for c in "ABCDEFGHI"}
    for label in ("deep", "baseline"):
        rates = table[f"{label}_fail_rate"].dropna()
        assert rates.between(0, 1).all()
        assert (table[f"{label}_fail_ci_low"].dropna() <= rates + 1e-9).all()
    per_side = pd.read_csv(study / "per_case" / "T7_failure_modes.csv")
    assert set(per_side["method"]) == {"two-step unet", "classical baseline"}
    assert per_side["dice"].between(0, 1).all()
    assert set(per_side["reference"].astype(str).str.lower()) == {"true"}  # the phantom truth (pandas reads a bool)
    assert per_side["contrast_ppm"].notna().all() and per_side["case"].nunique() == 9
    assert (study / "figures" / "T7_failure_rate_by_factor.png").exists()
    prov = json.loads((study / "provenance.json").read_text())
    assert {"localization/unet/0", "segmentation/unet/0"} <= set(prov["runs"])
    # applying finished runs read-only: allow_training=false refuses to train a missing run
    with pytest.raises(RuntimeError, match="allow_training is false"):
        run_hydra([f"out_root={out}", f"work_root={tmp_path / 'other'}", "studies=[failure_modes]",
                   "failure_modes.n_subjects_per_site=1", "allow_training=false"])


def test_paper_dry_run_composes_every_run_and_writes_nothing(tmp_path, capsys):
    """`reproduce experiment=paper dry_run=true`: the GPU preset's 21 runs (6 architectures on fold 0, nnU-Net's
    1000 x 250 budget with mixed precision on CUDA, a localizer and an nnU-Net per left-out development site),
    each composed and validated, printed as a table; no data generated, no folder made."""
    from dentate_research.cli.reproduce import run_hydra

    rc = run_hydra(["experiment=paper", "dry_run=true", f"out_root={tmp_path / 'out'}",
                    f"work_root={tmp_path / 'work'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "dry run of study 'paper': 21 training run(s)" in out and "5 folds" in out
    rows = [line for line in out.splitlines() if line.startswith("| segmentation/") or line.startswith("| local")]
    assert len(rows) == 21
    for arch in ("unet", "attention_unet", "segresnet", "unetr", "swin_unetr", "nnunet"):
        (row,) = [r for r in rows if r.startswith(f"| segmentation/{arch}/0 ")]
        assert "| cuda | 1000 x 250 = 250000 |" in row and "| 128x96x96 | True | merged |" in row, row
        if arch == "nnunet":  # its own trainer: no wall-clock cap or patience, whatever trainer.max_minutes says
            assert row.endswith("| none (nnunet runs epochs x iterations) |"), row
    assert sum(r.startswith("| segmentation/nnunet/loso:site") for r in rows) == 7  # siteA-G, never siteH/siteI
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_paper_dry_run_names_the_run_with_a_bad_setting(tmp_path, capsys):
    from dentate_research.cli.reproduce import run_hydra

    rc = run_hydra(["experiment=paper", "dry_run=true", f"out_root={tmp_path}", f"work_root={tmp_path}",
                    "+arch_overrides.unetr=['trainer.batch_size=0']"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: run segmentation/unetr/0: trainer.batch_size=0 is not allowed"), err

    rc = run_hydra(["experiment=paper", "dry_run=true", f"out_root={tmp_path}", f"work_root={tmp_path}",
                    f"data.manifest={tmp_path / 'missing.tsv'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing.tsv" in err, err


@pytest.mark.slow
def test_paper_preset_launches_on_cpu_for_a_few_iterations(tmp_path):
    """The GPU preset itself trains and writes T3 on a CPU: its trainer (trainer=paper: mixed precision, here bf16 on
    CPU), label scheme, randomization and localizer crops, for the MONAI U-Net and nnU-Net (the two-step model's
    segmenter), with only the device, the data (tiny phantoms), the budget (one iteration per run), the network sizes
    (the CPU preset's) and the segmentation grid (the tiny phantoms' 2 mm instead of 1 mm, a smaller patch) changed.
    The other four architectures' runs are composed and checked by the dry run above; their networks train in
    tests/test_training.py."""
    from omegaconf import OmegaConf

    from dentate_research.cli.reproduce import compose_train_config, settings_from_config
    from dentate_research.schema import CONFIG_DIR, compose
    from dentate_research.studies import run_studies

    settings = settings_from_config(compose("reproduce/reproduce", [
        "experiment=paper", "device=cpu", "data.preset=tiny", "data.n_jobs=1", "studies=[architectures]",
        "architectures=[unet,nnunet]", "splits.n_folds=2", "splits.test_fraction=0.5", "splits.external_sites=[siteI]",
        f"out_root={tmp_path / 'out'}", f"work_root={tmp_path / 'work'}"]), command="test")
    paper = OmegaConf.load(CONFIG_DIR / "reproduce" / "experiment" / "paper.yaml")
    assert settings.train_overrides == list(paper.train_overrides) and "trainer=paper" in settings.train_overrides
    assert settings.crops_from_localizer and settings.device == "cpu"
    cpu = OmegaConf.load(CONFIG_DIR / "reproduce" / "experiment" / "cpu.yaml")
    settings.train_overrides += ["logger=none", "trainer.epochs=1", "trainer.iterations_per_epoch=1",
                                 "trainer.val_iterations=1", "data.grid.segmentation.spacing_mm=2.0",
                                 "data.grid.segmentation.patch_size=[48,48,32]"]
    # the localizer gets enough iterations to find the cerebellum roughly: its crops bound the segmenters' cost
    settings.localizer_overrides += ["trainer.epochs=1", "trainer.iterations_per_epoch=40",
                                     "arch.kwargs.channels=[8,16,32]", "arch.kwargs.strides=[2,2]"]
    settings.arch_overrides = {arch: [o for o in OmegaConf.to_container(items) if not o.startswith("trainer.")]
                               for arch, items in cpu.arch_overrides.items()}
    written = run_studies(settings, compose_train_config)
    t3 = pd.read_csv(tmp_path / "out" / "paper" / "per_case" / "T3_architectures.csv")
    assert set(t3["method"]) == {"unet", "nnunet"}
    prov = json.loads((tmp_path / "out" / "paper" / "provenance.json").read_text())
    for arch in ("unet", "nnunet"):
        run_dir = Path(prov["runs"][f"segmentation/{arch}/0"]["run_dir"])
        cfg = OmegaConf.load(run_dir / "config.yaml")
        assert cfg.trainer.amp is True and cfg.trainer.device == "cpu" and cfg.stage.label_scheme == "merged"
        assert cfg.stage.crop.source == "localizer" and cfg.trainer.iterations_per_epoch == 1
    assert written["architectures"].exists()


def test_study_wall_time_counts_reused_runs_once(tmp_path):
    """A study resumed over several invocations: its README adds the training time of the runs it reused (read
    from their run_info.json) to this invocation's time, and names runs made at another commit."""
    from dentate_research.studies.runner import _compute_lines, _run_record

    runs = {}
    for key, wall, sha, reused in (("localization/unet/0", 180.0, "a" * 40, True),
                                   ("segmentation/unet/0", 600.0, "b" * 40, False)):
        run_dir = tmp_path / key.replace("/", "_")
        run_dir.mkdir()
        (run_dir / "run_info.json").write_text(json.dumps(
            {"timings_s": {"total": wall}, "git": {"sha": sha, "dirty": False}, "finished_utc": "x"}))
        runs[key] = {"run_dir": str(run_dir), "reused": reused, **_run_record(run_dir)}
    assert _run_record(tmp_path / "missing") == {}
    text = "\n".join(_compute_lines(runs, total_s=900.0, study_sha="b" * 40))
    assert "| localization/unet/0 | earlier invocation | 3.0 | aaaaaaa (earlier commit) |" in text
    assert "| segmentation/unet/0 | this invocation | 10.0 | bbbbbbb |" in text
    # 900 s now (training included) + 180 s reused = 0.30 h
    assert "this invocation 15.0 min" in text and "(3.0 min, from their `run_info.json`)" in text
    assert "0.30 h in all" in text


def test_git_state_ignores_the_study_output_folder(tmp_path):
    """A study writing its tables into the repository (its output folder, or anything under experiments/) does not
    make its own or its training runs' provenance say "uncommitted"; a change to anything else still does."""
    import subprocess

    from dentate_research.training.artifacts import git_sha

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "experiments" / "cpu").mkdir(parents=True)
    (tmp_path / "experiments" / "cpu" / "T3.md").write_text("old\n")
    git("add", ".")
    git("commit", "-qm", "init")
    assert git_sha(tmp_path)["dirty"] is False
    (tmp_path / "experiments" / "cpu" / "T3.md").write_text("new\n")
    (tmp_path / "experiments" / "cpu" / "T4.md").write_text("new\n")
    assert git_sha(tmp_path)["dirty"] is False  # experiments/ holds results: never a code change
    (tmp_path / "results_elsewhere").mkdir()
    (tmp_path / "results_elsewhere" / "T3.md").write_text("new\n")
    assert git_sha(tmp_path)["dirty"] is True
    clean = git_sha(tmp_path, exclude=[tmp_path / "results_elsewhere", Path("/somewhere/else")])
    assert clean["dirty"] is False and len(clean["sha"]) == 40
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_sha(tmp_path, exclude=[tmp_path / "results_elsewhere"])["dirty"] is True


def _smoke_runner(tmp_path, *overrides):
    from dentate_research.cli.reproduce import compose_train_config, settings_from_config
    from dentate_research.schema import compose
    from dentate_research.studies.runner import StudyRunner

    cfg = compose("reproduce/reproduce", [f"out_root={tmp_path / 'out'}", f"work_root={tmp_path / 'work'}",
                                          *overrides])
    runner = StudyRunner(settings_from_config(cfg), compose_train_config)
    runner.manifest = tmp_path / "work" / "smoke" / "data" / "manifest.tsv"
    runner.split_file = tmp_path / "out" / "smoke" / "splits" / "splits.json"
    return runner


def test_a_finished_run_is_reused_only_with_the_settings_it_was_trained_with(tmp_path):
    """Resuming a study reuses a finished run whose saved config.yaml matches what this invocation composes (a moved
    work folder still matches) and whose cases are the study's split; a run trained with another budget, network,
    data folder or cases is refused, naming what differs."""
    from omegaconf import OmegaConf

    from dentate_research.studies.runner import StaleRunError

    runner = _smoke_runner(tmp_path)
    stage, arch, fold = "segmentation", "unet", "0"
    assert runner.reusable(stage, arch, fold) is False  # nothing there yet
    run_dir = runner.run_dir(stage, arch, fold)
    run_dir.mkdir(parents=True)
    saved = OmegaConf.to_container(runner.compose(runner.train_overrides(
        stage, arch, fold, runner.crop_localizer_run(stage, fold))), resolve=True)
    saved["data"]["manifest"] = "/elsewhere/data/manifest.tsv"  # the work folder was moved: not a change
    saved["data"]["root"] = "/elsewhere/data"
    saved["paths"]["run_dir"] = "/elsewhere/run"
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    assert runner.reusable(stage, arch, fold) is False  # not finished: trained again
    (run_dir / "model.json").write_text(json.dumps({"train_cases": ["a1", "b1"], "val_cases": ["c1"]}))
    (run_dir / "run_info.json").write_text("{}")
    runner.split_file.parent.mkdir(parents=True)
    runner.split_file.write_text(json.dumps({"folds": [{"train": ["b1", "a1"], "val": ["c1"]}],
                                             "internal_test": ["d1"]}))
    assert runner.reusable(stage, arch, fold) is True

    # the same settings on other cases (another split, another cohort): not this study's run
    runner.split_file.write_text(json.dumps({"folds": [{"train": ["a1", "b1", "e1"], "val": ["c1"]}],
                                             "internal_test": ["d1"]}))
    with pytest.raises(StaleRunError, match="train_cases: 2 cases, not the 3 of this study's split of fold 0"):
        runner.reusable(stage, arch, fold)
    runner.split_file.write_text(json.dumps({"folds": [{"train": ["a1", "b1"], "val": ["c1"]}],
                                             "internal_test": ["d1"]}))
    moved_data = runner.manifest
    runner.manifest = tmp_path / "work" / "smoke" / "data_tiny_seed0_n4" / "manifest.tsv"  # another cohort's data
    with pytest.raises(StaleRunError, match="data.manifest: '/elsewhere/data/manifest.tsv' -> "):
        runner.reusable(stage, arch, fold)
    runner.manifest = moved_data

    saved["trainer"]["max_minutes"] = 8.0
    saved["arch"]["kwargs"]["channels"] = [16, 32]
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    with pytest.raises(StaleRunError) as err:
        runner.reusable(stage, arch, fold)
    message = str(err.value)
    assert "run segmentation/unet/0" in message and str(run_dir) in message and "reuse_runs=false" in message
    assert "trainer.max_minutes: 8.0 -> " in message and "arch.kwargs.channels: [16, 32] -> " in message
    runner.s.reuse_runs = False
    assert runner.reusable(stage, arch, fold) is False


def test_study_cohort_size_is_a_setting_with_its_own_data_folder(tmp_path, monkeypatch, capsys):
    """data.n_subjects_per_site generates another cohort in its own folder (never mixed with the preset's own);
    a value below 1 is refused when the config is composed."""
    import dentate_research.data.phantom as phantom
    from dentate_research.cli.reproduce import run_hydra

    runner = _smoke_runner(tmp_path, "data.n_subjects_per_site=4")
    assert runner.s.phantom_data_dir.name == "data_tiny_seed0_n4"
    assert _smoke_runner(tmp_path).s.phantom_data_dir.name == "data_tiny_seed0"

    calls = []

    def fake_generate(folder, **kwargs):
        calls.append((Path(folder), kwargs))
        raise RuntimeError("stop here")

    monkeypatch.setattr(phantom, "generate_dataset", fake_generate)
    with pytest.raises(RuntimeError, match="stop here"):
        runner.prepare_data()
    assert calls == [(runner.s.phantom_data_dir, {"preset": "tiny", "seed": 0, "n_jobs": 1,
                                                  "n_subjects_per_site": 4})]

    rc = run_hydra([f"out_root={tmp_path}", f"work_root={tmp_path}", "data.n_subjects_per_site=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "data.n_subjects_per_site=0 is not allowed; allowed: an integer >= 1" in err, err
