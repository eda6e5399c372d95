"""One experiment, from settings to a scored, logged and costed results row.

Ablation grids, sweeps, ``bench-learning`` and the CLI all go through here: the settings ->
(model, data, trainer) step with the links the CLI makes (:func:`build`, :func:`trainer_kwargs`),
:func:`train_and_score`, the run name, the W&B runs (one per experiment, and the summary run of
a grid or a study), the cost row with its one cache (:func:`cost_row`), and the names of the
results columns (STYLE: metric keys and run names are defined once).

Settings are the nested dict of a grid's combination or a sweep's trial::

    {"model": {AffectModule args}, "data": {AbawDataModule args}, "trainer": {Trainer args},
     "seed": 0}
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
import signal
import time
from pathlib import Path

import lightning as L
import torch

from core.errors import ConfigError

log = logging.getLogger(__name__)
PROJECT = "affbench"  # the W&B project of every run

# The cost columns of a results row that tables, plots, sweeps and W&B read: spelled here, once.
PARAMS_M = "params_total_m"
GMACS_PER_FRAME = "gmacs_per_frame"
LATENCY_MS = "latency_ms_median"
# what identifies the architecture in a cost row; a results row has them as settings already
ARCH_COLUMNS = ("backbone", "head", "tasks")


# Harmless warnings every run would repeat: Lightning's pytree deprecation, the logging interval
# of short runs, the eval-mode BatchNorm of a frozen encoder (on purpose: see backbone.py), and
# the default logger's note that it is a CSVLogger without tensorboard installed.
_NOISE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"Starting from v1.9.0, `tensorboardX` has been removed",
    r"The number of training batches .* is smaller than the logging interval",
    r"Found \d+ module\(s\) in eval mode",
)


def quiet_warnings() -> None:
    """The harmless warnings above, off (``affbench fit`` too: it keeps Lightning's info lines,
    which one run shows once). ``AFFBENCH_VERBOSE=1`` keeps them."""
    if os.environ.get("AFFBENCH_VERBOSE"):
        return
    import warnings

    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def quiet_libraries() -> None:
    """A console that shows the suite's own lines, warnings and errors: Lightning's per-run info
    lines (seed set, GPU/TPU available, the litlogger tip, loading the dataloader, restoring a
    checkpoint) and W&B's banners go, with the harmless warnings above. ``AFFBENCH_VERBOSE=1``
    (``-v``) keeps everything."""
    if os.environ.get("AFFBENCH_VERBOSE"):
        return
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_warnings()
    os.environ.setdefault("WANDB_SILENT", "true")


def trainer_defaults() -> dict:
    """What every training of the suite uses unless told otherwise (the CLI, ablation grids,
    sweeps and the learning benchmark): gradients clipped at 1.0; bf16 mixed precision on a
    GPU, fp32 on the CPU; training losses and the learning rate logged every 10 steps."""
    return {
        "gradient_clip_val": 1.0,
        "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
        # a training curve even for short runs (Lightning's 50 hides runs of a few dozen steps)
        "log_every_n_steps": 10,
    }


def run_name(settings: dict) -> str:
    """``{backbone}+{head}_t{T}_r{res}_s{seed}`` (plus head settings and tasks where given)."""
    m = settings.get("model", {})
    name = f"{m.get('backbone', 'mobilenetv4_conv_small')}+{m.get('head', 'mixer3')}"
    for k, v in sorted((m.get("head_kwargs") or {}).items()):
        name += f"-{k}{v}"
    name += f"_t{m.get('seq_len', 32)}_r{m.get('img_size', 112)}_s{settings.get('seed', 0)}"
    tasks = m.get("tasks", "va")
    return name if tasks == "va" else f"{name}_{str(tasks).replace(',', '-')}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (``signum``) stopped a run, a grid or a sweep. For one
    training run: ``checkpoint`` is where it stood (or None), ``run_id`` its W&B run and
    ``train_s`` its training time so far, so it can resume."""

    def __init__(
        self,
        signum: int,
        checkpoint: str | None = None,
        run_id: str | None = None,
        train_s: float = 0.0,
    ):
        self.signum = int(signum)
        self.why = f"interrupted by {signal.Signals(self.signum).name}"
        super().__init__(self.why)
        self.checkpoint, self.run_id, self.train_s = checkpoint, run_id, train_s


