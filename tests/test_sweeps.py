import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import TINY, tiny_base, wait_for
from optuna.distributions import CategoricalDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryHeartbeat
from optuna.trial import TrialState, create_trial
from PIL import Image
from wandb_files import read_offline_run

from affbench.cli import main
from core.errors import ConfigError
from lightning_modules.efficiency import ModelSpec, static_costs
from sweeps import runner
from sweeps.frontier import frontier_table, trials_frame, write_frontier
from sweeps.runner import budget, create_study, run_sweep
from sweeps.space import load_sweep, suggest
from sweeps.storage import open_storage

REPO = Path(__file__).resolve().parents[1]


def _sweep_cfg(root, **top) -> dict:
    return {
        "name": "s",
        "base": tiny_base(root),
        "heartbeat": {"interval": 1, "grace": 3},
        "space": {
            "model.head": {"choices": ["frame", "gru"]},
            "model.lr": {"float": [1e-4, 1e-2], "log": True},
            "gru.hidden": {
                "path": "model.head_kwargs.hidden",
                "choices": [16, 32],
                "when": {"model.head": "gru"},
            },
        },
        **top,
    }


def _write(tmp_path, cfg: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _load(tmp_path, cfg: dict) -> dict:
    return load_sweep(_write(tmp_path, cfg))


def test_sweep_file_errors_name_the_line(tmp_path, capsys):
    base = "base:\n  model: {head: frame}\n"
    cases = {
        "space:\n  model.lr: {float: [0.1, 0.01]}\n": (4, "low < high"),
        "space:\n  model.head: {choices: [a], int: [1, 2]}\n": (4, "exactly one of"),
        "space:\n  model.dropout: {choices: [0.1]}\n  model.lr: {choices: [1], when: {c: 1}}\n": (
            5,
            "not an earlier",
        ),
        "space:\n  model.dropout: {choices: [0.1]}\nsurprise: 1\n": (5, "unknown key 'surprise'"),
        "mode: multi\npruner: median\nspace:\n  model.dropout: {choices: [0.1]}\n": (
            4,
            "cannot prune multi",
        ),
        "pruner: nope\nmode: single\nspace:\n  model.dropout: {choices: [0.1]}\n": (
            3,
            "unknown pruner",
        ),
        "mode: single\nlatency_objective: true\nspace:\n  model.dropout: {choices: [0.1]}\n": (
            4,
            "needs mode",
        ),
        "metric: val/va_cc\nspace:\n  model.dropout: {choices: [0.1]}\n": (
            3,
            "'val/va_cc' is not a measure",
        ),
        # a typo in the base or a space entry's path would be ignored: the defaults would train
        "  trainr: {max_epochs: 1}\nspace:\n  model.lr: {choices: [1]}\n": (3, "'trainr'"),
        "  data: {batch_sise: 2}\nspace:\n  model.lr: {choices: [1]}\n": (3, "batch_size"),
        "space:\n  model.lrr: {choices: [1]}\n": (4, "'lrr' \\(did you mean lr"),
        "space:\n  gh: {path: model.head_kwarg.h, choices: [1]}\n": (4, "goes nowhere"),
    }
    for body, (line, msg) in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(base + body)
        with pytest.raises(ConfigError, match=rf"bad\.yaml:{line}: .*{msg}"):
            load_sweep(path)
    path.write_text("base:\n  trainer: {devices: 4}\nspace:\n  model.dropout: {choices: [0.1]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: a sweep trial trains on one device"):
        load_sweep(path)
    # the CLI refuses pruning a multi-objective sweep with one clear line, and runs nothing
    path.write_text(
        base + "mode: multi\npruner: median\nspace:\n  model.dropout: {choices: [0.1]}\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(path), "--studies", str(tmp_path / "studies")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("affbench: error:") and "cannot prune multi-objective" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "studies").exists()


def test_shipped_sweeps_load():
    quick = load_sweep("sweeps/configs/quick.yaml")
    big = load_sweep("sweeps/configs/frontier.yaml")
    assert quick["mode"] == "multi" and big["latency_objective"]
    assert "model.backbone" in big["space"] and len(big["space"]["model.backbone"]["choices"]) >= 5


def test_frontier_space_builds_every_head():
    """Every head's settings in the shipped full space are ones the head accepts (built with a
    tiny backbone at 112 px, so the test stays fast)."""
    cfg = load_sweep("sweeps/configs/frontier.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for head in cfg["space"]["model.head"]["choices"]:
        for _ in range(3):
            study.enqueue_trial({"model.head": head})
            trial = study.ask()
            model = suggest(trial, cfg)["model"]
            study.tell(trial, 0.0)
            spec = ModelSpec.from_settings({**model, "backbone": TINY, "img_size": 112})
            assert spec.build().hparams.head == head


def test_conditional_space(tmp_path):
    cfg = _load(tmp_path, _sweep_cfg("data"))
    fixed = optuna.trial.FixedTrial({"model.head": "gru", "model.lr": 1e-3, "gru.hidden": 32})
    s = suggest(fixed, cfg)
    assert s["model"]["head"] == "gru" and s["model"]["head_kwargs"] == {"hidden": 32}
    assert s["model"]["lr"] == 1e-3 and cfg["base"]["model"].get("head_kwargs") is None
    s = suggest(optuna.trial.FixedTrial({"model.head": "frame", "model.lr": 1e-3}), cfg)
    assert "head_kwargs" not in s["model"]
    # sampled for real: the GRU's setting exists in GRU trials only, within its choices
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(24):
        trial = study.ask()
        suggest(trial, cfg)
        study.tell(trial, [trial.params["model.lr"], 0.0])
    for t in study.trials:
        assert ("gru.hidden" in t.params) == (t.params["model.head"] == "gru")
        assert 1e-4 <= t.params["model.lr"] <= 1e-2
    assert {t.params["model.head"] for t in study.trials} == {"frame", "gru"}


def _frozen(number, state, retry_history=None):
    attrs = (
        {"retry_history": retry_history, "failed_trial": retry_history[0]} if retry_history else {}
    )
    t = create_trial(state=state, values=[1.0] if state == TrialState.COMPLETE else None,
                     system_attrs=attrs)  # fmt: skip
    t.number = number
    return t


def test_budget_counts_places():
    trials = [
        _frozen(0, TrialState.COMPLETE),
        _frozen(1, TrialState.FAIL),  # killed; retried as 4
        _frozen(2, TrialState.FAIL),  # raised; not retried: it keeps its place
        _frozen(3, TrialState.PRUNED),
        _frozen(4, TrialState.RUNNING, retry_history=[1]),
        _frozen(5, TrialState.WAITING),
    ]
    assert budget(trials) == {"used": 5, "running": 1, "waiting": 1}


def _known_study(storage=None, name="known") -> optuna.Study:
    """Five finished trials with known (score, GMACs): the front is 0, 2, 3."""
    study = optuna.create_study(
        storage=storage, study_name=name, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["val/score", "gmacs_per_frame"])
    dist = {"model.head": CategoricalDistribution(["frame", "gru", "mixer3_frame"])}
    for score, gmacs, head in (
        (0.50, 0.05, "frame"),  # front: the cheapest
        (0.45, 0.06, "frame"),  # beaten by 0
        (0.60, 0.07, "gru"),  # front
        (0.70, 0.20, "mixer3_frame"),  # front: the best
        (0.55, 0.20, "gru"),  # beaten by 3
    ):
        study.add_trial(
            create_trial(
                values=[score, gmacs],
                params={"model.head": head},
                distributions=dist,
                user_attrs={"gmacs_per_frame": gmacs, "params_total_m": 10 * gmacs},
            )
        )
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"error": "boom"}))
    return study


