"""``affbench``: the suite's one command: ``data`` (synth, info, benchmarks), ``fit``,
``validate``, ``test``, ``predict`` (a LightningCLI), ``pretrain`` (stage 1), ``profile``,
``ablate``, ``table``, ``sweep``, ``frontier``, the benchmarks (``bench-*``; each writes its
figures to ``results/<benchmark>-<machine>.csv``) and ``bench-page`` (``BENCHMARKS.md``)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from core.paths import BENCH_RESULTS, RESULTS, STUDIES


def _data_synth(args: argparse.Namespace) -> None:
    if args.layout == "affectnet":
        return _data_synth_stills(args)
    from datamodules.info import dataset_info, format_info
    from datamodules.synth import generate

    out = args.out or "data/synthetic"
    t0 = time.perf_counter()
    done = generate(
        out, videos=args.videos, frames=args.frames, seed=args.seed, workers=args.workers
    )
    seconds = time.perf_counter() - t0
    n = sum(d["frames"] for d in done)
    print(f"wrote {len(done)} videos, {n} frames to {out} in {seconds:.1f} s (seed {args.seed})")
    print(format_info(dataset_info(out)))


def _data_synth_stills(args: argparse.Namespace) -> None:
    from datamodules.synth_stills import DEFAULT_OUT, generate_affectnet

    out = args.out or DEFAULT_OUT
    t0 = time.perf_counter()
    done = generate_affectnet(
        out, images=args.images, val_images=args.val_images, seed=args.seed, workers=args.workers
    )
    seconds = time.perf_counter() - t0
    print(
        f"wrote {done['images']} still images (AffectNet file lists) to {out} in {seconds:.1f} s "
        f"(seed {args.seed})"
    )
    for split, n in done["splits"].items():
        classes = ", ".join(f"{name} {k}" for name, k in n["expr"].items())
        print(
            f"  {split}: {n['images']} images; expr: {classes}, none {n['no_expr']}; "
            f"va {n['va']}; unlabelled {n['unlabelled']}"
        )


def _data_info(args: argparse.Namespace) -> None:
    from datamodules.info import dataset_info, format_info

    info = dataset_info(args.root, args.annotations)
    print(json.dumps(info, indent=1) if args.json else format_info(info))


def _print_rows(rows: list[dict], fmt: str) -> None:
    frame = pd.DataFrame(rows)
    print(
        frame.to_csv(index=False)
        if fmt == "csv"
        else frame.to_markdown(index=False)
        if fmt == "md"
        else frame.to_string(index=False)
    )


def _save(rows: list[dict], benchmark: str, args: argparse.Namespace) -> None:
    """A benchmark's rows, with the machine's conditions and the command line, to
    ``<--results-dir>/<benchmark>-<machine>.csv`` (unless ``--no-save``)."""
    if args.no_save:
        return
    from core.conditions import write_results

    command = getattr(args, "command_line", None)
    path = write_results(rows, benchmark, args.results_dir, command)
    print(f"figures written to {path} (BENCHMARKS.md: affbench bench-page)", file=sys.stderr)


def _data_bench_index(args: argparse.Namespace) -> None:
    from datamodules.bench import bench_index

    rows = bench_index(Path(args.dir), args.videos, args.frames)
    _print_rows(rows, args.format)
    _save(rows, "index", args)


def _data_bench_loader(args: argparse.Namespace) -> None:
    from datamodules.bench import bench_loader

    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    for seq_len in (int(t) for t in args.seq_len.split(",")):
        rows += bench_loader(
            Path(args.root), args.img_size, seq_len, args.batch_size, workers, args.frames
        )
    _print_rows(rows, args.format)
    _save(rows, "loader", args)


def _bench_learning(args: argparse.Namespace) -> None:
    from lightning_modules.bench import bench_learning

    rows = bench_learning(
        args.root,
        args.heads.split(","),
        args.backbone,
        args.seq_len,
        args.img_size,
        args.epochs,
        args.batch_size,
        args.lr,
        args.workers,
        args.seed,
    )
    _print_rows(rows, args.format)
    _save(rows, "learning", args)


def _profile(args: argparse.Namespace) -> None:
    from lightning_modules.efficiency import ModelSpec, profile

    if args.grid:
        from ablations.grid import expand, load_grid

        specs = {}
        for run in expand(load_grid(args.grid)):
            spec = ModelSpec.from_settings(run["settings"].get("model", {}))
            specs.setdefault(spec.key(), spec)  # seeds and learning rates cost the same
        specs = list(specs.values())
    else:
        specs = [
            ModelSpec(
                backbone=args.backbone,
                head=args.head,
                seq_len=args.seq_len,
                img_size=args.img_size,
                tasks=args.tasks,
                head_kwargs=json.loads(args.head_kwargs),
                classifier=args.classifier,
            )
        ]
    rows = []
    for spec in specs:
        rows.append(
            profile(
                spec,
                device=args.device,
                batch=args.batch,
                precision=args.precision,
                threads=args.threads,
                warmup=args.warmup,
                runs=args.runs,
                timing=not args.no_timing,
            )
        )
        if args.grid:
            print(
                f"profiled {spec.backbone}+{spec.head} t{spec.seq_len} r{spec.img_size}",
                file=sys.stderr,
            )
    if args.format == "json":
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=1))
    else:
        _print_rows(rows, args.format)


def _base_settings(cfg: dict, args: argparse.Namespace, synth: bool = True) -> None:
    """``--set model.lr=0.001`` and ``--data.root`` over an ablation's or a sweep's base (the
    keys checked as a file's are), then, with ``--synth-if-missing`` (and ``synth``), the
    synthetic dataset written where the data root does not exist."""
    import yaml

    from ablations.grid import check_overrides, set_path

    if getattr(args, "verbose", False):  # read by every run, in this process and its workers
        os.environ["AFFBENCH_VERBOSE"] = "1"
    sets = (args.set or []) + ([f"data.root={args.data_root}"] if args.data_root else [])
    for a in sets:
        if "=" not in a:
            raise SystemExit(f"affbench: error: --set expects key=value, got {a!r}")
    stage1 = "pretrain" in cfg  # a two-stage grid: pretrain.<setting> sets its stage 1
    keys = [a.partition("=")[0] for a in sets]
    check_overrides(cfg, [k.removeprefix("pretrain.") if stage1 else k for k in keys])
    for a in sets:
        key, _, value = a.partition("=")
        if stage1 and key.startswith("pretrain."):
            set_path(cfg["pretrain"], key.removeprefix("pretrain."), yaml.safe_load(value))
        else:
            set_path(cfg["base"], key, yaml.safe_load(value))
    root = cfg["base"].get("data", {}).get("root", "data/synthetic")
    if synth and args.synth_if_missing and not Path(root).exists():
        from datamodules.synth import generate

        print(f"no data at {root}: writing the synthetic dataset there first")
        generate(root)
    if synth and stage1 and args.synth_if_missing:
        from lightning_modules.pretrain import grid_stage1

        stills = grid_stage1(cfg)["data"]["root"]
        if not Path(stills).exists():
            from datamodules.synth_stills import generate_affectnet

            print(f"no stills at {stills}: writing synthetic still faces there (AffectNet layout)")
            generate_affectnet(stills)


def _with_stage1(cfg: dict, args: argparse.Namespace) -> dict:
    """A file with a ``pretrain:`` section: its stage 1 run (or found, when it ran before)
    and ``base.model.pretrained`` set to its encoder."""
    if "pretrain" not in cfg:
        return cfg
    from ablations.runner import with_stage1
    from lightning_modules.experiment import run_name, wandb_mode
    from lightning_modules.pretrain import pretrain

    cfg, stage1, encoder = with_stage1(cfg, args.results)
    done = Path(encoder).exists()
    print(f"stage 1 ({'done' if done else 'runs first'}): {run_name(stage1)} -> {encoder}")
    pretrain(stage1, Path(args.results) / "pretrain", wandb_mode(args.no_wandb))
    return cfg


def _pretrain(args: argparse.Namespace) -> None:
    import yaml

    from lightning_modules.experiment import wandb_mode
    from lightning_modules.pretrain import grid_stage1, pretrain, stage1_settings

    given = (yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else {}
    # a two-stage grid file: its stage 1, the very one the grid runs (the same key)
    settings = grid_stage1(given) if "pretrain" in given else stage1_settings(given)
    cfg = {"name": "pretrain", "base": settings}
    _base_settings(cfg, args, synth=False)
    root = cfg["base"]["data"]["root"]
    if args.synth_if_missing and not Path(root).exists():
        from datamodules.synth_stills import generate_affectnet

        print(f"no data at {root}: writing synthetic still faces there first (AffectNet layout)")
        generate_affectnet(root)
    row = pretrain(cfg["base"], Path(args.results) / "pretrain", wandb_mode(args.no_wandb))
    print(
        f"stage 1 {row['key']}: val/expr_f1 {row.get('val/expr_f1', float('nan')):.3f}, "
        f"val/va_ccc {row.get('val/va_ccc', float('nan')):.3f}, "
        f"{row.get('train_frames_per_s')} images/s in training\n"
        f"encoder: {row['encoder']}\n"
        f"start from it: --model.pretrained {row['encoder']} (fit), or base.model.pretrained in "
        "a grid or sweep file (a grid's pretrain: section runs this step itself)"
    )


def _features_extract(args: argparse.Namespace) -> None:
    import yaml

    from ablations.features import extract_config

    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    if "space" in raw:
        from sweeps.space import load_sweep

        cfg = load_sweep(args.config)
    else:
        from ablations.grid import load_grid

        cfg = load_grid(args.config)
    _base_settings(cfg, args)
    cfg = _with_stage1(cfg, args)
    rows = extract_config(cfg, progress=not args.no_progress)
    if args.format != "text":
        _print_rows(rows, args.format)


def _features_info(args: argparse.Namespace) -> None:
    from ablations.features import cache_info
    from datamodules.features import default_features_dir

    rows = cache_info(args.dir)
    if not rows:
        print(f"no cached features under {args.dir or default_features_dir()}")
        return
    print(f"cached features under {args.dir or default_features_dir()}:")
    _print_rows(rows, args.format)
    print(f"total {sum(r['size_gb'] for r in rows):.3f} GB")


def _ablate(args: argparse.Namespace) -> None:
    from ablations.grid import expand, load_grid
    from ablations.runner import run_grid
    from lightning_modules.experiment import Interrupted, wandb_mode

    cfg = load_grid(args.config)
    _base_settings(cfg, args, synth=not args.dry_run)
    if args.dry_run:
        print(run_grid(cfg, args.results, dry_run=True).to_markdown(index=False))
        return
    folder = Path(args.results) / cfg["name"]
    try:
        df = run_grid(
            cfg,
            args.results,
            wandb_disabled=args.no_wandb,
            max_runs=args.max_runs,
            retry_failed=args.retry_failed,
            workers=args.workers,
            storage=args.storage,
        )
    except Interrupted as e:
        print(
            f"\n{cfg['name']}: {e.why}; the running combination is recorded as interrupted and "
            + (f"resumes from {e.checkpoint}" if e.checkpoint else "resumes from its checkpoint")
            + " when the same command runs again",
            file=sys.stderr,
        )
        raise SystemExit(128 + e.signum) from None
    if "pretrain" in cfg:  # the keys of the combinations as run: from the stage-1 encoder
        from ablations.runner import with_stage1

        cfg = with_stage1(cfg, args.results)[0]
    keys = {r["key"] for r in expand(cfg)}
    df = df[df["key"].isin(keys)]
    counts = df["status"].value_counts()
    done, failed = int(counts.get("done", 0)), int(counts.get("failed", 0))
    elsewhere = len(keys) - done - failed - int(counts.get("interrupted", 0))
    print(
        f"\n{cfg['name']}: {done} done, {failed} failed"
        + (f", {elsewhere} to go" if elsewhere > 0 else "")
        + f"; results in {folder / 'results.csv'}"
    )
    if (folder / "table.md").exists():
        print((folder / "table.md").read_text())
        print(f"tables: {folder / 'table.md'}, {folder / 'table.tex'}")
        print(f"frontier plot: {folder / 'frontier.png'}")
    mode = wandb_mode(args.no_wandb)
    if mode == "offline":
        runs = folder / "wandb"
        print(f"W&B runs (offline): {runs}; upload them with `wandb sync {runs}/offline-run-*`")
    elif mode != "disabled":
        print("W&B runs: project 'affbench', group " + repr(cfg["name"]))
    if failed:
        for _, row in df[df["status"] == "failed"].iterrows():
            print(f"failed: {row['run']}: {row['error']}", file=sys.stderr)
        print(
            f"{failed} combination(s) failed (errors above and in results.csv); after fixing the "
            "cause, run the same command with --retry-failed",
            file=sys.stderr,
        )
        raise SystemExit(1)


def _sweep(args: argparse.Namespace) -> None:
    import signal

    from lightning_modules.experiment import Interrupted, wandb_mode
    from sweeps.frontier import frontier_table, write_frontier
    from sweeps.runner import budget, failures, run_sweep
    from sweeps.space import check_runnable, load_sweep
    from sweeps.storage import default_storage, shown

    cfg = load_sweep(args.config)
    _base_settings(cfg, args)
    cfg = _with_stage1(cfg, args)  # before the workers: they all start from its encoder
    study = args.study or cfg["name"]
    url = args.storage or default_storage(study, args.studies)
    n_trials = args.n_trials or cfg["n_trials"]
    check_runnable(cfg, args.config)  # a missing data root, unknown heads or backbones: at once
    mode = wandb_mode(args.no_wandb)
    os.environ.setdefault("WANDB_SILENT", "true")  # the trial lines and the table say enough
    out = Path(args.studies) / study
    print(f"study {study!r} in {shown(url)}: {n_trials} trials, {args.workers} worker(s)")
    try:
        st = run_sweep(
            cfg, url, study, n_trials, out, args.workers, args.timeout, mode, args.retry_failed
        )
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the running trials are retried
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(
            f"\n{study}: stopped by {signal.Signals(signum).name}; a running trial is failed as "
            "interrupted and its retry queued: run the same command again to continue",
            file=sys.stderr,
        )
        raise SystemExit(128 + signum) from None
    trials = st.get_trials(deepcopy=False)
    counts = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned")}
    failed = failures(trials)
    retried = sum(t.state.name == "FAIL" for t in trials) - len(failed)
    left = n_trials - budget(trials)["used"]
    print(
        f"\n{study}: {counts['complete']} finished, {counts['pruned']} pruned, {len(failed)} failed"
        + (f" ({retried} more failed or stopped and were retried)" if retried else "")
        + (f", {left} to go (run the same command again)" if left > 0 else "")
    )
    print(frontier_table(st, "md"))
    if counts["complete"]:
        plot = write_frontier(st, out / "frontier.png", mode, wandb_dir=out)
        print(f"frontier plot: {plot}")
    url = shown(url)
    print(f"all trials: affbench frontier --storage {url} --study {study}; optuna-dashboard {url}")
    if failed:  # they keep their places in the budget: say how to give those to retries
        for t in failed:
            error = t.user_attrs.get("error") or "its worker stopped sending heartbeats"
            print(f"failed: trial {t.number}: {error.splitlines()[0]}", file=sys.stderr)
        print(
            f"{len(failed)} trial(s) failed (their errors are in the study, user attribute "
            "'error'); after fixing the cause, run the same command with --retry-failed to run "
            "them again with the same parameters, or with a larger --n-trials for new trials",
            file=sys.stderr,
        )
        raise SystemExit(1)


def _frontier(args: argparse.Namespace) -> None:
    import optuna

    from lightning_modules.experiment import wandb_mode
    from sweeps.frontier import frontier_table, write_frontier
    from sweeps.storage import damage_is_an_error, open_storage, shown

    try:
        with damage_is_an_error(args.storage):
            st = optuna.load_study(study_name=args.study, storage=open_storage(args.storage))
    except KeyError:
        names = optuna.get_all_study_names(open_storage(args.storage))
        raise SystemExit(
            f"affbench: error: no study {args.study!r} in {shown(args.storage)}; it has: "
            + (", ".join(names) or "none")
        ) from None
    with damage_is_an_error(args.storage):
        print(frontier_table(st, args.format))
    if not args.no_plot and any(t.state.name == "COMPLETE" for t in st.get_trials(deepcopy=False)):
        out = Path(args.out or Path(STUDIES) / args.study / "frontier.png")
        mode = wandb_mode(args.no_wandb)
        plot = write_frontier(st, out, mode)
        print(f"frontier plot: {plot}", file=sys.stderr)


def _bench_sweep(args: argparse.Namespace) -> None:
    from sweeps.bench import bench_sweep

    rows = bench_sweep(args.config, args.trials, args.repeats, args.rounds)
    _print_rows(rows, args.format)
    _save(rows, "sweep", args)


def _bench_grid(args: argparse.Namespace) -> None:
    from ablations.bench import bench_grid

    rows = bench_grid(args.config, args.repeats, args.rounds)
    _print_rows(rows, args.format)
    _save(rows, "grid", args)


def _bench_stage1(args: argparse.Namespace) -> None:
    from ablations.bench import bench_stage1

    rows = bench_stage1(args.config, tuple(args.heads.split(",")), tuple(range(args.seeds)),
                        args.stills, args.epochs, recipe=args.recipe)  # fmt: skip
    _print_rows(rows, args.format)
    _save(rows, "stage1", args)


def _bench_stage1_seeds(args: argparse.Namespace) -> None:
    from ablations.seeds_bench import bench_stage1_seeds

    rows = bench_stage1_seeds(args.config, tuple(range(args.seeds)), args.workers)
    for part in dict.fromkeys(r["part"] for r in rows):  # one table per part
        _print_rows([r for r in rows if r["part"] == part], args.format)
    _save(rows, "stage1-seeds", args)


def _bench_features(args: argparse.Namespace) -> None:
    from ablations.features_bench import bench_features

    sizes = tuple(int(s) for s in args.img_size.split(","))
    rows = bench_features(args.root, tuple(args.heads.split(",")), sizes, args.batches,
                          args.frames, args.sweep or None, args.trials, args.results)  # fmt: skip
    for measure in dict.fromkeys(r["measure"] for r in rows):  # one table per measure
        _print_rows([r for r in rows if r["measure"] == measure], args.format)
        print()
    _save(rows, "features", args)


def _column(df, name: str) -> str:
    for c in (name, f"model.{name}", f"data.{name}", f"val/{name}"):
        if c in df.columns:
            return c
    raise SystemExit(
        f"affbench: error: no column {name!r} in the results; columns: {', '.join(df.columns)}"
    )


def _table(args: argparse.Namespace) -> None:
    from ablations.tables import read_results, render

    df = read_results(args.results)
    print(
        render(
            df,
            _column(df, args.rows),
            _column(df, args.cols),
            _column(df, args.metric),
            args.format,
            folder=store if (store := Path(args.results)).is_dir() else store.parent,
        )
    )


def _compare(args: argparse.Namespace) -> None:
    from ablations.compare import compare, render_comparison

    try:
        df = compare(args.a, args.b, args.stage)
    except (KeyError, ValueError) as e:  # no such row, other videos: one line, no traceback
        raise SystemExit(f"affbench: error: {str(e).strip(chr(39))}") from None
    print(render_comparison(df, args.format))


def _bench_efficiency(args: argparse.Namespace) -> None:
    from lightning_modules import efficiency_bench

    rows = getattr(efficiency_bench, args.part)()
    _print_rows(rows, args.format)
    _save(rows, f"efficiency-{args.part}", args)


def _bench_page(args: argparse.Namespace) -> None:
    from affbench.bench_page import page_difference, render_page

    page = render_page(args.results_dir)
    out = Path(args.out)
    if not args.check:
        out.write_text(page)
        print(f"wrote {out} from the CSV files under {args.results_dir}")
        return
    current = out.read_text() if out.exists() else ""
    if current != page:
        diff = page_difference(current, page, out.name) or "(line endings or the last newline)"
        print(diff, file=sys.stderr)
        raise SystemExit(
            f"affbench: error: {out} is not what the CSV files under {args.results_dir} give "
            "(the difference above); run affbench bench-page"
        )
    print(f"{out} is what the CSV files under {args.results_dir} give")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help fills ``{heads}``, ``{backbones}`` and ``{tasks}`` from the
    registries when it is printed (building them imports torch and timm: seconds that the other
    commands do not pay)."""

    def format_help(self) -> str:
        keys = ("{heads}", "{backbones}", "{tasks}")
        marked = [a for a in self._actions if a.help and any(k in a.help for k in keys)]
        if marked:
            from datamodules.tasks import list_tasks
            from lightning_modules.backbone import list_backbones
            from lightning_modules.heads import list_heads

            names = {
                "heads": ", ".join(list_heads()),
                "backbones": ", ".join(list_backbones()) + " (any timm model works)",
                "tasks": ", ".join(list_tasks()),
            }
            for action in marked:
                action.help = action.help.format(**names)
        return super().format_help()


def _save_args(p: argparse.ArgumentParser) -> None:
    """Where a benchmark's figures go (:func:`_save`)."""
    p.add_argument(
        "--results-dir",
        default=BENCH_RESULTS,
        help="writes <dir>/<benchmark>-<machine>.csv, replacing this machine's (%(default)s)",
    )
    p.add_argument("--no-save", action="store_true", help="print the table only")


def _settings_args(p: argparse.ArgumentParser, data: str, example: str) -> None:
    """The options every command that trains from a settings file takes (what
    :func:`_base_settings` reads): the data root, ``--set``, W&B off, synthetic data if absent."""
    p.add_argument("--data.root", dest="data_root", default=None, help=data)
    p.add_argument("--set", action="append", help=f"override a base setting: {example}")
    p.add_argument("--no-wandb", action="store_true", help="no W&B runs at all")
    p.add_argument(
        "--synth-if-missing", action="store_true", help="write the synthetic data if absent"
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="Lightning's and W&B's own lines too"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="affbench",
        description=__doc__,
        epilog="Training: affbench fit|validate|test|predict --help (a LightningCLI)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate, inspect and benchmark ABAW-format data")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("synth", help="write a synthetic dataset (ABAW or AffectNet layout)")
    p.add_argument(
        "--layout",
        choices=["abaw", "affectnet"],
        default="abaw",
        help="abaw: videos (Aff-Wild2); affectnet: still faces in AffectNet's file lists",
    )
    p.add_argument(
        "--out", default=None, help="default: data/synthetic, or data/affectnet_synth (affectnet)"
    )
    p.add_argument("--videos", type=int, default=64)
    p.add_argument(
        "--frames", type=int, default=140, help="mean frames per video (each varies +-30%%)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes rendering videos")
    p.add_argument("--images", type=int, default=2400, help="affectnet: training images")
    p.add_argument("--val-images", type=int, default=300, help="affectnet: validation images")
    p.set_defaults(func=_data_synth)

    p = dsub.add_parser("info", help="per task and split: videos, frames, labels")
    p.add_argument("root")
    p.add_argument("--annotations", default=None, help="annotations folder name (found if omitted)")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.set_defaults(func=_data_info)

    fmt = dict(choices=["text", "md", "csv"], default="text")
    p = dsub.add_parser("bench-index", help="cold/warm index build on a generated annotation tree")
    p.add_argument("--dir", default="bench/index_tree")
    p.add_argument("--videos", type=int, default=600)
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_data_bench_index)

    p = dsub.add_parser("bench-loader", help="loader frames/s against plain PIL decoding")
    p.add_argument("root")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--seq-len", default="8,32", help="clip lengths T, comma-separated")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--frames", type=int, default=4000, help="frames per measurement")
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_data_bench_loader)

    p = sub.add_parser("profile", help="params, MACs/FLOPs, latency, throughput, streaming, memory")
    p.add_argument("--backbone", default="mobilenetv4_conv_small", help="{backbones}")
    p.add_argument("--head", default="mixer3", help="{heads}, or none (the bare timm model)")
    p.add_argument("--head-kwargs", default="{}", help="head settings as JSON")
    p.add_argument(
        "--classifier", type=int, default=1000, help="with --head none: classes (0: none)"
    )
    p.add_argument("--tasks", default="va", help="{tasks} (comma-separated)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8, help="clips per batch for frames/s")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--no-timing", action="store_true", help="params and MACs only")
    p.add_argument("--grid", default=None, help="an ablation YAML: profile each model of its grid")
    p.add_argument("--format", choices=["text", "md", "csv", "json"], default="md")
    p.set_defaults(func=_profile)

    p = sub.add_parser("ablate", help="run an ablation grid: train, score, profile, log, tabulate")
    p.add_argument("config", help="ablations/configs/<name>.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the combinations and their cost")
    p.add_argument("--results", default=RESULTS)
    _settings_args(p, "the data (e.g. Aff-Wild2)", "model.lr=0.0005")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    p.add_argument("--retry-failed", action="store_true", help="run failed combinations again")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (GPU i mod n)")
    p.add_argument(
        "--storage",
        default=None,
        help="the grid's study: sqlite:///F (default <results>/<name>/grid.db), "
        "postgresql://... (several machines), journal:///F",
    )
    p.set_defaults(func=_ablate)

    p = sub.add_parser("pretrain", help="stage 1: the encoder on still faces (AffectNet layout)")
    p.add_argument(
        "config",
        nargs="?",
        help="stage-1 settings (model, data, trainer, seed), or a grid file with a pretrain: part",
    )
    p.add_argument("--results", default=RESULTS, help="writes <results>/pretrain/<key>/")
    _settings_args(p, "the stills' folder", "model.backbone=resnet18")
    p.set_defaults(func=_pretrain)

    feats = sub.add_parser("features", help="the feature cache of frozen encoders")
    fsub = feats.add_subparsers(dest="features_command", required=True)
    p = fsub.add_parser(
        "extract", help="cache the features of a grid's or a sweep's frozen encoders"
    )
    p.add_argument("config", help="a grid or sweep file whose runs set model.freeze: all")
    p.add_argument("--results", default=RESULTS, help="where a pretrain: section's stage 1 is")
    _settings_args(p, "the data (e.g. Aff-Wild2)", "model.img_size=224")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--format", choices=["text", "md", "csv"], default="text")
    p.set_defaults(func=_features_extract)
    p = fsub.add_parser("info", help="what is cached: encoder, parts, videos, frames, size")
    p.add_argument("--dir", default=None, help="default: $AFFBENCH_CACHE/features")
    p.add_argument("--format", choices=["text", "md", "csv"], default="text")
    p.set_defaults(func=_features_info)

    p = sub.add_parser("table", help="a paper table from a results store")
    p.add_argument("results", help="ablations/results/<name> (or its results.csv)")
    p.add_argument("--rows", default="head")
    p.add_argument("--cols", default="backbone")
    p.add_argument("--metric", default="val/score")
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.set_defaults(func=_table)

    p = sub.add_parser(
        "compare",
        help="two result rows or two grids: differences, 95 % intervals, paired p-values",
        description="A and B: a results store (every row) or STORE:ROW (one row: its run name "
        "without the seed, a head such as gru, or a run key). Two stores are compared row by "
        "row; a row against each row of the other side.",
    )
    p.add_argument("a", help="ablations/results/<name>[:<row>]")
    p.add_argument("b", help="ablations/results/<name>[:<row>]")
    p.add_argument("--stage", choices=["val", "test"], default="val")
    p.add_argument("--format", choices=["md", "csv"], default="md")
    p.set_defaults(func=_compare)

    p = sub.add_parser("sweep", help="an Optuna sweep: accuracy against FLOPs, resumable")
    p.add_argument("config", help="sweeps/configs/<name>.yaml")
    p.add_argument("--n-trials", type=int, default=None, help="the study's total trial budget")
    p.add_argument("--timeout", type=float, default=None, help="no new trial after S seconds")
    p.add_argument("--storage", default=None, help="sqlite:///F, postgresql://..., journal:///F")
    p.add_argument("--study", default=None, help="study name (default: the file's name)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--studies", default=STUDIES, help="SQLite files, W&B runs, checkpoints")
    p.add_argument("--results", default=RESULTS, help="a pretrain: section's stage 1 is there")
    _settings_args(p, "the data (e.g. Aff-Wild2)", "data.batch_size=4")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run the failed trials again (same parameters) in their places in the budget",
    )
    p.set_defaults(func=_sweep)

    p = sub.add_parser("frontier", help="a study's Pareto front: table, plot, W&B summary run")
    p.add_argument("--storage", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.add_argument("--out", default=None, help="the plot (default sweeps/studies/<study>/...)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-wandb", action="store_true", help="no W&B summary run")
    p.set_defaults(func=_frontier)

    p = sub.add_parser("bench-efficiency", help="the cost tables: zoo, growth, overhead")
    p.add_argument("part", choices=["zoo", "growth", "overhead"])
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_bench_efficiency)

    p = sub.add_parser("bench-sweep", help="trials/hour with 1 and 2 workers; sweep overhead")
    p.add_argument("--config", default="sweeps/configs/quick.yaml")
    p.add_argument("--trials", type=int, default=8, help="trials per throughput run")
    p.add_argument("--repeats", type=int, default=4, help="runs per overhead round and path")
    p.add_argument("--rounds", type=int, default=3, help="alternated overhead rounds")
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_bench_sweep)

    p = sub.add_parser("bench-grid", help="a grid's wall clock with 1 and 2 workers; overhead")
    p.add_argument("--config", default="ablations/configs/quickstart.yaml")
    p.add_argument("--repeats", type=int, default=3, help="combinations per overhead round")
    p.add_argument("--rounds", type=int, default=2, help="alternated overhead rounds")
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_bench_grid)

    p = sub.add_parser("bench-stage1", help="heads from random weights against from stage 1")
    p.add_argument("config", nargs="?", default="ablations/configs/quickstart.yaml")
    p.add_argument("--heads", default="frame,gru,mixer3", help="comma-separated: {heads}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--stills", default="data/affectnet_synth", help="written there if absent")
    p.add_argument("--epochs", type=int, default=10, help="stage 1's epochs")
    p.add_argument(
        "--recipe", default="ablations/configs/frozen_heads.yaml", help="stage 1's pretrain: from"
    )
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_bench_stage1)

    p = sub.add_parser(
        "bench-stage1-seeds", help="the main job's grid on the encoders of several stage-1 seeds"
    )
    p.add_argument("--config", default="ablations/configs/frozen_heads.yaml")
    p.add_argument("--seeds", type=int, default=3, help="stage-1 seeds 0..N-1")
    p.add_argument("--workers", type=int, default=2, help="the grids' workers")
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_bench_stage1_seeds)

    p = sub.add_parser("bench-features", help="cached features against end to end; cache size")
    p.add_argument("--root", default="data/synthetic")
    p.add_argument("--heads", default="gru,mixer3", help="comma-separated: {heads}")
    p.add_argument("--img-size", default="112,224", help="input sizes, comma-separated")
    p.add_argument("--batches", type=int, default=20, help="training steps per measurement")
    p.add_argument("--frames", type=int, default=2000, help="frames extracted for frames/s")
    p.add_argument("--sweep", default="sweeps/configs/frozen_heads.yaml", help="'' to skip")
    p.add_argument("--trials", type=int, default=4, help="trials per side of the sweep")
    p.add_argument("--results", default=RESULTS, help="where the sweep's stage 1 is")
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_bench_features)

    p = sub.add_parser("bench-learning", help="train heads for the same budget, score val and test")
    p.add_argument("--root", default="data/synthetic")
    p.add_argument("--heads", default="frame,gru,mixer3", help="comma-separated: {heads}")
    p.add_argument("--backbone", default="mobilenetv4_conv_small", help="{backbones}")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", **fmt)
    _save_args(p)
    p.set_defaults(func=_bench_learning)

    p = sub.add_parser("bench-page", help="BENCHMARKS.md from the benchmarks' CSV files")
    p.add_argument("--results-dir", default=BENCH_RESULTS, help="the CSV files (%(default)s)")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 where the page differs"
    )
    p.set_defaults(func=_bench_page)
    return parser


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from core.errors import ConfigError, DataError
    from datamodules.annotations import AnnotationError

    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:  # a LightningCLI of its own
            from lightning_modules.cli import run

            run(argv)
        else:
            args = build_parser().parse_args(argv)
            args.command_line = shlex.join(["affbench", *argv])  # written beside the figures
            args.func(args)
    except (AnnotationError, ConfigError, DataError, FileNotFoundError, FileExistsError) as e:
        # bad input: one clear line naming the file (and line), no traceback
        print(f"affbench: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