# The signal that stops this process's work (set by the grid and sweep workers' handlers); a
# SIGTERM that came between Lightning's loops stops train_and_score at its next step. "missed":
# a handler's Interrupted that landed where Python cannot raise (a weakref callback, a __del__:
# it prints "Exception ignored" and goes on), raised again at the next batch.
STOP: dict = {"signal": None, "missed": None}


def check_stop() -> None:
    if STOP["signal"] is not None:
        raise KeyboardInterrupt


class _RaiseMissedSignal(L.Callback):
    """Raise, at the end of the next batch, a signal's Interrupted that was swallowed."""

    def _check(self, *_: object) -> None:
        if STOP.get("missed") is not None:
            signum, STOP["missed"] = STOP["missed"], None
            raise Interrupted(signum)

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = _check


def signal_of(e: BaseException) -> int:
    """The signal behind an interruption: a SIGTERMException or the flag say SIGTERM, an
    Interrupted (itself, or what Lightning's SystemExit replaced) says its own; else SIGINT."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(e, SIGTERMException) or STOP["signal"] == signal.SIGTERM:
        return signal.SIGTERM
    for cause in (e, e.__context__):
        if isinstance(cause, Interrupted):
            return cause.signum
    return signal.SIGINT


def wandb_mode(disabled: bool = False) -> str:
    """disabled, the user's WANDB_MODE, online when logged in, else offline (real run files)."""
    if disabled:
        return "disabled"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    logged_in = bool(os.environ.get("WANDB_API_KEY"))
    with contextlib.suppress(OSError, netrc.NetrcParseError):
        logged_in = logged_in or netrc.netrc().authenticators("api.wandb.ai") is not None
    return "online" if logged_in else "offline"


def _wandb_logger_class():
    from lightning.pytorch.loggers import WandbLogger

    class SettingsLogger(WandbLogger):
        """A WandbLogger whose run config is the experiment's settings, nested as they are
        (``model.head``, ``data.batch_size``), given once at init: Lightning's own dump of the
        module's and the datamodule's arguments would add a flat second copy of the same
        values."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Lightning passes anonymous=None, which W&B answers with a deprecation warning
            self._wandb_init.pop("anonymous", None)

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

    return SettingsLogger


def flat(settings: dict, prefix: str = "") -> dict:
    """``{"model.head": "gru", ...}``: the settings as W&B config and results columns."""
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict) and k != "head_kwargs":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, dict | list) else v
    return out


def build(settings: dict, stills: bool = False) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The model and its data: the data takes the model's tasks, clip length, frame size and
    its weights' normalisation (the links ``affbench fit`` makes). ``stills``: still faces in
    the AffectNet layout (stage 1, clips of one frame) instead of ABAW videos."""
    from lightning_modules.module import AffectModule

    if stills:
        from datamodules.stills import AffectNetDataModule as Data
    else:
        from datamodules.abaw import AbawDataModule as Data

    model = AffectModule(**settings.get("model", {}))
    hp = model.hparams
    data = Data(
        **{
            **settings.get("data", {}),
            "tasks": hp.tasks,
            "seq_len": hp.seq_len,
            "img_size": hp.img_size,
            "mean": model.mean,
            "std": model.std,
        }
    )
    return model, data


def trainer_kwargs(settings: dict, **overrides) -> dict:
    """Trainer arguments: the suite's defaults, then ``overrides``, then the settings' own.
    ``deterministic`` (off unless the settings say ``trainer.deterministic: true``) and
    ``benchmark`` are always given, so that Lightning sets torch's process-wide flags (its
    deterministic algorithms, cuDNN's autotuner) for every run anew: a run never inherits them
    from the one a worker ran before it."""
    return {
        "max_epochs": 3,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "deterministic": False,
        "benchmark": False,
        **trainer_defaults(),
        **overrides,
        **settings.get("trainer", {}),
    }


def cost_row(settings: dict) -> dict:
    """What the settings' architecture costs (``efficiency.profile`` at batch 1, 2 warm-up and 5
    timed runs, on this process's device and threads), from the one cost cache when this
    architecture was measured here before: seeds and learning rates never re-measure."""
    from lightning_modules.efficiency import ModelSpec, profile

    device = "cuda" if torch.cuda.is_available() else "cpu"
    row = profile(
        ModelSpec.from_settings(settings.get("model", {})),
        device=device,
        batch=1,
        warmup=2,
        runs=5,
        cached=True,
    )
    return {k: v for k, v in row.items() if k not in ARCH_COLUMNS}


