"""No silent wrong results (issue 10): checkpoints of another model, files that are not
checkpoints, submissions that would be overwritten and bad settings are one-line errors before
any compute; ``fit --ckpt_path last`` resumes the previous run of the same experiment."""

import csv
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import TINY

from affbench.cli import main
from datamodules.abaw import AbawDataModule
from datamodules.index import read_test_list
from lightning_modules.module import AffectModule

DATA = ("--data.num_workers=0", "--data.batch_size=2")
QUIET = ("--trainer.logger=false", "--trainer.enable_progress_bar=false")


def _affbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "affbench.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )


def _error_line(stderr: str) -> str:
    """The one ``affbench: error:`` line of a run that stopped on the user's input."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [s for s in stderr.splitlines() if s.startswith("affbench: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _main_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    return _error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def ckpts(synth_root, tmp_path_factory):
    """A tiny frame-head model trained one step: a full checkpoint and a weights-only one."""
    folder = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model = AffectModule(backbone=TINY, head="frame", tasks="va", seq_len=8, img_size=112)
    data = AbawDataModule(
        root=str(synth_root), tasks="va", seq_len=8, batch_size=2, num_workers=0,
        mean=model.mean, std=model.std,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    trainer.fit(model, data)
    trainer.save_checkpoint(folder / "frame.ckpt")
    trainer.save_checkpoint(folder / "weights.ckpt", weights_only=True)
    return folder


def test_a_checkpoint_of_another_model_is_refused(ckpts, synth_root, tmp_path):
    """Lightning would lay the checkpoint's head over --model.head and test the frame model as
    if it were the GRU."""
    ckpt = ckpts / "frame.ckpt"
    r = _affbench(
        "test", f"--model.backbone={TINY}", "--model.head=gru", "--model.seq_len=8",
        f"--data.root={synth_root}", *DATA, *QUIET, f"--trainer.default_root_dir={tmp_path}",
        f"--ckpt_path={ckpt}",
    )  # fmt: skip
    assert r.returncode == 2
    line = _error_line(r.stderr)
    assert str(ckpt) in line and "head='frame'" in line and "head='gru'" in line
    assert "Test metric" not in r.stdout  # refused before testing


def test_settings_left_unset_come_from_the_checkpoint_in_one_line(
    ckpts, synth_root, tmp_path, capsys
):
    from lightning_modules.cli import AffbenchCLI

    class Built(AffbenchCLI):  # everything up to the run itself
        def _run_subcommand(self, subcommand: str) -> None:
            pass

    ckpt = ckpts / "frame.ckpt"
    root = f"--trainer.default_root_dir={tmp_path}"
    cli = Built(
        AffectModule,
        AbawDataModule,
        args=["test", f"--data.root={synth_root}", *DATA, *QUIET, root, f"--ckpt_path={ckpt}"],
    )
    hp = cli.model.hparams
    assert (hp.backbone, hp.head, hp.seq_len) == (TINY, "frame", 8)
    assert cli.datamodule.hparams.seq_len == 8  # the data still follows the model
    lines = [s for s in capsys.readouterr().out.splitlines() if "from the checkpoint" in s]
    assert lines == [
        f"model settings from the checkpoint {ckpt}: backbone='{TINY}', head='frame', seq_len=8"
    ]


def test_files_that_are_not_checkpoints_are_one_line_errors(ckpts, synth_root, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("learning rate 1e-3, 10 epochs\n")
    model = (f"--model.backbone={TINY}", "--model.head=frame", "--model.seq_len=8")
    base = (*model, f"--data.root={synth_root}", *DATA, *QUIET)
    base = (*base, f"--trainer.default_root_dir={tmp_path}")
    r = _affbench("fit", *base, f"--model.pretrained={notes}", "--trainer.fast_dev_run=true")
    assert r.returncode == 2
    line = _error_line(r.stderr)
    assert line.startswith(f"affbench: error: pretrained {notes} is not a PyTorch")
    r = _affbench("test", *base, f"--ckpt_path={notes}")
    assert r.returncode == 2
    assert _error_line(r.stderr).startswith(f"affbench: error: --ckpt_path {notes} is not a")
    # the same checks in this process (quicker): a missing file, weights without a Lightning
    # checkpoint around them, a weights-only checkpoint to resume from
    missing = tmp_path / "best.ckpt"
    assert _main_error(["test", *base, f"--ckpt_path={missing}"], capsys) == (
        f"affbench: error: --ckpt_path {missing} does not exist"
    )
    plain = tmp_path / "plain.pth"
    torch.save(AffectModule(backbone=TINY, head="frame", seq_len=8).state_dict(), plain)
    line = _main_error(["test", *base, f"--ckpt_path={plain}"], capsys)
    assert f"--ckpt_path {plain} is not a Lightning checkpoint" in line
    weights = ckpts / "weights.ckpt"
    line = _main_error(["fit", *base, f"--ckpt_path={weights}"], capsys)
    assert f"--ckpt_path {weights} holds weights only" in line


def test_predict_never_overwrites_a_submission_and_refuses_before_predicting(
    synth_root, tmp_path, monkeypatch, capsys
):
    def predicted(*args, **kwargs):
        raise AssertionError("predicted although the submission could not be written")

    monkeypatch.setattr(AffectModule, "predict_step", predicted)
    model = (f"--model.backbone={TINY}", "--model.head=frame", "--model.seq_len=8")
    base = ["predict", *model, "--model.tasks=va,au", f"--data.root={synth_root}", *DATA, *QUIET]
    base.append(f"--trainer.default_root_dir={tmp_path}")
    out = tmp_path / "sub"
    kept = out / "AU_Detection_Challenge" / "predictions.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("last week's submission\n")
    line = _main_error([*base, f"--submission={out}"], capsys)
    assert f"--submission: {kept} already exist" in line
    assert kept.read_text() == "last week's submission\n"
    assert not (out / "VA_Estimation_Challenge").exists()
    line = _main_error([*base, f"--submission={kept}"], capsys)  # a file, not a folder
    assert line == f"affbench: error: --submission: {kept} is a file, not a folder"


def test_a_non_finite_prediction_writes_no_submission(synth_root, tmp_path):
    from lightning_modules.submission import write_submission

    test_list = synth_root / "test_set_examples" / "VA_test_set_example.txt"
    listed = read_test_list(test_list)
    video = listed["video"][0]
    frames = torch.tensor(
        [[int(f) for v, f in zip(listed["video"], listed["frame"], strict=True) if v == video]]
    )
    preds = torch.zeros(1, frames.shape[1], 2)
    preds[0, 3, 1] = float("nan")
    outputs = [{"video": [video], "frame": frames, "pad": torch.zeros_like(frames, dtype=bool)}]
    outputs[0]["preds"] = {"va": preds, "au": torch.zeros(1, frames.shape[1], 12)}
    with pytest.raises(FloatingPointError, match=r"va: 1 of \d+ predicted frames are not finite"):
        write_submission(outputs, test_list, tmp_path / "sub", ("au", "va"))
    assert not (tmp_path / "sub").exists()  # not even the AU file, computed first


def test_fit_ckpt_path_last_resumes_the_previous_run(synth_root, tmp_path, monkeypatch):
    """The same command with --ckpt_path last continues the run before it, although each run
    logs into a new lightning_logs/version_N (the default CSV logger is kept on purpose)."""
    monkeypatch.chdir(tmp_path)
    model = (f"--model.backbone={TINY}", "--model.head=frame", "--model.seq_len=8")
    args = ["fit", *model, f"--data.root={synth_root}", *DATA]
    args += ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"]
    args += ["--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
    main([*args, "--trainer.max_epochs=1"])
    main([*args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    with open(tmp_path / "lightning_logs" / "version_1" / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row["epoch"]}
    assert epochs == {"1"}  # the second run trained epoch 1 only: it started from the first's
    folder = tmp_path / "checkpoints" / f"{TINY}+frame_t8_r112_s0"  # the run name's folder
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 4)  # two epochs of two steps, done


def test_a_bad_setting_in_fit_is_one_line(synth_root, tmp_path):
    r = _affbench(
        "fit", f"--model.backbone={TINY}", "--model.head=mixer3", "--model.seq_len=6",
        f"--data.root={synth_root}", *DATA, *QUIET, "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path}",
    )  # fmt: skip
    assert r.returncode == 2
    line = _error_line(r.stderr)
    assert "seq_len (T) = 6 is not divisible by the tubelet length 4" in line
    assert "multiple of 4" in line