def test_frontier_lists_exactly_the_pareto_set(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    study = _known_study(storage)
    assert {t.number for t in study.best_trials} == {0, 2, 3}
    df = trials_frame(study)
    assert list(df["trial"][df["front"]]) == [0, 2, 3]
    csv = pd.read_csv(pd.io.common.StringIO(frontier_table(study, "csv")))
    assert list(csv["trial"]) == [0, 2, 3]  # cheapest first
    assert list(csv["val/score"]) == [0.50, 0.60, 0.70]
    assert list(csv["GMACs / frame"]) == [0.05, 0.07, 0.20]
    assert list(csv["head"]) == ["frame", "gru", "mixer3_frame"]
    md = frontier_table(study, "md")
    assert md.count("\n|") == 4  # header rule + three rows
    tex = frontier_table(study, "latex")
    rows = [line.split(" & ")[0] for line in tex.splitlines() if line.endswith("\\\\")]
    assert "\\begin{table" in tex and rows[-3:] == ["0", "2", "3"] and len(rows) == 4
    no_label = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("\\label"))
    assert re.search(r"(?<!\\)_", no_label) is None and "mixer3\\_frame" in tex  # compiles
    png = write_frontier(study, tmp_path / "f.png")
    Image.open(png).verify()

    # the same through the CLI, reading the storage
    main(["frontier", "--storage", storage, "--study", "known", "--format", "csv",
          "--out", str(tmp_path / "cli.png"), "--no-wandb"])  # fmt: skip
    out = capsys.readouterr().out
    assert pd.read_csv(pd.io.common.StringIO(out))["trial"].tolist() == [0, 2, 3]
    with pytest.raises(SystemExit, match="no study 'nope'.*known"):
        main(["frontier", "--storage", storage, "--study", "nope"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # an unreachable server: one line, the password hidden
        main(["frontier", "--storage", "postgresql://me:secret@127.0.0.1:1/db", "--study", "x"])
    err = capsys.readouterr().err
    assert "cannot open storage postgresql://me:***@127.0.0.1:1/db" in err and "secret" not in err

    # single objective: the front is taken on (measure, GMACs per frame)
    single = optuna.create_study(study_name="one", direction="maximize")
    for score, gmacs in ((0.5, 0.05), (0.4, 0.06), (0.7, 0.2)):
        single.add_trial(create_trial(value=score, user_attrs={"gmacs_per_frame": gmacs}))
    single.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"gmacs_per_frame": 0.01}))
    assert list(trials_frame(single).query("front")["trial"]) == [0, 2]