class _SaveOnSigterm(L.Callback):
    """On SIGTERM Lightning stops at the end of a batch (SIGTERMException): save the state there,
    atomically, so the run resumes from it."""

    def __init__(self, path: Path):
        self.path, self.saved = Path(path), None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            trainer.save_checkpoint(tmp)  # every rank calls it; rank 0 writes the file
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
            self.saved = str(self.path)


def _loadable(path: Path) -> bool:
    """A checkpoint that a kill or a full disk did not truncate."""
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception:  # truncated zip, empty file, anything torch cannot read
        return False


def resume_checkpoint(folder: Path) -> Path | None:
    """The newest readable checkpoint of an interrupted run (truncated files are ignored and
    reported)."""
    found = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        if _loadable(path):
            return path
        log.warning("ignoring %s: the file is damaged or truncated", path)
    return None


def _peak_memory_reset() -> float:
    from lightning_modules.efficiency import peak_rss_reset

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return peak_rss_reset()


def _peak_memory() -> float:
    from lightning_modules.efficiency import proc_status

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return proc_status("VmHWM")


class _Throughput(L.Callback):
    """Frames per second of the training steps alone (forward, backward and optimizer step;
    the wait for data excluded): a still image is one frame, a clip of T frames T."""

    def __init__(self):
        self.frames, self.seconds, self.t0 = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self.t0
        self.frames += int(batch["pad"].numel())  # B x T, with or without cached features

    @property
    def frames_per_s(self) -> float | None:
        return round(self.frames / self.seconds, 1) if self.seconds else None


def _test_is_labelled(data) -> bool:
    if not hasattr(data, "test_list_file"):  # stills: a train and a val split only
        return False
    try:
        data.setup("test")
    except (FileNotFoundError, ConfigError):  # no test list, or no labelled clip in it
        return False
    ds = data.datasets.get("test")
    return bool(
        ds is not None and any(ds.index.valid[t].any() for t in data.tasks if t in ds.index.valid)
    )


