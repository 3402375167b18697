"""Scale-out, run for real on a CPU: DDP with torchrun (gloo, 2 processes), Hydra's submitit launcher, the Slurm
dry run, and `reproduce` fanning its training runs out as submitit jobs. Tiny networks on the toy data set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dentate_research.cli.main import main
from dentate_research.training.toy_data import make_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = ["arch.kwargs.channels=[8,16,32]", "arch.kwargs.strides=[2,2]", "arch.kwargs.num_res_units=1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy_scale"), n_cases=6, seed=4)


def _toy_args(manifest: Path) -> list[str]:
    """Train overrides shared by every run here: toy data at 2 mm, 32^3 patches, one thread, no wandb."""
    return ["trainer=smoke", "logger=none", "data=manifest", f"data.manifest={manifest}", "data.label_rater='true'",
            "data.grid.segmentation.spacing_mm=2.0", "data.grid.segmentation.patch_size=[32,32,32]",
            "data.grid.localization.spacing_mm=4.0", "data.grid.localization.patch_size=[32,32,32]",
            "stage.crop.margin_mm=6.0", "trainer.num_threads=1"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "final.pt", map_location="cpu", weights_only=False)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if torch.is_floating_point(a[k]))


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") != "final"]


# ---------------------------------------------------------------- DDP with torchrun

def test_ddp_two_processes_gloo_equal_single_process_with_accumulation(tmp_path, toy):
    """`torchrun --nproc_per_node=2 -m dentate_research train ... trainer.devices=2` on CPU (gloo), compared with
    `train ... trainer.accumulate_grad_batches=2` in one process.

    What must match and why: with 2 ranks of batch 1, rank r draws its patches from stream r (seed + 10000 r) and
    DDP averages the two gradients; one process with 2 accumulated micro-batches of batch 1 draws micro-batch m from
    stream m and averages the two gradients too. Same initial weights (same seed), same patches and augmentations,
    same averaged gradient, same clipping / AdamW / LR schedule: the weights may differ only by float summation
    order, (g0 + g1) / 2 vs g0 / 2 + g1 / 2 (measured here: bit-identical, difference 0.0; the tolerance 1e-5 is for
    other reduction orders). The ranks themselves must end bit-identical (max difference 0.0, measured in the run by
    broadcasting rank 0's weights). Early stopping is decided on rank 0 and broadcast: with patience 1 and an
    unreachable min_delta both runs stop after epoch 2 of 3 (a rank that missed the decision would hang the run).
    A single process WITHOUT accumulation (stream 0 only) must end elsewhere (measured: 8e-3 away), so the
    comparison is not vacuous: ranks drawing the same patches would have matched that run.
    """
    cases = ["toy000", "toy001", "toy002"]
    common = ["+arch=unet", *TINY_UNET, *_toy_args(toy), "split=explicit", f"split.train=[{','.join(cases)}]",
              "split.val=[toy003]", "trainer.epochs=3", "trainer.iterations_per_epoch=3", "trainer.batch_size=1",
              "trainer.val_every=1", "trainer.patience=1", "trainer.min_delta=1.0"]
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "dentate_research", "train", *common, "trainer.devices=2", f"paths.run_dir={ddp}", f"hydra.run.dir={ddp}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[train] finished:") == 1  # rank 0 reports, rank 1 is silent

    single = {}
    for name, accumulate in (("accumulate2", 2), ("accumulate1", 1)):
        run = tmp_path / name
        assert main(["train", *common, f"trainer.accumulate_grad_batches={accumulate}", f"paths.run_dir={run}",
                     f"hydra.run.dir={run}"]) == 0
        single[name] = run

    info = json.loads((ddp / "run_info.json").read_text())
    d = info["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and d["global_batch"] == 2
    assert d["stream_seeds"] == [0, 10000]  # rank 0 keeps the single-process stream, rank 1 draws its own
    assert d["max_weight_diff_across_ranks"] == 0.0  # the ranks' weights are identical after training
    assert info["training_summary"]["stop_reason"] == "plateau" and info["training_summary"]["epochs_run"] == 2
    ref_info = json.loads((single["accumulate2"] / "run_info.json").read_text())
    assert ref_info["distributed"]["stream_seeds"] == [0, 10000] and ref_info["training_summary"]["epochs_run"] == 2

    ddp_w, ref_w = _weights(ddp), _weights(single["accumulate2"])
    assert _max_diff(ddp_w, ref_w) < 1e-5
    assert _max_diff(ddp_w, _weights(single["accumulate1"])) > 1e-3  # other patches, other weights
    ddp_rows, ref_rows = _train_rows(ddp), _train_rows(single["accumulate2"])
    assert [r["epoch"] for r in ddp_rows] == [r["epoch"] for r in ref_rows] == [1, 2]
    for a, b in zip(ddp_rows, ref_rows, strict=True):  # train loss = mean over both ranks' patches
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_dice_mean"] == pytest.approx(b["val_dice_mean"], abs=1e-3)
    # rank 0 alone wrote the run folder's files; no other folder was left behind by rank 1
    assert {p.name for p in ddp.iterdir()} >= {"checkpoints", "config.yaml", "metrics.csv", "model.json",
                                              "run_info.json", "training_curve.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accumulate1", "accumulate2", "ddp"]


def test_devices_must_match_the_started_processes(monkeypatch, tmp_path, toy):
    from dentate_research.data.io import DataError
    from dentate_research.training.distributed import setup_distributed, shard_seed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    with pytest.raises(DataError, match="torchrun --nproc_per_node=2"):
        setup_distributed(2, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DataError, match="pass trainer.devices=2"):
        setup_distributed(1, "cpu")
    monkeypatch.delenv("WORLD_SIZE")
    ctx, device = setup_distributed(1, "cpu")
    assert not ctx.distributed and ctx.is_main and device.type == "cpu"
    assert [shard_seed(7, k) for k in range(3)] == [7, 10007, 20007]
    # nnU-Net's own DDP is CUDA-only: refused on a CPU with one line, before any data is read or folder made
    if not torch.cuda.is_available():
        code = main(["train", "+arch=nnunet", *_toy_args(toy), "trainer.devices=2", "trainer.device=cpu",
                     "split=explicit", "split.train=[toy000]", f"paths.run_dir={tmp_path / 'nn'}",
                     f"hydra.run.dir={tmp_path / 'nn'}"])
        assert code == 2 and not (tmp_path / "nn").exists()


# ---------------------------------------------------------------- Hydra launchers

@pytest.mark.slow
def test_submitit_local_sweep_runs_2_architectures_x_2_folds_as_jobs(tmp_path, toy):
    """`train -m hydra/launcher=submitit_local`: Hydra's submitit launcher runs each of the 4 jobs in its own
    process (submitit job folder with a log per job) and each job writes a complete run folder."""
    from dentate_research.data.manifest import read_manifest
    from dentate_research.data.splits import make_splits, write_splits

    split_file = write_splits(make_splits(read_manifest(toy), n_folds=2, test_fraction=0.0), tmp_path / "splits")
    sweep = tmp_path / "sweep"
    code = main(["train", "-m", "hydra/launcher=submitit_local", "+arch=unet,attention_unet", "split.fold=0,1",
                 *_toy_args(toy), f"split.file={split_file}", "trainer.epochs=1",
                 "trainer.iterations_per_epoch=1", f"hydra.sweep.dir={sweep}"])
    assert code == 0
    cards = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/model.json"))]
    assert sorted(c["arch"] for c in cards) == ["attention_unet", "attention_unet", "unet", "unet"]
    assert len({(c["arch"], tuple(c["val_cases"])) for c in cards}) == 4  # 2 architectures x 2 folds
    jobs = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]  # one folder per job id (local: pid)
    assert len(jobs) == 4 and all(list(j.glob("*_log.out")) for j in jobs)  # 4 separate submitit jobs
    assert all((p.parent / "run_info.json").exists() for p in sweep.glob("*/model.json"))


def test_ddp_job_with_two_tasks_through_the_submitit_launcher(tmp_path, toy):
    """The cluster path of DDP: one launcher job with 2 tasks (`hydra.launcher.tasks_per_node=2`, as on Slurm) and
    `trainer.devices=2`; each task takes its rank from submitit's environment (TorchDistributedEnvironment)."""
    sweep = tmp_path / "sweep"
    code = main(["train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "+arch=unet",
                 *TINY_UNET, *_toy_args(toy), "split=explicit", "split.train=[toy000,toy001]", "split.val=[toy002]",
                 "trainer.devices=2", "trainer.epochs=1", "trainer.iterations_per_epoch=2",
                 f"hydra.sweep.dir={sweep}"])
    assert code == 0
    (run_info,) = sweep.glob("*/run_info.json")
    d = json.loads(run_info.read_text())["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and d["max_weight_diff_across_ranks"] == 0.0
    (job,) = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    assert len(list(job.glob("*_log.out"))) == 2  # two tasks of one job


def test_slurm_dry_run_prints_the_sbatch_script(tmp_path, capsys):
    """`train -m hydra/launcher=slurm ... dry_run=true` prints the 4 jobs and the array sbatch script submitit
    would submit with the cluster knobs (partition, GPUs, tasks, time, memory, array parallelism); submits
    nothing and trains nothing."""
    sweep = tmp_path / "sweep"
    code = main(["train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                 "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=90",
                 "hydra.launcher.mem_gb=64", "hydra.launcher.array_parallelism=3",
                 "hydra.launcher.setup=[source /opt/venv/bin/activate]", "+arch=unet,segresnet", "split.fold=0,1",
                 "trainer=paper", "trainer.devices=2", "dry_run=true", f"hydra.sweep.dir={sweep}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 job(s) as a Slurm job array" in out and "#3: arch=segresnet split.fold=1" in out
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --time=90", "#SBATCH --mem=64GB", "#SBATCH --cpus-per-task=8", "#SBATCH --array=0-3%3",
                 "source /opt/venv/bin/activate", "srun --unbuffered", "-u -m submitit.core._submit"):
        assert line in out, line
    assert str(sweep / ".submitit" / "%j") in out
    assert not sweep.exists()  # nothing was submitted or written


# ---------------------------------------------------------------- reproduce fan-out

def test_planned_runs_of_the_smoke_preset():
    from dentate_research.cli.reproduce import compose_train_config, settings_from_config
    from dentate_research.schema import compose
    from dentate_research.studies.runner import StudyRunner

    settings = settings_from_config(compose("reproduce/reproduce", []))
    planned = StudyRunner(settings, compose_train_config).planned_runs()
    assert planned[0] == ("localization", "unet", "0")
    assert {f"{a}/{b}/{c}" for a, b, c in planned} == {
        "localization/unet/0", *(f"segmentation/{a}/0" for a in settings.architectures),
        "localization/unet/loso:siteA", "segmentation/unet/loso:siteA",
        "localization/unet/loso:siteB", "segmentation/unet/loso:siteB"}


def test_reproduce_fans_training_runs_out_as_submitit_jobs(tmp_path, toy):
    """`reproduce ... hydra/launcher=submitit_local` (the launcher the CLI builds): the T4 study's two runs
    (localizer and segmenter) are trained as 2 local submitit jobs, the study waits, gathers the run folders and
    writes its table from them; a second invocation reuses the finished runs and submits nothing."""
    from dentate_research.cli.reproduce import compose_train_config, make_launcher
    from dentate_research.studies import StudySettings
    from dentate_research.studies.runner import StudyRunner

    settings = StudySettings.from_config(
        {"name": "fanout", "data": {"preset": None, "manifest": str(toy)},
         "splits": {"n_folds": 2, "test_fraction": 0.34}, "rater": "true", "studies": ["two_step"],
         "architectures": ["unet"],
         "train_overrides": [*_toy_args(toy), *TINY_UNET, "trainer.epochs=1", "trainer.iterations_per_epoch=1"]},
        out_dir=tmp_path / "out", work_dir=tmp_path / "work", command="test")
    launcher = make_launcher(["hydra/launcher=submitit_local"], settings.work_dir, settings.name)
    assert launcher.cluster == "local" and launcher.folder.parent == (tmp_path / "work" / "jobs").resolve()
    written = StudyRunner(settings, compose_train_config).run(launcher)
    assert written["two_step"].exists()
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert set(prov["runs"]) == {"localization/unet/0", "segmentation/unet/0"}
    for run in prov["runs"].values():
        assert run["launcher"] == "local" and run["job_id"] and not run["reused"]
        assert (Path(run["run_dir"]) / "model.json").exists()
    assert len([p for p in (tmp_path / "work" / "jobs").iterdir() if p.name.isdigit()]) == 2

    again = StudyRunner(settings, compose_train_config)
    again.prepare_data()
    assert again.launch_runs(launcher) == []  # finished runs are reused, nothing is submitted
    assert all(r["reused"] for r in again.runs.values())


@pytest.mark.parametrize("args", [["+arch=unet,segresnet", "split.fold=0,1", "trainer=smoke"],
                                  ["a=1", "b=range(0,3)", "a=2,3", "c=choice(x,y)", "hydra/launcher=slurm", "d='q r'"],
                                  []])
def test_dry_run_sweep_expands_like_hydras_basic_sweeper(args):
    """The dry run's sweep expansion (public Override API) gives the jobs Hydra's own basic sweeper would run; the
    sweeper is private (hydra._internal), so it is only used here, to check."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dentate_research.cli.train import sweep_jobs

    parsed = OverridesParser.create().parse_overrides(args)
    assert sweep_jobs(parsed) == [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