def test_study_opens_in_optuna_dashboard(tmp_path):
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    storage = f"sqlite:///{tmp_path / 'k.db'}"
    _known_study(storage)
    env = {"PATH_INFO": "/api/studies"}
    setup_testing_defaults(env)
    status = []
    body = b"".join(wsgi(storage)(env, lambda s, h, *exc: status.append(s)))
    studies = json.loads(body)["study_summaries"]
    assert status[0].startswith("200") and [s["study_name"] for s in studies] == ["known"]


def _trials(url, study, missing_ok=False):
    try:
        return optuna.load_study(study_name=study, storage=url).get_trials()
    except KeyError:  # not created yet
        if missing_ok:
            return []
        raise


@pytest.mark.slow
def test_budget_pruning_and_failures_single_objective(synth_root, tmp_path):
    cfg = _sweep_cfg(
        synth_root,
        mode="single",
        pruner={"name": "threshold", "lower": 2.0},  # any trained trial is pruned at epoch 0
        max_gmacs_per_frame=0.03,
    )
    cfg["space"] = {
        "model.backbone": {"choices": [TINY, "mobilenetv4_conv_small"]},  # 0.02 / 0.05 GMACs
        "model.seq_len": {"choices": [8, 6]},
        "model.head": {"choices": ["mixer1"]},  # needs seq_len % 4 == 0: T=6 fails
    }
    cfg = _load(tmp_path, cfg)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = create_study(cfg, url, "s")
    for backbone in (TINY, "mobilenetv4_conv_small"):  # each combination once, queued
        for t in (8, 6):
            study.enqueue_trial({"model.backbone": backbone, "model.seq_len": t})
    run_sweep(cfg, url, "s", 4, tmp_path / "out", wandb_mode="disabled")
    trials = _trials(url, "s")
    assert len({(t.params["model.backbone"], t.params["model.seq_len"]) for t in trials}) == 4
    for t in trials:
        big = t.params["model.backbone"] != TINY
        if t.params["model.seq_len"] == 8:  # the efficiency code's figures for the trial's model
            spec = ModelSpec(t.params["model.backbone"], "mixer1", 8, 112)
            assert t.user_attrs["gmacs_per_frame"] == static_costs(spec)["gmacs_per_frame"]
        if t.params["model.seq_len"] == 6:  # the model cannot be built: failed, recorded
            assert t.state == TrialState.FAIL
            assert "not divisible by the tubelet length" in t.user_attrs["error"]
        elif big:  # over budget: not trained
            assert t.state == TrialState.PRUNED and t.user_attrs["over_budget"]
            assert "train_s" not in t.user_attrs and not t.intermediate_values
        else:  # trained, then pruned by the Lightning callback after its first validation
            assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [0]
            assert "pruned at epoch 0" in t.user_attrs["pruned"]