@contextlib.contextmanager
def run_log(path: Path):
    """Lightning's lines of one run, INFO and up, into ``path`` (the console keeps only its
    warnings and errors unless ``AFFBENCH_VERBOSE``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    quiet = not os.environ.get("AFFBENCH_VERBOSE")
    saved = []
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, [(h, h.level) for h in lg.handlers]))
        if quiet:
            for h in lg.handlers:
                h.setLevel(max(h.level, logging.WARNING))
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    try:
        yield path
    finally:
        for lg, level, handlers in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            for h, h_level in handlers:
                h.setLevel(h_level)
        handler.close()


def train_and_score(settings: dict, folder: Path, group: str, mode: str, key: str, **kw) -> dict:
    """:func:`_train_and_score` with Lightning's lines of the run in ``<folder>/logs/<key>.log``
    (beside its results; ``-v`` shows them live too)."""
    quiet_libraries()
    with run_log(Path(folder) / "logs" / f"{key}.log"):
        return _train_and_score(settings, folder, group, mode, key, **kw)


def _train_and_score(
    settings: dict,
    folder: Path,
    group: str,
    mode: str,
    key: str,
    *,
    name: str | None = None,
    config: dict | None = None,
    callbacks: list | None = None,
    cost: dict | None = None,
    resume: dict | None = None,
    stills: bool = False,
) -> dict:
    """One experiment (a grid's combination, a sweep's trial): fit, score the best checkpoint on
    val (and test when labelled), add its cost; returns the results row. Runs one W&B run,
    named ``name`` (default :func:`run_name`), its config the settings, nested, with ``key``
    and ``config`` (e.g. a sweep's trial number) beside them; the training losses and the
    learning rate per step, ``val/*`` per epoch, and the best checkpoint's measures (val, test)
    and costs in its summary; finished before returning. ``callbacks`` join the checkpoint
    callback (a sweep's pruner); ``cost`` (a :func:`cost_row`) saves the cache lookup.
    ``resume`` (the record of an interrupted run: ``checkpoint``, ``wandb_run_id``,
    ``train_s``) continues that run from its checkpoint, in the same W&B run. SIGTERM or
    Ctrl-C raise :class:`Interrupted`, the state saved first when it came during training.
    ``stills``: stage 1 on still faces (:func:`build`)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from lightning_modules.intervals import save as save_video_stats
    from lightning_modules.intervals import stats_path, video_stats
    from lightning_modules.scoring import MONITOR

    resume = resume or {}
    L.seed_everything(settings.get("seed", 0), workers=True)
    model, data = build(settings, stills=stills)
    run_id = resume.get("wandb_run_id") or None
    logger = _wandb_logger_class()(
        project=PROJECT,
        group=group,
        name=name or run_name(settings),
        save_dir=str(folder),
        mode=mode,
        config={**settings, "key": key, **(config or {})},
        job_type="train",
        **({"id": run_id, "resume": "allow"} if run_id else {}),
    )
    ckpt_dir = Path(folder) / "checkpoints" / key
    ckpt = ModelCheckpoint(
        dirpath=ckpt_dir, monitor=MONITOR, mode="max", save_top_k=1, save_last=True
    )
    on_sigterm = _SaveOnSigterm(ckpt_dir / "interrupted.ckpt")
    speed = _Throughput()
    trainer = L.Trainer(
        logger=logger,
        callbacks=[
            ckpt,
            on_sigterm,
            _RaiseMissedSignal(),
            speed,
            LearningRateMonitor(logging_interval="step"),
            *(callbacks or []),
        ],  # fmt: skip
        default_root_dir=folder,
        **trainer_kwargs(settings),
    )
    start = resume.get("checkpoint") or None
    t0 = time.perf_counter()
    try:
        check_stop()  # a SIGTERM while the model was built: Lightning would not see it
        base = _peak_memory_reset()
        trainer.fit(model, data, ckpt_path=start)
        train_s = time.perf_counter() - t0 + float(resume.get("train_s") or 0)
        peak = _peak_memory() - base
        best = ckpt.best_model_path or None
        check_stop()
        # the best checkpoint's measures go to the summary below, not as a second point of the
        # validation curve at the last step
        trainer.loggers = []
        row = dict(trainer.validate(model, data, ckpt_path=best, verbose=False)[0])
        check_stop()
        if _test_is_labelled(data):
            row.update(trainer.test(model, data, ckpt_path=best, verbose=False)[0])
        check_stop()
        if trainer.is_global_zero:  # every rank holds all frames (gathered); one writes them
            save_video_stats(
                stats_path(folder, key),
                {s: video_stats(*scored) for s, scored in model.last_scored.items()},
            )
        row.update(cost if cost is not None else cost_row(settings))
        row.update(
            train_s=round(train_s, 1),
            train_peak_mem_mib=round(peak, 1),
            train_frames_per_s=speed.frames_per_s,
            # the CPU threads it trained with: their number decides the rounding of CPU sums
            train_threads=torch.get_num_threads(),
            checkpoint=best,
            wandb_run_id=logger.experiment.id if trainer.is_global_zero else None,
            epochs=trainer.current_epoch,
            world_size=trainer.world_size,
            steps=trainer.global_step,
            resumed_from=start or "",
        )
        if trainer.is_global_zero:  # other ranks have no W&B run
            logger.experiment.summary.update(
                {k: v for k, v in row.items() if isinstance(v, int | float)}
            )
        (ckpt_dir / "interrupted.ckpt").unlink(missing_ok=True)
        return row
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns SIGTERM into SIGTERMException at the end of a batch, and Ctrl-C (or
        # a sweep's Interrupted) into SystemExit(1) with it as the context; outside its loops
        # a worker's handler only flags SIGTERM (checked above)
        train_s = time.perf_counter() - t0 + float(resume.get("train_s") or 0)
        raise Interrupted(
            signal_of(e),
            on_sigterm.saved or ckpt.last_model_path or start,
            logger.experiment.id if mode != "disabled" and trainer.is_global_zero else None,
            round(train_s, 1),
        ) from None
    finally:
        logger.experiment.finish()  # one run per experiment, closed before the next


# How tables, plots and W&B name a measure (the challenge's names), by its key's last part.
MEASURE_NAMES = {
    "va_ccc": "VA CCC",
    "valence_ccc": "valence CCC",
    "arousal_ccc": "arousal CCC",
    "expr_f1": "EXPR F1",
    "au_f1": "AU F1",
    "au_f1_tuned": "AU F1 (tuned thresholds)",
    "emi_pcc": "EMI PCC",
    "score": "score (mean of the tasks' measures)",
}


def measure_label(metric: str) -> str:
    """``val/va_ccc`` -> ``val VA CCC``."""
    stage, _, name = metric.rpartition("/")
    return f"{stage} {MEASURE_NAMES.get(name, name)}".strip()


def summary_run(
    df,
    *,
    group: str,
    name: str,
    job_type: str,
    folder: Path,
    mode: str,
    metric: str,
    summary: dict,
) -> None:
    """The W&B run of a grid's or a study's results (unless ``mode`` is disabled): the
    results as a Table (string columns such as backbone, head and run kept, so points can be
    coloured by them), the measure against GMACs per frame as a scatter whose axes are named
    with the measure and the unit, and ``summary``."""
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(
        project=PROJECT, group=group, name=name, job_type=job_type, dir=str(folder), mode=mode
    )
    try:
        axes = {GMACS_PER_FRAME: "GMACs per frame", metric: measure_label(metric)}
        table = wandb.Table(dataframe=df.rename(columns=axes))
        title = f"{group}: {axes[metric]} against GMACs per frame"
        run.log(
            {
                "results": table,
                "frontier": wandb.plot.scatter(
                    table, axes[GMACS_PER_FRAME], axes[metric], title=title
                ),
            }
        )
        run.summary.update(summary)
    finally:
        run.finish()


def spans_devices(settings: dict) -> bool:
    """Whether the settings train on more than one device (DDP): ``trainer.devices`` above 1,
    a list of several, -1 or "auto"."""
    devices = settings.get("trainer", {}).get("devices", 1)
    if isinstance(devices, list | tuple):
        return len(devices) > 1
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()]) > 1
    return str(devices) not in ("1", "0")


def train_and_score_apart(settings: dict, folder: Path, group: str, mode: str, key: str, **kw):
    """:func:`train_and_score` in a process of its own: ``python -m lightning_modules.experiment``,
    which Lightning's DDP launcher re-runs once per rank, so DDP runs this experiment and only
    this one (never the command that called it). Its row, interruption or error comes back
    through a JSON file that rank 0 writes. A signal here is passed on to it, and waited for."""
    import subprocess
    import sys

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec, out = folder / f".{key}.spec.json", folder / f".{key}.result.json"
    out.unlink(missing_ok=True)
    spec.write_text(
        json.dumps(
            {
                "settings": settings,
                "folder": str(folder),
                "group": group,
                "mode": mode,
                "key": key,
                "kw": kw,
            }
        )  # fmt: skip
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_modules.experiment", str(spec), str(out)]
    )
    passed = None
    while proc.returncode is None:
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:  # our handler raised: the run must stop (and save) first
            pass
        if STOP["signal"] is not None and passed is None and proc.returncode is None:
            passed = STOP["signal"]
            proc.send_signal(passed)
    result = json.loads(out.read_text()) if out.exists() else {}
    spec.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    if "row" in result:
        return result["row"]
    if "interrupted" in result:
        raise Interrupted(**result["interrupted"])
    if passed is not None:
        raise Interrupted(passed)
    if "error" in result:
        raise RuntimeError(result["error"])
    raise RuntimeError(f"{key}: the training process ended with exit code {proc.returncode}")


def _main(spec_path: str, out_path: str) -> None:
    """One experiment from a JSON spec (``train_and_score_apart``), on every rank."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    spec = json.loads(Path(spec_path).read_text())
    # SIGTERM: flagged; Lightning's own handler (during its loops) stops at the end of the batch
    # and train_and_score saves the state there, as in a grid's own process
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.update(signal=signum))
    try:
        args = (spec["settings"], Path(spec["folder"]), spec["group"], spec["mode"], spec["key"])
        result = {"row": train_and_score(*args, **spec["kw"])}
    except Interrupted as e:
        result = {"interrupted": {"signum": e.signum, "checkpoint": e.checkpoint,
                                  "run_id": e.run_id, "train_s": e.train_s}}  # fmt: skip
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    if rank_zero_only.rank == 0:
        out = Path(out_path)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, out)


if __name__ == "__main__":
    import sys

    _main(sys.argv[1], sys.argv[2])
