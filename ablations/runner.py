"""Run an ablation grid: train, score, profile and record every combination, resumably.

The results store is ``<results>/<name>/results.csv``, one row per combination key. Every write
holds a lock on the folder and replaces the file atomically, so processes sharing a folder never
lose a row; each combination is claimed (an ``flock`` the kernel drops when its process dies)
before it runs, so two ``affbench ablate`` on one folder never run it twice. A finished key is
skipped on the next run; a failing one (exception, NaN loss, out of memory) is written with its
error and the grid goes on (``retry_failed`` runs it again next time). SIGTERM or Ctrl-C (a
cluster's time limit, ``timeout``) stops the grid: the running combination is saved to a
checkpoint where it stood, recorded ``interrupted``, and resumed from that checkpoint on the next
start. Each combination is one W&B run (offline unless you are logged in or set WANDB_MODE),
grouped by the ablation's name and finished before the next starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import netrc
import os
import signal
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tqdm.auto import tqdm

from ablations.frontier import frontier_plot
from ablations.grid import expand
from ablations.tables import render
from core.errors import ConfigError
from core.paths import RESULTS
from lightning_modules.efficiency import ModelSpec, peak_rss_reset, proc_status, profile
from lightning_modules.experiment import (
    GMACS_PER_FRAME,
    PARAMS_M,
    Interrupted,
    run_name,
    trainer_defaults,
)
from lightning_modules.scoring import MONITOR

log = logging.getLogger(__name__)
PROJECT = "affbench"


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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "head_kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, dict | list) else v
    return out


class ResultsStore:
    """results.csv under one folder, one row per combination key, safe for several processes:
    writes hold ``.results.lock`` and replace the file atomically; ``claim`` takes a
    combination for this process (``claims/<key>.lock``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / "results.csv"

    def read(self) -> pd.DataFrame:
        return (
            pd.read_csv(self.path)
            if self.path.exists()
            else pd.DataFrame(columns=["key", "status"])
        )

    def status(self) -> dict[str, str]:
        df = self.read()
        return dict(zip(df["key"], df["status"], strict=True))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The folder's write lock. Under it, a ``.results.*.csv`` left by a writer that died
        (a kill, a full disk) is stale: it is removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".results.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                for stale in self.folder.glob(".results.*.csv"):
                    stale.unlink(missing_ok=True)
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(self, row: dict) -> None:
        with self.locked():
            df = self.read()
            df = pd.concat([df[df["key"] != row["key"]], pd.DataFrame([row])], ignore_index=True)
            tmp = self.path.with_name(f".results.{os.getpid()}.csv")
            with open(tmp, "w") as f:
                df.to_csv(f, index=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def claim(self, key: str):
        """An open, locked claim file for ``key``, or None when another process holds it. The
        claim ends when the file is closed or the process dies."""
        folder = self.folder / "claims"
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / f"{key}.lock", "a")  # noqa: SIM115 (held open while the run lasts)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        return f


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
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        if _loadable(path):
            return path
        log.warning("ignoring %s: the file is damaged or truncated", path)
    return None


def _peak_memory_reset() -> float:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return peak_rss_reset()


def _peak_memory() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return proc_status("VmHWM")


def train_and_score(
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
) -> dict:
    """One combination (or sweep trial): fit, score the best checkpoint on val (and test when
    labelled), profile; returns the results row. Runs one W&B run, named ``name`` (default
    :func:`run_name`) with ``config`` (default: the flattened settings), finished before
    returning. ``callbacks`` join the checkpoint callback (a sweep's pruner); ``cost``, a row
    already measured by ``efficiency.profile``, replaces the profiling step. ``resume`` (the
    row of an interrupted run: ``checkpoint``, ``wandb_run_id``, ``train_s``) continues that run
    from its checkpoint, in the same W&B run. SIGTERM or Ctrl-C raise :class:`Interrupted`, the
    state saved first when it came during training."""
    from lightning.pytorch.loggers import WandbLogger

    from datamodules.abaw import AbawDataModule
    from lightning_modules.module import AffectModule

    resume = resume or {}
    L.seed_everything(settings.get("seed", 0), workers=True)
    model_kw, data_kw = dict(settings.get("model", {})), dict(settings.get("data", {}))
    model = AffectModule(**model_kw)
    hp = model.hparams
    data = AbawDataModule(
        **{
            **data_kw,
            "tasks": hp.tasks,
            "seq_len": hp.seq_len,
            "img_size": hp.img_size,
            "mean": model.mean,
            "std": model.std,
        }
    )
    run_id = resume.get("wandb_run_id") or None
    logger = WandbLogger(
        project=PROJECT,
        group=group,
        name=name or run_name(settings),
        save_dir=str(folder),
        mode=mode,
        config={**(config if config is not None else _flat(settings)), "key": key},
        job_type="train",
        **({"id": run_id, "resume": "allow"} if run_id else {}),
    )
    ckpt_dir = folder / "checkpoints" / key
    ckpt = ModelCheckpoint(
        dirpath=ckpt_dir, monitor=MONITOR, mode="max", save_top_k=1, save_last=True
    )
    on_sigterm = _SaveOnSigterm(ckpt_dir / "interrupted.ckpt")
    trainer_kw = {
        "max_epochs": 3,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **trainer_defaults(),
        **settings.get("trainer", {}),
    }
    trainer = L.Trainer(
        logger=logger,
        callbacks=[ckpt, on_sigterm, *(callbacks or [])],
        default_root_dir=folder,
        **trainer_kw,
    )
    start = resume.get("checkpoint") or None
    t0 = time.perf_counter()
    try:
        base = _peak_memory_reset()
        trainer.fit(model, data, ckpt_path=start)
        train_s = time.perf_counter() - t0 + float(resume.get("train_s") or 0)
        peak = _peak_memory() - base
        best = ckpt.best_model_path or None
        _check_stop()
        row = dict(trainer.validate(model, data, ckpt_path=best, verbose=False)[0])
        _check_stop()
        if _test_is_labelled(data):
            row.update(trainer.test(model, data, ckpt_path=best, verbose=False)[0])
        _check_stop()
        if cost is None:
            cost = profile(ModelSpec.from_settings(dict(hp)), batch=1, warmup=2, runs=5)
        row.update({k: v for k, v in cost.items() if k not in ("backbone", "head", "tasks")})
        row.update(
            train_s=round(train_s, 1),
            train_peak_mem_mib=round(peak, 1),
            checkpoint=best,
            wandb_run_id=logger.experiment.id,
            epochs=trainer.current_epoch,
            steps=trainer.global_step,
            resumed_from=start or "",
        )
        logger.experiment.summary.update(
            {k: v for k, v in row.items() if isinstance(v, int | float)}
        )
        (ckpt_dir / "interrupted.ckpt").unlink(missing_ok=True)
        return row
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns SIGTERM into SIGTERMException at the end of a batch, and Ctrl-C (or
        # a sweep's Interrupted) into SystemExit(1) with it as the context; outside its loops
        # run_grid's handler only flags SIGTERM (checked above)
        train_s = time.perf_counter() - t0 + float(resume.get("train_s") or 0)
        raise Interrupted(
            _signal_of(e),
            on_sigterm.saved or ckpt.last_model_path or start,
            logger.experiment.id if mode != "disabled" else None,
            round(train_s, 1),
        ) from None
    finally:
        logger.experiment.finish()  # one run per combination, closed before the next


_stop_signal: int | None = None  # set by run_grid's SIGTERM handler


def _check_stop() -> None:
    """A SIGTERM that came between Lightning's loops stops the run here."""
    if _stop_signal is not None:
        raise KeyboardInterrupt


def _signal_of(e: BaseException) -> int:
    """The signal behind an interruption: a SIGTERMException or run_grid's flag say SIGTERM, an
    Interrupted (itself, or what Lightning's SystemExit replaced) says its own; else SIGINT."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(e, SIGTERMException) or _stop_signal == signal.SIGTERM:
        return signal.SIGTERM
    for cause in (e, e.__context__):
        if isinstance(cause, Interrupted):
            return cause.signum
    return signal.SIGINT


def _test_is_labelled(data) -> bool:
    try:
        data.setup("test")
    except (FileNotFoundError, ConfigError):  # no test list, or no labelled clip in it
        return False
    ds = data.datasets.get("test")
    return bool(
        ds is not None and any(ds.index.valid[t].any() for t in data.tasks if t in ds.index.valid)
    )


def check_runs(runs: list[dict]) -> None:
    """Check every combination before the first trains: the data root is there, and each
    distinct model and data setting builds (heads, backbones, T against the Mixer's tubelets,
    strides, ...). All problems are one ConfigError, so a grid never fails one run at a time."""
    from datamodules.abaw import AbawDataModule
    from datamodules.index import find_annotations_dir
    from lightning_modules.module import AffectModule

    problems: dict[str, dict[str, None]] = {}  # message -> run names
    checked: dict[str, str | None] = {}
    bad_keys: set[str] = set()

    def check(what: str, fn) -> str | None:
        if what not in checked:
            try:
                fn()
                checked[what] = None
            except (ConfigError, ValueError, TypeError, FileNotFoundError) as e:
                checked[what] = f"{e}".splitlines()[0] if str(e) else type(e).__name__
        return checked[what]

    for r in runs:
        model, data = r["settings"].get("model", {}), r["settings"].get("data", {})
        root = data.get("root", "data/synthetic")
        found = (
            check(
                f"root:{root}:{data.get('annotations')}",
                lambda root=root, data=data: find_annotations_dir(
                    Path(root), data.get("annotations")
                ),
            ),
            check(
                json.dumps([model, data], sort_keys=True, default=str),
                lambda model=model, data=data: _check_model(
                    AffectModule, AbawDataModule, model, data
                ),
            ),
        )
        for problem in filter(None, found):
            problems.setdefault(problem, {})[run_name(r["settings"])] = None  # ordered, once
            bad_keys.add(r["key"])
    if problems:
        bad = len(bad_keys)
        parts = [
            f"{msg} ({', '.join(names[:3])}" + (f" +{len(names) - 3} more)" if names[3:] else ")")
            for msg, names in ((m, list(n)) for m, n in problems.items())
        ]
        raise ConfigError(
            f"{bad} of {len(runs)} combinations cannot run, nothing was trained: "
            + "; ".join(parts)
        )


def _check_model(module_cls, data_cls, model: dict, data: dict) -> None:
    m = module_cls(**model)
    hp = m.hparams
    data_cls(**{**data, "tasks": hp.tasks, "seq_len": hp.seq_len, "img_size": hp.img_size})


def run_grid(
    cfg: dict,
    results_root: str | Path = RESULTS,
    wandb_disabled: bool = False,
    dry_run: bool = False,
    max_runs: int | None = None,
    retry_failed: bool = False,
) -> pd.DataFrame:
    """Run every combination not yet in the store (and the failed ones with ``retry_failed``);
    returns the store. ``max_runs`` stops after that many combinations (the rest run on the
    next call). Every combination is checked first (:func:`check_runs`). Combinations that
    another process holds are left to it. SIGTERM or Ctrl-C stop the grid after recording the
    running combination as ``interrupted`` (it resumes from its checkpoint next time) and raise
    :class:`Interrupted`."""
    runs = expand(cfg)
    folder = Path(results_root) / cfg["name"]
    store = ResultsStore(folder)
    if dry_run:
        rows = []
        for r in runs:
            spec = ModelSpec.from_settings(r["settings"].get("model", {}))
            try:
                cost = profile(spec, timing=False)
            except (ConfigError, ValueError, TypeError) as e:
                raise ConfigError(f"{run_name(r['settings'])}: {e}") from None
            rows.append(
                {
                    "key": r["key"],
                    "run": run_name(r["settings"]),
                    "status": store.status().get(r["key"], "todo"),
                    PARAMS_M: cost[PARAMS_M],
                    GMACS_PER_FRAME: cost[GMACS_PER_FRAME],
                }
            )
        return pd.DataFrame(rows)
    status = store.status()
    skip = ("done",) if retry_failed else ("done", "failed")
    todo = [r for r in runs if status.get(r["key"]) not in skip]
    check_runs(todo)
    mode = wandb_mode(wandb_disabled)
    os.environ.setdefault("WANDB_SILENT", "true")  # the grid's own bar and summary say enough
    done = sum(status.get(r["key"]) == "done" for r in runs)
    failed = sum(status.get(r["key"]) == "failed" for r in runs) if not retry_failed else 0
    bar = tqdm(
        total=len(runs),
        initial=len(runs) - len(todo),
        desc=cfg["name"],
        unit="run",
        dynamic_ncols=True,
    )
    global _stop_signal
    _stop_signal = None

    def on_sigterm(signum, frame):  # Lightning's own handler joins this one during its loops
        global _stop_signal
        _stop_signal = signum

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    started, interrupted = 0, None
    try:
        for r in todo:
            if max_runs is not None and started >= max_runs:
                break
            claim = store.claim(r["key"])
            if claim is None:  # another process runs it
                continue
            try:
                prior = store.read().set_index("key")
                if r["key"] in prior.index and prior.at[r["key"], "status"] in skip:
                    continue  # finished by another process meanwhile
                prev = prior.loc[r["key"]].to_dict() if r["key"] in prior.index else {}
                started += 1
                done, failed, interrupted = _run_one(
                    r, cfg, folder, store, mode, prev, bar, done, failed
                )
            finally:
                claim.close()
            bar.update(1)
            if interrupted is not None:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
    df = store.read()
    finished = df[df["status"] == "done"]
    if len(finished):
        with store.locked():
            write_reports(finished, folder, cfg, mode)
    if interrupted is not None:
        raise interrupted
    return df


def _run_one(r, cfg, folder, store, mode, prev, bar, done, failed):
    """Train one claimed combination and record it; returns the counts and the interruption."""
    name = run_name(r["settings"])
    bar.set_postfix_str(f"running {name} | done {done} failed {failed}")
    base = {
        "key": r["key"],
        "run": name,
        "ablation": cfg["name"],
        **_flat(r["settings"]),
        "settings": json.dumps(r["settings"], sort_keys=True),
    }
    resume = {}
    if prev.get("status") == "interrupted":
        path = resume_checkpoint(folder / "checkpoints" / r["key"])
        resume = {
            "checkpoint": str(path) if path else None,
            "wandb_run_id": _text(prev.get("wandb_run_id")),
            "train_s": float(prev.get("train_s") or 0) if path else 0.0,
        }
        bar.write(f"{name}: resuming from {path}" if path else f"{name}: no checkpoint, restart")
    interrupted = None
    try:
        row = {
            **base,
            **train_and_score(r["settings"], folder, cfg["name"], mode, r["key"], resume=resume),
            "status": "done",
            "error": "",
        }
        done += 1
    except Interrupted as e:
        row = {
            **base,
            "status": "interrupted",
            "error": e.why,
            "checkpoint": e.checkpoint or "",
            "wandb_run_id": e.run_id or "",
            "train_s": e.train_s,
        }
        interrupted = e
    except Exception as e:  # NaN loss, out of memory, bad settings: recorded, the grid goes on
        log.error("%s failed: %s", name, e)
        row = {
            **base,
            "status": "failed",
            "error": f"{type(e).__name__}: {e}".replace("\n", " ")[:500],
            "traceback": traceback.format_exc()[-2000:],
        }
        failed += 1
    store.put(row)
    return done, failed, interrupted


def _text(value) -> str | None:
    """A string cell of the store (pandas reads an empty one as NaN)."""
    return value if isinstance(value, str) and value else None


def write_reports(df: pd.DataFrame, folder: Path, cfg: dict, mode: str) -> dict[str, Path]:
    """Markdown and LaTeX tables and the frontier plot beside the store; a W&B summary run."""
    metric = main_metric(df)
    rows, cols = table_axes(cfg)
    paths = {
        "md": folder / "table.md",
        "latex": folder / "table.tex",
        "plot": folder / "frontier.png",
    }
    paths["md"].write_text(render(df, rows, cols, metric, "md"))
    paths["latex"].write_text(render(df, rows, cols, metric, "latex"))
    points = (
        df.groupby("run", sort=False).agg({metric: "mean", GMACS_PER_FRAME: "first"}).reset_index()
    )
    points["label"] = points["run"].str.replace(r"_s\d+$", "", regex=True)
    points = (
        points.groupby("label", sort=False)
        .agg({metric: "mean", GMACS_PER_FRAME: "first"})
        .reset_index()
    )
    frontier_plot(
        points, metric, paths["plot"], title=f"{cfg['name']}: {metric} against GMACs per frame"
    )
    if mode != "disabled":
        import wandb

        run = wandb.init(
            project=PROJECT,
            group=cfg["name"],
            name=f"{cfg['name']}-summary",
            job_type="summary",
            dir=str(folder),
            mode=mode,
        )
        table = wandb.Table(dataframe=df.select_dtypes(exclude="object").join(df[["run"]]))
        run.log(
            {
                "results": table,
                "frontier": wandb.plot.scatter(
                    table, GMACS_PER_FRAME, metric, title=f"{cfg['name']} frontier"
                ),
            }
        )
        run.summary["best_" + metric] = float(df[metric].max())
        run.finish()
    return paths


def main_metric(df: pd.DataFrame) -> str:
    """The measure tables and plots use: val/score (the mean over trained tasks)."""
    return MONITOR if MONITOR in df else next(c for c in df.columns if c.startswith("val/"))


def table_axes(cfg: dict) -> tuple[str, str]:
    """Rows and columns of the default table: the first two grid axes other than the seed."""
    axes = [a for a in cfg.get("grid", {}) if a != "seed"]
    rows = axes[0] if axes else "model.head"
    cols = axes[1] if len(axes) > 1 else "model.backbone"
    return rows, cols