@pytest.mark.slow
def test_nan_loss_fails_the_trial_and_the_sweep_goes_on(synth_root, tmp_path):
    cfg = _sweep_cfg(synth_root)
    cfg["space"] = {"model.lr": {"choices": [1e30, 1e-3]}, "model.head": {"choices": ["frame"]}}
    cfg = _load(tmp_path, cfg)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = create_study(cfg, url, "s")
    study.enqueue_trial({"model.lr": 1e30})  # weights blow up: the loss turns NaN
    study.enqueue_trial({"model.lr": 1e-3})
    run_sweep(cfg, url, "s", 2, tmp_path / "out", wandb_mode="disabled")
    first, second = _trials(url, "s")
    assert first.state == TrialState.FAIL
    assert first.user_attrs["error"].startswith("FloatingPointError: loss is nan at step")
    assert "training_step" in first.user_attrs["traceback"]
    assert second.state == TrialState.COMPLETE and len(second.values) == 2


@pytest.mark.slow
def test_journal_file_storage(synth_root, tmp_path):
    cfg = _load(tmp_path, _sweep_cfg(synth_root))
    url = f"journal:///{tmp_path / 'shared' / 's.log'}"
    run_sweep(cfg, url, "s", 2, tmp_path / "out", wandb_mode="disabled")
    run_sweep(cfg, url, "s", 3, tmp_path / "out", wandb_mode="disabled")  # a larger budget
    trials = _trials(open_storage(url), "s")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert (tmp_path / "shared" / "s.log.budget-lock").exists()  # the budget lock beside it


def _sweep_cmd(path, *args) -> list[str]:
    return [sys.executable, "-m", "affbench.cli", "sweep", str(path), *args]


def _env(tmp_path) -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


def _start(cmd: list[str], tmp_path: Path, log: str) -> subprocess.Popen:
    """The command in the background, its output to a file (a pipe nobody reads while the test
    polls would fill up and stall it)."""
    with open(tmp_path / log, "w") as f:
        return subprocess.Popen(cmd, env=_env(tmp_path), stdout=f, stderr=subprocess.STDOUT)


