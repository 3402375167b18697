"""Run the paper's studies from real training runs and write their tables (T1-T6).

=====  ===================================================================================================
T1     cohort: per site n, groups, age, sex, field strength, voxel size, reconstruction, role
T2     rater reliability: intra-/interrater ICC of DN volume (ICC(2,1) primary, ICC(3,1)) and Dice
T3     architecture benchmark: every architecture trained with the same split, data, budget and inferer,
       applied in the same two-step pipeline (same localizer) to the internal test set; Dice per side,
       time per epoch, parameters
T4     one step (the segmentation network slid over the whole volume) vs two steps (localize, crop, segment):
       Dice per side and inference time on the internal test set
T5     external sites: the two-step model vs the classical baseline tool (template built from training cases
       only), Dice per side with paired t-test and Wilcoxon P values
T6     unseen sites (leave one site out): localizer and segmenter retrained without the site, automated vs
       manual DN volume and mean susceptibility: Pearson r, ICC(2,1)/ICC(3,1), Bland-Altman, per site
T7     failure modes: the fold-0 two-step model and the classical baseline (fold-0 template) applied to phantoms
       of the ``hard`` preset (new subjects of every site), Dice and failure rate (Dice < 0.5) with confidence
       intervals per bin of each hard-case factor, and the paired deep-vs-baseline difference per bin
       (:mod:`dentate_research.studies.failure_modes`)
=====  ===================================================================================================

Every training run is a real :func:`dentate_research.training.train_stage` call; completed runs in the work
folder are reused (their ``model.json`` proves completion) so that a study can be resumed.

Fan-out (``reproduce ... hydra/launcher=slurm|submitit_local``): with a
:class:`~dentate_research.training.launch.JobLauncher`, :meth:`StudyRunner.launch_runs` first lists every training
run the selected studies need (:meth:`StudyRunner.planned_runs`), submits the ones not finished yet as one job each
(localizers first when segmenters train on their crops), waits and gathers the run folders; the studies then find
every run finished. Without a launcher (the default) runs are trained in this process when a study needs them.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data.io import Volume, load_image, load_label
from ..data.laterality import world_centroid
from ..data.manifest import Case, read_manifest
from ..data.splits import load_split, make_splits, write_splits
from ..evaluation.metrics import case_image_in_ppm, evaluate_case
from ..evaluation.stats import agreement, paired_comparison
from .cohort import cohort_table
from .tables import write_json, write_table

STUDIES = ("cohort", "reliability", "architectures", "two_step", "external", "loso", "failure_modes")
PAPER = {  # figures from the paper (Shiraishi et al., Radiology: AI 2025) for side-by-side reporting
    "intrarater_icc": 0.91, "interrater_icc": 0.78,
    "two_step_dice_left": "0.90 +/- 0.03", "two_step_dice_right": "0.89 +/- 0.04",
    "external_dice_left": "0.86 +/- 0.04 vs 0.57 +/- 0.22 (P < .001)",
    "external_dice_right": "0.84 +/- 0.07 vs 0.58 +/- 0.24 (P < .001)",
    "unseen_pearson_volume_left": 0.74, "unseen_pearson_volume_right": 0.48,
}

ComposeFn = Callable[[list[str]], Any]


@dataclass
class StudySettings:
    """What to run. ``train_overrides`` are Hydra-style overrides of ``configs/train.yaml`` shared by every run.

    Attributes:
        name: study preset name (``smoke``, ``cpu``, ``paper``); tables go to ``out_dir``.
        data_preset: phantom preset to generate (``tiny``/``small``/``paper``), or None when ``manifest`` is given.
        manifest: users' own manifest (real data); overrides ``data_preset``.
        rater: manual rater used both as training label and as evaluation reference (paper: manual tracing).
        architectures: registry names benchmarked in T3.
        pipeline_arch: segmentation architecture of the two-step model used in T4-T6.
        localizer_arch: architecture of the localization stage.
        loso_sites: sites left out in T6 (empty: every development site).
        arch_overrides: extra overrides for one architecture's runs (e.g. a smaller nnU-Net on a CPU),
            reported with the tables.
        loso_overrides: extra overrides for the segmentation runs of T6's left-out-site folds (e.g. a shorter
            time cap), reported with T6.
        crops_from_localizer: segmentation runs train and validate on the crops of the same fold's localizer
            (``stage.crop.source=localizer``), i.e. exactly the crops the two-step pipeline makes.
        failure_preset, failure_n_subjects_per_site, failure_seed: the hard-case phantoms of T7 (new subjects:
            use a seed other than ``data_seed``); failure_data_dir: where they are generated (default: the work
            folder); failure_reference: the label T7 scores against ('true' on phantoms, else ``rater``).
        allow_training: False makes a run that is not finished an error instead of training it (apply finished
            runs of another study read-only, e.g. T7 on ``work_data/reproduce/cpu``).
    """

    name: str
    out_dir: Path
    work_dir: Path
    data_preset: str | None = "tiny"
    data_seed: int = 0
    manifest: Path | None = None
    n_jobs: int = 1
    n_folds: int = 5
    test_fraction: float = 0.2
    external_sites: list[str] = field(default_factory=list)
    split_seed: int = 0
    rater: str = "rater1"
    studies: list[str] = field(default_factory=lambda: list(STUDIES))
    architectures: list[str] = field(default_factory=lambda: ["unet"])
    pipeline_arch: str = "unet"
    localizer_arch: str = "unet"
    loso_sites: list[str] = field(default_factory=list)
    train_overrides: list[str] = field(default_factory=list)
    localizer_overrides: list[str] = field(default_factory=list)
    arch_overrides: dict[str, list[str]] = field(default_factory=dict)
    loso_overrides: list[str] = field(default_factory=list)
    crops_from_localizer: bool = False
    failure_preset: str = "hard"
    failure_n_subjects_per_site: int = 3
    failure_seed: int = 1
    failure_data_dir: Path | None = None
    failure_reference: str = "true"
    allow_training: bool = True
    device: str = "cpu"
    seed: int = 0
    reuse_runs: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.studies) - set(STUDIES))
        if unknown:
            raise ValueError(f"unknown studies {unknown}; allowed: {list(STUDIES)}")
        if self.manifest is None and not self.data_preset:
            raise ValueError("give either data_preset (phantoms) or manifest (your own data)")
        self.out_dir, self.work_dir = Path(self.out_dir), Path(self.work_dir)
        self.manifest = Path(self.manifest) if self.manifest else None
        self.failure_data_dir = Path(self.failure_data_dir) if self.failure_data_dir else None


class StudyRunner:
    """Holds the data, splits, trained runs and per-case tables of one reproduction."""

    def __init__(self, settings: StudySettings, compose_train_cfg: ComposeFn):
        self.s = settings
        self.compose = compose_train_cfg
        self.per_case_dir = settings.out_dir / "per_case"
        self.fig_dir = settings.out_dir / "figures"
        self.runs: dict[str, dict[str, Any]] = {}
        self.timeline: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ data and runs
    def prepare_data(self) -> None:
        s = self.s
        if s.manifest is not None:
            manifest = s.manifest
            data_desc = f"manifest {manifest}"
        else:
            manifest = s.work_dir / f"data_{s.data_preset}_seed{s.data_seed}" / "manifest.tsv"
            if not manifest.exists():
                from ..data.phantom import generate_dataset

                manifest = generate_dataset(manifest.parent, preset=str(s.data_preset), seed=s.data_seed,
                                            n_jobs=s.n_jobs)
            data_desc = f"synthetic QSM phantoms, preset '{s.data_preset}', seed {s.data_seed}"
        self.manifest = Path(manifest).resolve()
        self.cases = read_manifest(self.manifest)
        self.by_id = {c.case_id: c for c in self.cases}
        self.splits = make_splits(self.cases, n_folds=s.n_folds, test_fraction=s.test_fraction,
                                  external_sites=s.external_sites, seed=s.split_seed)
        self.splits["manifest"] = str(self.manifest)
        self.split_file = write_splits(self.splits, s.out_dir / "splits", overwrite=True)
        from ..training.artifacts import git_sha

        self.provenance = {"command": s.command or "python -m dentate_research reproduce", "study": s.name,
                           "data": f"{data_desc}, {len(self.cases)} scans", "git": git_sha(),
                           "finished_utc": ""}

    def _fold_cases(self, fold: str) -> tuple[list[Case], list[Case], list[Case]]:
        split = load_split(self.split_file, fold)
        get = self.by_id.__getitem__
        if not split.test:
            raise ValueError(f"split '{split.name}' has no test cases (splits.test_fraction = "
                             f"{self.s.test_fraction} of {len(self.cases)} scans); raise test_fraction or add data")
        return [get(i) for i in split.train], [get(i) for i in split.val], [get(i) for i in split.test]

    def run_dir(self, stage: str, arch: str, fold: str) -> Path:
        """The work-folder run directory of one stage / architecture / fold."""
        return (self.s.work_dir / "runs" / f"{stage}_{arch}_{fold.replace(':', '-')}").resolve()

    @staticmethod
    def run_finished(run_dir: Path) -> bool:
        return (run_dir / "model.json").exists() and (run_dir / "run_info.json").exists()

    def train_overrides(self, stage: str, arch: str, fold: str, localizer_run: Path | None = None) -> list[str]:
        """The ``configs/train.yaml`` overrides of one run (``localizer_run``: the crops' localizer, if any)."""
        s = self.s
        overrides = [*s.train_overrides, f"stage={stage}", f"+arch={arch}",
                     f"data.manifest={self.manifest}", f"data.root={self.manifest.parent}",
                     "data.generate_if_missing=null", f"data.label_rater={s.rater}",
                     "split=cv", f"split.file={self.split_file}", f"split.fold='{fold}'",
                     "split.create_if_missing=false", f"paths.run_dir={self.run_dir(stage, arch, fold)}",
                     f"seed={s.seed}", f"trainer.device={s.device}", "trainer.resume=false"]
        if stage == "localization":
            overrides += list(s.localizer_overrides)
        else:
            overrides += list(s.arch_overrides.get(arch, []))
            if fold.startswith("loso:"):
                overrides += list(s.loso_overrides)
            if localizer_run is not None:  # train and validate on the crops this fold's localizer makes at inference
                overrides += ["stage.crop.source=localizer", f"stage.crop.localizer_run={localizer_run}"]
        return overrides

    def train(self, stage: str, arch: str, fold: str) -> Path:
        """Train (or reuse) one stage on one fold; returns the run directory."""
        s = self.s
        run_dir = self.run_dir(stage, arch, fold)
        key = f"{stage}/{arch}/{fold}"
        if self.runs.get(key, {}).get("launcher"):  # trained by a job of this invocation (launch_runs)
            return run_dir
        if s.reuse_runs and self.run_finished(run_dir):
            self.runs[key] = {"run_dir": str(run_dir), "reused": True}
            return run_dir
        if not s.allow_training:
            raise RuntimeError(f"run {key} is not finished in {run_dir} and allow_training is false")
        loc_dir = None
        if stage == "segmentation" and s.crops_from_localizer:
            loc_dir = self.train("localization", s.localizer_arch, fold)
        cfg = self.compose(self.train_overrides(stage, arch, fold, loc_dir))
        from ..training import train_stage

        t0 = time.perf_counter()
        if run_dir.exists():  # an interrupted run: start it again from scratch
            import shutil

            shutil.rmtree(run_dir)
        train_stage(cfg)
        self.runs[key] = {"run_dir": str(run_dir), "reused": False, "seconds": time.perf_counter() - t0}
        return run_dir

    # ------------------------------------------------------------------ fan-out through a launcher
    def planned_runs(self) -> list[tuple[str, str, str]]:
        """(stage, arch, fold) of every training run the selected studies use, localizers before segmenters."""
        s = self.s
        runs: list[tuple[str, str, str]] = []

        def add(stage: str, arch: str, fold: str) -> None:
            if stage == "segmentation" and s.crops_from_localizer:
                add("localization", s.localizer_arch, fold)
            if (stage, arch, fold) not in runs:
                runs.append((stage, arch, fold))

        for study in s.studies:
            if study in ("architectures", "two_step", "external", "failure_modes"):
                add("localization", s.localizer_arch, "0")
                for arch in (s.architectures if study == "architectures" else [s.pipeline_arch]):
                    add("segmentation", arch, "0")
            elif study == "loso":
                for site in s.loso_sites or list(self.splits["development_sites"]):
                    add("localization", s.localizer_arch, f"loso:{site}")
                    add("segmentation", s.pipeline_arch, f"loso:{site}")
        return runs

    def launch_runs(self, launcher: Any) -> list[str]:
        """Train every planned run that is not finished as its own job through ``launcher`` (a
        :class:`~dentate_research.training.launch.JobLauncher`), wait and gather; returns the keys of the jobs run.

        A finished run is reused (``reuse_runs``), an interrupted one is started again from scratch. Localizers
        go first when segmenters train on their crops (``crops_from_localizer``), the rest in one batch.
        """
        import shutil

        s = self.s
        planned = self.planned_runs()
        if s.crops_from_localizer:
            waves = [[r for r in planned if r[0] == "localization"], [r for r in planned if r[0] != "localization"]]
        else:
            waves = [planned]
        launched: list[str] = []
        for wave in waves:
            keys, configs = [], []
            for stage, arch, fold in wave:
                key, run_dir = f"{stage}/{arch}/{fold}", self.run_dir(stage, arch, fold)
                if s.reuse_runs and self.run_finished(run_dir):
                    self.runs[key] = {"run_dir": str(run_dir), "reused": True}
                    continue
                loc_dir = (self.run_dir("localization", s.localizer_arch, fold)
                           if stage == "segmentation" and s.crops_from_localizer else None)
                from omegaconf import OmegaConf

                configs.append(OmegaConf.to_container(self.compose(self.train_overrides(stage, arch, fold, loc_dir)),
                                                      resolve=True))
                keys.append(key)
                if run_dir.exists():  # an interrupted run: start it again from scratch
                    shutil.rmtree(run_dir)
            if not configs:
                continue
            print(f"[reproduce] {len(configs)} training run(s) as {launcher.cluster} jobs (logs in "
                  f"{launcher.folder.parent}): {', '.join(keys)}", flush=True)
            t0 = time.perf_counter()
            results = launcher.run(configs, keys)
            for key, result in zip(keys, results, strict=True):
                self.runs[key] = {"run_dir": result["run_dir"], "reused": False, "seconds": result["seconds"],
                                  "launcher": launcher.cluster, "job_id": result["job_id"], "host": result["host"]}
            self.timeline.append({"study": f"launch ({len(keys)} jobs)", "seconds": round(time.perf_counter() - t0, 1)})
            launched += keys
        return launched

    # ------------------------------------------------------------------ helpers
    def _predictor(self, loc_dir: Path, seg_dir: Path):
        from ..inference.pipeline import DentatePredictor

        return DentatePredictor(loc_dir, seg_dir, device=self.s.device)

    def _load_case(self, case: Case, rater: str | None = None) -> tuple[Volume, Volume, Volume]:
        """Read a case once: the image as stored (method input), the image in ppm and the reference labels
        (``rater``'s, default the study's rater)."""
        volume = load_image(case.image)
        reference = load_label(case.label(rater or self.s.rater), reference=volume)
        return volume, case_image_in_ppm(case, volume), reference

    def _baseline(self, fold: str = "0"):
        """The classical baseline with the fold's template (built from the fold's training cases only, cached
        in the work folder and reused)."""
        from ..baselines.classical import ClassicalBaseline
        from ..baselines.template import Template, build_template

        template_dir = self.s.work_dir / f"baseline_template_fold{fold}"
        if (template_dir / "template.json").exists() and self.s.reuse_runs:
            template = Template.load(template_dir)
        else:
            train, _, _ = self._fold_cases(fold)
            template = build_template(train, rater=self.s.rater)
            template.save(template_dir)
        return ClassicalBaseline(template)

    def _segment_baseline(self, baseline: Any, volume: Volume) -> tuple[np.ndarray, float, str]:
        """(labels, seconds, flags) of the classical baseline on one volume."""
        t0 = time.perf_counter()
        labels, diag = baseline.segment_with_diagnostics(volume)
        flags = diag.get("flags", []) if isinstance(diag, dict) else []
        return labels, time.perf_counter() - t0, ";".join(map(str, flags))

    def _evaluate_labels(self, case: Case, image_ppm: Volume, reference: Volume, labels: np.ndarray | None,
                         method: str, fold: str, extra: dict[str, Any] | None = None,
                         flag: str = "", reference_name: str | None = None) -> list[dict[str, Any]]:
        """Rows (one per side) of metrics for ``labels`` (None = the method failed: scored as empty)."""
        pred = np.zeros(image_ppm.shape, np.uint8) if labels is None else labels
        rows = []
        for row in evaluate_case(pred, reference, image_ppm):  # mean susceptibility in ppm whatever the units
            if flag:
                row["flag"] = ";".join(x for x in (str(row.get("flag") or ""), flag) if x)
            rows.append({"case": case.case_id, "subject": case.subject, "site": case.site,
                         "group": str(case.meta.get("group", "")), "method": method, "fold": fold,
                         "reference": reference_name or self.s.rater, **row, **(extra or {})})
        return rows

    def _two_step(self, predictor: Any, volume: Volume) -> tuple[np.ndarray | None, float, str]:
        from ..inference.pipeline import SegmentationError

        t0 = time.perf_counter()
        try:
            result = predictor.predict_volume(volume)
        except SegmentationError as failure:
            return None, time.perf_counter() - t0, f"failed:{failure.reason}"
        return result.labels, time.perf_counter() - t0, ";".join(result.flags)

    def _save_per_case(self, df: pd.DataFrame, name: str) -> None:
        self.per_case_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.per_case_dir / f"{name}.csv", index=False)

    @staticmethod
    def _mean_sd(values: pd.Series) -> str:
        v = pd.to_numeric(values, errors="coerce").dropna()
        if v.empty:
            return "n/a"
        return f"{v.mean():.3f} +/- {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    def _dice_by_side(self, df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
        rows = []
        for key, part in df.groupby(list(by), sort=False):
            key = key if isinstance(key, tuple) else (key,)
            row = dict(zip(by, key, strict=True))
            for side in ("left", "right"):
                row[f"dice_{side}"] = self._mean_sd(part.loc[part["side"] == side, "dice"])
            row["hd95_mm"] = self._mean_sd(part["hd95_mm"])
            row["n_cases"] = part["case"].nunique()
            fails = part["flag"].fillna("").str.contains("failed").groupby(part["case"]).any().sum()
            row["failed_cases"] = int(fails)
            rows.append(row)
        return pd.DataFrame(rows)

    def _stamp(self) -> dict[str, Any]:
        self.provenance["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return self.provenance

    # ------------------------------------------------------------------ T1, T2
    def cohort(self) -> Path:
        df = cohort_table(self.cases, self.splits)
        return write_table(df, self.s.out_dir, "T1_cohort", "T1 Cohort (per site)", self._stamp(),
                           "Role counts are scans: development = cross-validation folds, internal_test = held-out "
                           "subjects of development sites, external_test = whole external sites.")

    def reliability(self) -> Path:
        from ..evaluation.reliability import rater_reliability

        summary, per_case = rater_reliability(self.cases, progress=True)
        self._save_per_case(per_case, "T2_rater_pairs")
        keep = ["study", "rater_a", "rater_b", "side", "form", "form_name", "icc", "ci95_low", "ci95_high",
                "dice_mean", "dice_sd", "n_cases"]
        table = summary[[c for c in keep if c in summary.columns]]
        means = table[(table["side"] == "mean_of_sides") & (table["form"] == "ICC2")]
        got = {r["study"]: r["icc"] for _, r in means.iterrows()}
        notes = (f"Paper (DN volume, average of sides): intrarater ICC {PAPER['intrarater_icc']}, interrater ICC "
                 f"{PAPER['interrater_icc']}. Here ICC(2,1) mean of sides: intrarater "
                 f"{got.get('intrarater', float('nan')):.2f}, interrater {got.get('interrater', float('nan')):.2f}.")
        return write_table(table, self.s.out_dir, "T2_rater_reliability",
                           "T2 Rater reliability of DN volume (named ICC forms) and Dice between raters",
                           self._stamp(), notes)

    # ------------------------------------------------------------------ T3
    def localizer(self, fold: str = "0") -> Path:
        return self.train("localization", self.s.localizer_arch, fold)

    def architectures(self) -> Path:
        from ..models import count_parameters
        from ..training.artifacts import load_stage_model

        loc_dir = self.localizer()
        _, _, test = self._fold_cases("0")
        rows, summary_extra, curves = [], {}, {}
        for arch in self.s.architectures:
            seg_dir = self.train("segmentation", arch, "0")
            predictor = self._predictor(loc_dir, seg_dir)
            times = []
            for case in tqdm(test, desc=f"T3 {arch} internal test"):
                volume, image_ppm, ref = self._load_case(case)
                labels, seconds, flag = self._two_step(predictor, volume)
                times.append(seconds)
                rows += self._evaluate_labels(case, image_ppm, ref, labels, arch, "0", {"inference_s": seconds}, flag)
            info = _read_json(seg_dir / "run_info.json")
            summary = info.get("training_summary") or {}
            model = load_stage_model(seg_dir, device=self.s.device)
            network = getattr(model, "network", None)
            if network is None and hasattr(model, "predictor"):
                network = model.predictor.network
            iterations = summary.get("iterations_run") or _budget_iterations(seg_dir)
            train_s = float(info.get("timings_s", {}).get("train", float("nan")))
            best = summary.get("best") or {}
            summary_extra[arch] = {
                "parameters_M": count_parameters(network) / 1e6 if network is not None else float("nan"),
                "iterations": iterations, "stop_reason": summary.get("stop_reason", "budget"),
                "train_min": train_s / 60.0, "s_per_iteration": train_s / max(int(iterations or 1), 1),
                "best_val_dice": best.get("value", float("nan")), "best_at_iteration": best.get("iteration"),
                "inference_s_per_case": float(np.mean(times)) if times else float("nan"),
            }
            curves[arch] = seg_dir / "metrics.csv"
        df = pd.DataFrame(rows)
        self._save_per_case(df, "T3_architectures")
        table = self._dice_by_side(df, ["method"])
        for col in ("parameters_M", "iterations", "stop_reason", "best_val_dice", "best_at_iteration", "train_min",
                    "s_per_iteration", "inference_s_per_case"):
            table[col] = [summary_extra[m][col] for m in table["method"]]
        table = table.rename(columns={"method": "architecture"})
        self._plot_dice(df, "T3_architectures", "method")
        from ..evaluation.plots import learning_curves_plot

        self.fig_dir.mkdir(parents=True, exist_ok=True)
        learning_curves_plot(curves, self.fig_dir / "T3_learning_curves.png",
                             title="T3: validation Dice (mean of sides) during training")
        return write_table(table, self.s.out_dir, "T3_architectures",
                           "T3 Architecture benchmark (two-step pipeline, internal test set)", self._stamp(),
                           "Identical split, preprocessing, patch sampling, iteration budget, inferer and "
                           "post-processing for every architecture; the same localizer; only the network differs"
                           + (f" (architecture-specific overrides: {self.s.arch_overrides})" if self.s.arch_overrides
                              else "") + ". "
                           f"Reference: {self.s.rater}. iterations = training iterations run; stop_reason = "
                           "plateau (early stopping: no validation gain for trainer.patience validations), "
                           "time_budget (trainer.max_minutes reached before the plateau) or budget (all epochs); "
                           "best_val_dice = mean Dice of the sides on the fold's validation crops at the selected "
                           "checkpoint; learning curves in figures/T3_learning_curves.png. Budget: see config.yaml "
                           "of each run in the work folder and provenance.json.")

    # ------------------------------------------------------------------ T4
    def two_step(self) -> Path:
        from ..inference.postprocess import postprocess_dn_labels
        from ..training.artifacts import load_stage_model

        arch = self.s.pipeline_arch
        loc_dir = self.localizer()
        seg_dir = self.train("segmentation", arch, "0")
        predictor = self._predictor(loc_dir, seg_dir)
        whole = load_stage_model(seg_dir, device=self.s.device)
        _, _, test = self._fold_cases("0")
        rows = []
        for case in tqdm(test, desc="T4 one-step vs two-step"):
            volume, image_ppm, ref = self._load_case(case)
            labels, seconds, flag = self._two_step(predictor, volume)
            rows += self._evaluate_labels(case, image_ppm, ref, labels, "two-step", "0", {"inference_s": seconds},
                                          flag)
            t0 = time.perf_counter()
            raw = whole.predict(volume)
            head = world_centroid(volume.array != 0, volume.affine)  # midline without a localizer: head centre
            one, _ = postprocess_dn_labels(raw, volume.affine, None if head is None else float(head[0]),
                                           merged=len(whole.card.classes) == 2)
            seconds_one = time.perf_counter() - t0
            rows += self._evaluate_labels(case, image_ppm, ref, one, "one-step (whole volume)", "0",
                                          {"inference_s": seconds_one})
        df = pd.DataFrame(rows)
        self._save_per_case(df, "T4_one_vs_two_step")
        table = self._dice_by_side(df, ["method"])
        table["inference_s_per_case"] = [df.loc[df["method"] == m].groupby("case")["inference_s"].first().mean()
                                         for m in table["method"]]
        ratio = table["inference_s_per_case"].iloc[1] / table["inference_s_per_case"].iloc[0]
        comp = paired_comparison(df, "dice", methods=["two-step", "one-step (whole volume)"])
        notes = (f"Same segmentation network ({arch}) in both rows; one-step slides it over the whole volume and "
                 "takes the head centre as midline for the world-side assignment. "
                 f"One-step / two-step inference time ratio: {ratio:.1f}x. Paired Dice comparison:\n\n"
                 + _comparison_lines(comp))
        return write_table(table, self.s.out_dir, "T4_one_vs_two_step",
                           "T4 One-step (whole volume) vs two-step (localize, crop, segment)", self._stamp(), notes)

    # ------------------------------------------------------------------ T5
    def external(self) -> Path:
        arch = self.s.pipeline_arch
        ext = [self.by_id[i] for i in self.splits["external_test"]]
        if not ext:
            raise ValueError("study 'external' needs external_sites in the study settings")
        loc_dir = self.localizer()
        seg_dir = self.train("segmentation", arch, "0")
        predictor = self._predictor(loc_dir, seg_dir)
        baseline = self._baseline("0")
        rows = []
        for case in tqdm(ext, desc="T5 external: two-step vs baseline"):
            volume, image_ppm, ref = self._load_case(case)
            labels, seconds, flag = self._two_step(predictor, volume)
            rows += self._evaluate_labels(case, image_ppm, ref, labels, f"two-step {arch}", "0",
                                          {"inference_s": seconds}, flag)
            base_labels, seconds_b, base_flags = self._segment_baseline(baseline, volume)
            rows += self._evaluate_labels(case, image_ppm, ref, base_labels, "classical baseline", "0",
                                          {"inference_s": seconds_b}, base_flags)
        df = pd.DataFrame(rows)
        self._save_per_case(df, "T5_external")
        table = self._dice_by_side(df, ["method"])
        comp = paired_comparison(df, "dice", methods=[f"two-step {arch}", "classical baseline"])
        self._plot_dice(df, "T5_external", "method")
        notes = (f"External sites: {', '.join(self.s.external_sites)} (never used for training, planning, "
                 f"normalization or the baseline template). Paper: left {PAPER['external_dice_left']}, right "
                 f"{PAPER['external_dice_right']}. Paired tests per side:\n\n" + _comparison_lines(comp))
        comp.to_csv(self.s.out_dir / "T5_external_paired_tests.csv", index=False)
        return write_table(table, self.s.out_dir, "T5_external",
                           "T5 External sites: two-step model vs classical baseline", self._stamp(), notes)

    # ------------------------------------------------------------------ T6
    def loso(self) -> Path:
        from ..evaluation.plots import bland_altman_plot

        arch = self.s.pipeline_arch
        sites = self.s.loso_sites or list(self.splits["development_sites"])
        rows = []
        for site in sites:
            fold = f"loso:{site}"
            loc_dir = self.train("localization", self.s.localizer_arch, fold)
            seg_dir = self.train("segmentation", arch, fold)
            predictor = self._predictor(loc_dir, seg_dir)
            _, _, test = self._fold_cases(fold)
            for case in tqdm(test, desc=f"T6 unseen site {site}"):
                volume, image_ppm, ref = self._load_case(case)
                labels, seconds, flag = self._two_step(predictor, volume)
                rows += self._evaluate_labels(case, image_ppm, ref, labels, f"two-step {arch}", fold,
                                              {"inference_s": seconds}, flag)
        df = pd.DataFrame(rows)
        self._save_per_case(df, "T6_unseen_sites")
        volume = agreement(df, "volume_pred_mm3", "volume_ref_mm3", by=["side"])
        chi = agreement(df, "chi_pred_ppm", "chi_ref_ppm", by=["side"])
        per_site = agreement(df, "volume_pred_mm3", "volume_ref_mm3", by=["site", "side"])
        table = pd.concat([volume.assign(site="all"), chi.assign(site="all"), per_site], ignore_index=True)
        keep = ["site", "side", "quantity", "pearson_r", "pearson_ci95_low", "pearson_ci95_high", "pearson_p",
                "ICC2", "ICC2_ci95_low", "ICC2_ci95_high", "ICC3", "ba_bias", "ba_loa_low", "ba_loa_high",
                "pearson_n"]
        table = table[[c for c in keep if c in table.columns]]
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        for side in ("left", "right"):
            part = df[df["side"] == side]
            if len(part.dropna(subset=["volume_pred_mm3", "volume_ref_mm3"])) >= 2:
                bland_altman_plot(part, self.fig_dir / f"T6_bland_altman_volume_{side}.png",
                                  title=f"Unseen sites, {side} DN volume (mm^3)")
        notes = (f"Left-out sites: {', '.join(sites)}; each row of 'all' pools the left-out sites' cases, each "
                 "predicted by models trained without its site"
                 + (f" (segmentation runs with {self.s.loso_overrides})" if self.s.loso_overrides else "")
                 + ". ICC2 = ICC(2,1) absolute agreement, ICC3 = "
                 f"ICC(3,1) consistency. Paper (unseen datasets, volume): Pearson r "
                 f"{PAPER['unseen_pearson_volume_left']} left, {PAPER['unseen_pearson_volume_right']} right.")
        return write_table(table, self.s.out_dir, "T6_unseen_sites",
                           "T6 Unseen sites (leave one site out): automated vs manual DN volume and mean chi",
                           self._stamp(), notes)

    # ------------------------------------------------------------------ T7
    def failure_modes(self) -> Path:
        from .failure_modes import failure_modes_study

        return failure_modes_study(self)

    def _plot_dice(self, df: pd.DataFrame, name: str, by: str) -> None:
        from ..evaluation.plots import dice_by_site_plot

        self.fig_dir.mkdir(parents=True, exist_ok=True)
        for method, part in df.groupby(by):
            slug = "".join(ch if ch.isalnum() else "_" for ch in str(method)).strip("_")
            dice_by_site_plot(part, self.fig_dir / f"{name}_dice_by_site_{slug}.png", title=f"{name}: {method}")

    # ------------------------------------------------------------------ all
    def run(self, launcher: Any = None) -> dict[str, Path]:
        """Run the selected studies; with ``launcher`` the training runs are jobs first (:meth:`launch_runs`)."""
        t_start = time.perf_counter()
        self.s.out_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_data()
        if launcher is not None:
            self.launch_runs(launcher)
        written: dict[str, Path] = {}
        for study in self.s.studies:
            t0 = time.perf_counter()
            print(f"[reproduce] {study} ...", flush=True)
            written[study] = getattr(self, study)()
            self.timeline.append({"study": study, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"[reproduce] {study}: {written[study]} ({self.timeline[-1]['seconds']} s)", flush=True)
        prov = self._stamp()
        write_json({**prov, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                         for k, v in self.s.__dict__.items()},
                    "runs": self.runs, "timeline_s": self.timeline,
                    "total_s": round(time.perf_counter() - t_start, 1)}, self.s.out_dir / "provenance.json")
        self._write_index(written)
        return written

    def _write_index(self, written: dict[str, Path]) -> None:
        """README.md of the study folder: the tables of this run, then any table an earlier run of the same study
        left in the folder (named as such, with the provenance line of its own file)."""
        lines = [f"# Study `{self.s.name}`", "", _provenance_line(self.provenance), "",
                 "| table | file | seconds |", "|---|---|---|"]
        secs = {t["study"]: t["seconds"] for t in self.timeline}
        for study, path in written.items():
            lines.append(f"| {study} | [{path.name}]({path.name}) | {secs.get(study, '')} |")
        own = {p.name for p in written.values()}
        for path in sorted(self.s.out_dir.glob("T[0-9]_*.md")):
            if path.name not in own:
                lines.append(f"| (earlier run) | [{path.name}]({path.name}) | see its header |")
        lines += ["", "Per-case tables: `per_case/`; figures: `figures/`; splits: `splits/`; runs and settings: "
                  "`provenance.json`.", ""]
        (self.s.out_dir / "README.md").write_text("\n".join(lines))


def _provenance_line(p: dict[str, Any]) -> str:
    from .tables import provenance_block

    return provenance_block(p).strip()


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def _budget_iterations(run_dir: Path) -> int:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return int(cfg.trainer.epochs) * int(cfg.trainer.iterations_per_epoch)




def _comparison_lines(comp: pd.DataFrame) -> str:
    if comp.empty:
        return "(no paired comparison possible)"
    out = []
    for _, r in comp.iterrows():
        out.append(f"- {r.get('side', '')}: {r['method_a']} vs {r['method_b']}, n = {r.get('n', '?')}, mean "
                   f"difference {r.get('mean_diff', float('nan')):.3f}, paired t-test P = "
                   f"{r.get('p_ttest', float('nan')):.2g}, Wilcoxon P = {r.get('p_wilcoxon', float('nan')):.2g}")
    return "\n".join(out)


def run_studies(settings: StudySettings, compose_train_cfg: ComposeFn, launcher: Any = None) -> dict[str, Path]:
    """Run the selected studies; returns {study: table path}. ``launcher``: a
    :class:`~dentate_research.training.launch.JobLauncher` to train the runs as jobs (None: in this process).
    See the module docstring."""
    if not settings.command:
        settings.command = "python -m dentate_research " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return StudyRunner(settings, compose_train_cfg).run(launcher)


__all__ = ["PAPER", "STUDIES", "StudyRunner", "StudySettings", "run_studies"]