def _has_trials(db: Path) -> bool:
    """Whether a sweep has created a trial in the SQLite file, read without Optuna: a poller that
    opens the storage while the sweep sets up the new file races it (both stamp the schema
    version, and one fails)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            return c.execute("SELECT count(*) FROM trials").fetchone()[0] > 0
    except sqlite3.Error:  # no file or no table yet
        return False


def _check_wandb_runs(folder: Path, trials, study: str = "s") -> None:
    """Every finished trial has its W&B run with its objectives in the summary."""
    names, dirs = [], {}
    for d in folder.glob("wandb/offline-run-*"):
        r = read_offline_run(d, wait=None)  # a killed worker's run has no end
        if "name" in r:  # and may end before its first record
            names.append(r["name"])
            dirs[r["name"]] = d
    assert len(names) == len(set(names))  # one run per trial, none twice
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        r = read_offline_run(dirs[t.user_attrs["run"]])  # a finished trial's run: to its end
        assert r["group"] == study and r["config"]["trial"] == t.number
        assert r["summary"]["val/score"] == pytest.approx(t.values[0], abs=1e-6)
        assert r["summary"]["gmacs_per_frame"] == pytest.approx(t.values[1])
        assert r["config"]["model"]["head"] == t.params["model.head"]  # nested, as settings
        assert r["config"]["params"] == t.params and "head" not in r["config"]


@pytest.mark.slow
def test_two_workers_on_postgres_share_the_budget(synth_root, tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _load(tmp_path, _sweep_cfg(synth_root))
    run_sweep(cfg, postgres_url, "s", 5, tmp_path / "out", workers=2, wandb_mode="offline")
    trials = _trials(postgres_url, "s")
    assert len(trials) == 5 and {t.number for t in trials} == set(range(5))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    _check_wandb_runs(tmp_path / "out", trials)
    # the same command again: the budget is spent, nothing runs
    run_sweep(cfg, postgres_url, "s", 5, tmp_path / "out", workers=2, wandb_mode="offline")
    assert len(_trials(postgres_url, "s")) == 5


@pytest.mark.slow
def test_killed_worker_trial_is_retried(synth_root, tmp_path, postgres_url):
    cfg = _sweep_cfg(synth_root)
    cfg["base"]["trainer"]["limit_train_batches"] = 6  # long enough to be killed mid-trial
    path = _write(tmp_path, cfg)
    study = "killed"
    args = ["--storage", postgres_url, "--study", study, "--n-trials", "4", "--workers", "2"]
    proc = _start(
        _sweep_cmd(path, *args, "--studies", str(tmp_path / "studies")), tmp_path, "killed.log"
    )
    try:
        victim = wait_for(
            lambda: next(
                (
                    t
                    for t in _trials(postgres_url, study, missing_ok=True)
                    if t.state == TrialState.RUNNING and "worker" in t.user_attrs
                ),
                None,
            ),
            300,
            "a running trial",
            proc,
            tmp_path / "killed.log",
        )
        pid = int(victim.user_attrs["worker"].split(":")[1])
        os.kill(pid, signal.SIGKILL)  # mid-trial: the attribute is set before its training
        proc.wait(timeout=300)
    finally:
        proc.kill()
    out = (tmp_path / "killed.log").read_text()
    assert proc.returncode == 0, out
    trials = _trials(postgres_url, study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 4 and len(failed) == 1, out
    assert failed[0].user_attrs["worker"].endswith(f":{pid}")  # the killed worker's trial
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number)
    assert retry.state == TrialState.COMPLETE and retry.params == failed[0].params
    assert not retry.user_attrs["worker"].endswith(f":{pid}")
    assert "signal 9" in out
    _check_wandb_runs(tmp_path / "studies" / study, trials, study)


@pytest.mark.slow
def test_interrupted_study_resumes_to_its_budget(synth_root, tmp_path):
    path = _write(tmp_path, _sweep_cfg(synth_root))
    db = tmp_path / "studies" / "s.db"
    cmd = _sweep_cmd(path, "--n-trials", "4", "--studies", str(tmp_path / "studies"))
    proc = _start(cmd, tmp_path, "first.log")
    url = f"sqlite:///{db}"

    def trial_1_or_2_running():  # trial 0 done, and trials to spare after the running one
        trials = _trials(url, "s") if _has_trials(db) else []
        return any(t.state == TrialState.RUNNING and t.number in (1, 2) for t in trials)

    try:
        wait_for(trial_1_or_2_running, 300, "trial 1 or 2 running", proc, tmp_path / "first.log")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    log = (tmp_path / "first.log").read_text()
    assert proc.returncode == 130, log  # 128 + SIGINT
    assert "stopped by SIGINT" in log and "Traceback" not in log
    stopped = _trials(url, "s")
    assert not [t for t in stopped if t.state == TrialState.RUNNING]
    interrupted = [t for t in stopped if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["error"] == "interrupted"
    assert interrupted[0].number >= 1  # the running trial, or the next one if it had just ended
    k = sum(t.state == TrialState.COMPLETE for t in stopped)
    assert 1 <= k < 4
    # the same command again continues to 4 finished trials, the interrupted one retried
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _trials(url, "s")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == interrupted[0].number)
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted[0].params
    assert "4 finished, 0 pruned, 0 failed (1 more failed or stopped and were retried)" in (
        done.stdout
    )
    assert (tmp_path / "studies" / "s" / "frontier.png").exists()
    _check_wandb_runs(tmp_path / "studies" / "s", trials)


def test_sweep_refuses_missing_data_and_unknown_names_at_once(tmp_path, capsys):
    """Every head and backbone the sweep can take, and the data root, are checked before any
    trial: all the problems in one line, and no study."""
    cfg = _sweep_cfg(tmp_path / "no-data", n_trials=1)
    cfg["base"]["model"]["backbone"] = "not_a_timm_model"
    cfg["space"]["model.head"]["choices"] = ["frame", "gruu"]
    cfg["space"]["arch"] = {"path": "model.backbone", "choices": [TINY, "resnet_nope"]}
    path = _write(tmp_path, cfg)
    studies = tmp_path / "studies"
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(path), "--studies", str(studies), "--no-wandb"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"affbench: error: {path}:"), err
    assert f"data root {tmp_path / 'no-data'} does not exist" in err
    assert "unknown head(s) 'gruu' (heads: frame," in err
    assert "unknown backbone(s) 'not_a_timm_model', 'resnet_nope'" in err
    assert not list(studies.glob("*.db"))


def test_a_signal_between_ask_and_the_trial_fails_that_trial(tmp_path, monkeypatch):
    """Ctrl-C right after ``ask`` (before the trial's try): the trial is failed as interrupted
    and retried, not left running until the heartbeat's grace period."""
    cfg = _load(tmp_path, _sweep_cfg("data"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_study(cfg, url, "s")
    ask = optuna.study.Study.ask
    before = signal.getsignal(signal.SIGINT)

    def ask_then_ctrl_c(self, *args, **kw):
        trial = ask(self, *args, **kw)
        signal.raise_signal(signal.SIGINT)  # its Python handler has run when this returns
        return trial

    attempted = []
    monkeypatch.setattr(optuna.study.Study, "ask", ask_then_ctrl_c)
    monkeypatch.setattr(runner, "_attempt", lambda *a: attempted.append(a))
    with pytest.raises(KeyboardInterrupt) as e:
        runner.work(cfg, url, "s", 3, tmp_path / "out", wandb_mode="disabled")
    trials = _trials(url, "s")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # none running
    assert trials[0].user_attrs["error"] == "interrupted"
    assert trials[1].system_attrs["failed_trial"] == 0
    assert getattr(e.value, "signum", None) == signal.SIGINT
    assert not attempted  # the trial never started
    assert signal.getsignal(signal.SIGINT) is before  # restored (SIG_IGN under a background job)


def test_waiting_for_a_dead_workers_trial_says_so(tmp_path, monkeypatch, capsys):
    """A full budget and another worker's running trial with a fresh heartbeat but no process:
    the worker says once what it waits for and its grace period; after the grace period
    the trial is failed and its retry runs here."""
    cfg = _load(tmp_path, _sweep_cfg("data"))  # heartbeat: interval 1 s, grace 3 s
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = create_study(cfg, url, "s")
    ghost = study.ask()
    suggest(ghost, cfg)
    ghost.set_user_attr("worker", "elsewhere:4242")
    open_storage(url, cfg["heartbeat"]).record_heartbeat(ghost._trial_id)

    def attempt(study, trial, cfg, out, wandb_mode):  # no training: the waiting is tested here
        suggest(trial, cfg)
        return TrialState.COMPLETE, [0.5, 0.01]

    monkeypatch.setattr(runner, "_attempt", attempt)
    assert runner.work(cfg, url, "s", 1, tmp_path / "out", wandb_mode="disabled") == 1
    out = capsys.readouterr().out
    said = [ln for ln in out.splitlines() if "waiting for" in ln]
    assert len(said) == 1, said  # once: what it waits for did not change
    m = re.search(r"waiting for trial 0 on elsewhere:4242 \(last heartbeat (\d+) s ago\)",
                  said[0])  # fmt: skip
    assert m and int(m[1]) <= 3, said[0]
    assert "a trial whose heartbeat stops for 3 s is retried here" in said[0]
    first, retry = _trials(url, "s")
    assert first.state == TrialState.FAIL and first.user_attrs["worker"] == "elsewhere:4242"
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == 0
    # the retry ran here: this process printed its line (captured from this process only)
    assert retry.params == first.params and "[1/1 done] trial 1:" in out


def _damaged_study(path: Path) -> None:
    """A valid SQLite study whose bytes in the middle were overwritten."""
    study = optuna.create_study(
        storage=f"sqlite:///{path}", study_name="s", directions=["maximize", "minimize"]
    )
    for i in range(30):
        study.add_trial(create_trial(values=[i, i], user_attrs={"note": "x" * 200}))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 8192)
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):  # damaged, as meant
        sqlite3.connect(path).execute("PRAGMA quick_check").fetchall()


@pytest.mark.slow
def test_damaged_study_database_is_one_line(synth_root, tmp_path):
    db = tmp_path / "damaged.db"
    _damaged_study(db)
    url = f"sqlite:///{db}"
    path = _write(tmp_path, _sweep_cfg(synth_root))
    for cmd in (
        _sweep_cmd(path, "--storage", url, "--no-wandb"),
        [sys.executable, "-m", "affbench.cli", "frontier", "--storage", url, "--study", "s"],
    ):
        r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"affbench: error: the study database {db} is damaged")


@pytest.mark.slow
def test_failed_trials_fail_the_sweep_and_retry_failed_reruns_them(synth_root, tmp_path, capsys):
    cfg = _sweep_cfg(synth_root, n_trials=2)
    cfg["base"]["trainer"]["precision"] = "bogus"  # every trial raises when it builds its trainer
    path = _write(tmp_path, cfg)
    cmd = ["sweep", str(path), "--studies", str(tmp_path / "studies"), "--no-wandb"]
    url = f"sqlite:///{tmp_path / 'studies' / 's.db'}"
    for _ in range(2):  # the failures keep their places: the same command runs nothing new
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 1
        out, err = capsys.readouterr()
        assert "0 finished, 0 pruned, 2 failed" in out
        assert "failed: trial 0: ValueError: Precision 'bogus' is invalid" in err
        assert "failed: trial 1: ValueError: Precision 'bogus' is invalid" in err
        assert "run the same command with --retry-failed" in err and "--n-trials" in err
        assert len(_trials(url, "s")) == 2
    cfg["base"]["trainer"]["precision"] = "32-true"  # the cause fixed
    _write(tmp_path, cfg)
    main([*cmd, "--retry-failed"])  # exits 0: no SystemExit
    out = capsys.readouterr().out
    assert "retrying failed trial(s) 0, 1" in out
    assert "2 finished, 0 pruned, 0 failed (2 more failed or stopped and were retried)" in out
    failed, retries = _trials(url, "s")[:2], _trials(url, "s")[2:]
    assert [t.state for t in failed] == [TrialState.FAIL] * 2
    assert [t.state for t in retries] == [TrialState.COMPLETE] * 2
    for t in retries:
        original = failed[t.system_attrs["failed_trial"]]
        assert t.params == original.params and t.user_attrs["error"] is None
    assert {t.system_attrs["failed_trial"] for t in retries} == {0, 1}


def _running_in_fit(url: str, study: str, numbers=None):
    """The running trials (of ``numbers``) once each has reported a validation (in its fit)."""
    running = [
        t
        for t in _trials(url, study)
        if t.state == TrialState.RUNNING and (numbers is None or t.number in numbers)
    ]
    return running if running and all(t.intermediate_values for t in running) else None


@pytest.mark.slow
def test_sigterm_stops_the_sweep_like_ctrl_c(synth_root, tmp_path):
    """SIGTERM to the parent of two workers (forwarded), then to a one-worker sweep: the trials
    in their fit are failed as interrupted and retried, the command exits 143, and the same
    command continues to the budget."""
    cfg = _sweep_cfg(synth_root, mode="single", pruner="median")  # validations are reported
    cfg["base"]["trainer"]["max_epochs"] = 10000  # runs until it is stopped
    path = _write(tmp_path, cfg)
    db = tmp_path / "studies" / "s.db"
    url = f"sqlite:///{db}"
    cmd = _sweep_cmd(path, "--n-trials", "3", "--studies", str(tmp_path / "studies"))

    def stop(extra: list[str], log: str, n: int, numbers=None) -> list[int]:
        """Run the command; SIGTERM once ``n`` trials (of ``numbers``) are in their fit."""

        def in_fit():
            running = _running_in_fit(url, "s", numbers) if _has_trials(db) else None
            return running if running and len(running) == n else None

        proc = _start([*cmd, *extra], tmp_path, log)
        try:
            running = wait_for(in_fit, 300, f"{n} trial(s) in their fit", proc, tmp_path / log)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            proc.kill()
        out = (tmp_path / log).read_text()
        assert proc.returncode == 143, out  # 128 + SIGTERM
        assert "stopped by SIGTERM" in out and "Traceback" not in out, out
        return [t.number for t in running]

    def check(stopped: list[int]) -> dict:
        trials = {t.number: t for t in _trials(url, "s")}
        assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
        for n in stopped:
            assert trials[n].state == TrialState.FAIL and trials[n].user_attrs["error"] == (
                "interrupted"
            )
            retry = next(t for t in trials.values() if RetryHeartbeat.retry_history(t)[-1:] == [n])
            assert retry.state == TrialState.WAITING and retry.params == trials[n].params
        return trials

    first = stop(["--workers", "2"], "two.log", 2)  # the parent forwards SIGTERM to them
    assert first == [0, 1]
    trials = check(first)
    assert sorted(trials) == [0, 1, 2, 3]
    second = stop([], "one.log", 1, {2, 3})  # one worker: the command's own handler
    trials = check(second)
    assert len(trials) == 5
    cfg["base"]["trainer"]["max_epochs"] = 1
    _write(tmp_path, cfg)
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _trials(url, "s")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert "3 finished, 0 pruned, 0 failed (3 more failed or stopped and were retried)" in (
        done.stdout
    )
    for t in trials:
        if t.state == TrialState.COMPLETE and "failed_trial" in t.system_attrs:
            assert t.params == trials[t.system_attrs["failed_trial"]].params


def test_a_signal_python_swallows_is_raised_at_the_next_batch(capsys):
    """A handler's Interrupted that lands in a __del__ or a weakref callback is swallowed by
    Python ("Exception ignored in ..."): the engine keeps it, prints no traceback, and the
    trainer's callback raises it at the end of the next batch."""
    from lightning_modules.experiment import STOP, Interrupted, _RaiseMissedSignal
    from sweeps.engine import signals_to

    class RaisesWhenCollected:
        def __del__(self):
            raise Interrupted(signal.SIGTERM)

    callback = _RaiseMissedSignal()
    hook = sys.unraisablehook
    with signals_to():
        callback.on_train_batch_end()  # nothing missed: nothing raised
        obj = RaisesWhenCollected()
        del obj  # Python calls sys.unraisablehook with the Interrupted
        assert STOP["missed"] == signal.SIGTERM
        with pytest.raises(Interrupted) as e:
            callback.on_validation_batch_end()
        assert e.value.signum == signal.SIGTERM and STOP["missed"] is None
        callback.on_train_batch_end()  # raised once only
    assert "Exception ignored" not in capsys.readouterr().err
    assert sys.unraisablehook is hook  # outside the engine, the hook it found
