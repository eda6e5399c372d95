"""The task registry: every registered task is tested here the day it lands (targets from its
annotation lines, activation, losses, measures, submission rows), and a task added to the
registry is all AffectModule needs to train and score it."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import ConfigError
from datamodules import tasks as registry
from datamodules.annotations import read_task_files
from datamodules.dataset import collate_clips
from datamodules.tasks import Task, get_task, list_tasks, parse_tasks, register_task
from lightning_modules.objectives import OUTPUTS, task_loss
from lightning_modules.scoring import MEASURE, score_split

TINY = "mobilenetv4_conv_small_035"

# Per task: annotation values as drawn for a test (one row per line), data lines as written in
# its files with the flags and targets they mean, and raw outputs whose activation is a target.
SAMPLE = {
    "va": lambda g, n: g.uniform(-0.9, 0.9, (n, 2)),
    "expr": lambda g, n: g.integers(0, 8, (n, 1)),
    "au": lambda g, n: g.integers(0, 2, (n, 12)),
    "emi": lambda g, n: g.uniform(0.05, 0.95, (n, 6)),
}
ONES_AU = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 1]
LINES = {  # (line, annotated, target)
    "va": [("0.25,-0.5", True, [0.25, -0.5]), ("-5,-5", False, None), ("1, -1", True, [1, -1])],
    "expr": [("3", True, np.eye(8)[3]), ("-1", False, None), ("7", True, np.eye(8)[7])],
    "au": [
        (",".join(map(str, ONES_AU)), True, ONES_AU),
        (",".join(["0"] * 11 + ["-1"]), False, None),
        (",".join(["0"] * 12), True, [0] * 12),
    ],
}
PERFECT_RAW = {
    "va": lambda y: y.atanh(),
    "expr": lambda y: 30 * (2 * y - 1),
    "au": lambda y: 30 * (2 * y - 1),
    "emi": lambda y: y.logit(),
}


def _targets(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """(n, K) float32 targets of ``name``, encoded from drawn annotation values."""
    spec = get_task(name)
    values = SAMPLE[name](np.random.default_rng(seed), n).astype(spec.dtype)
    return torch.from_numpy(spec.encode(values))


@pytest.mark.parametrize("task", list_tasks())
def test_targets_are_encoded_from_annotation_lines(tmp_path, task):
    spec = get_task(task)
    if not spec.annotated:  # EMI: video-level intensities, no annotation files here
        values = SAMPLE[task](np.random.default_rng(0), 4).astype(spec.dtype)
        np.testing.assert_array_equal(spec.encode(values), values)
        assert spec.encode(values).shape == (4, spec.outputs)
        return
    path = tmp_path / f"{task}.txt"
    path.write_text("\n".join([spec.header, *(line for line, _, _ in LINES[task])]) + "\n")
    labels = read_task_files([path], spec)
    assert labels.values.shape == (len(LINES[task]), spec.values_per_line)
    assert labels.valid.tolist() == [ok for _, ok, _ in LINES[task]]
    target = spec.encode(labels.values)
    assert target.shape == (len(LINES[task]), spec.outputs) and target.dtype == np.float32
    assert np.isfinite(target).all()  # unannotated rows too: the dataset zeroes them
    for row, (_, ok, want) in zip(target, LINES[task], strict=True):
        if ok:
            np.testing.assert_allclose(row, want)


@pytest.mark.parametrize("task", list_tasks())
def test_activation_keeps_the_shape_and_its_range(task):
    spec = get_task(task)
    raw = 10 * torch.randn(2, 5, spec.outputs, generator=torch.Generator().manual_seed(0))
    pred = spec.activate(raw)
    assert pred.shape == raw.shape and torch.isfinite(pred).all()
    assert (pred.abs() <= 1).all()
    if task != "va":  # probabilities / intensities in [0, 1]; VA in [-1, 1]
        assert (pred >= 0).all()
    if task == "expr":
        torch.testing.assert_close(pred.sum(-1), torch.ones(2, 5))


@pytest.mark.parametrize("task", list_tasks())
def test_every_loss_is_finite_and_zero_at_a_perfect_prediction(task):
    spec = get_task(task)
    target = _targets(task, 40)[None]  # (1, T, K)
    valid = torch.ones(1, 40, dtype=torch.bool)
    valid[0, -5:] = False
    for kind in spec.losses:
        raw = torch.randn(1, 40, spec.outputs, generator=torch.Generator().manual_seed(1))
        raw.requires_grad_()
        loss = task_loss(task, raw, target, valid, kind)
        assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0, kind
        loss.backward()
        assert torch.isfinite(raw.grad).all() and raw.grad[0, -5:].abs().sum() == 0
        perfect = task_loss(task, PERFECT_RAW[task](target), target, valid, kind)
        assert perfect.item() == pytest.approx(0, abs=1e-5), kind
    with pytest.raises(ConfigError, match=f"{task} loss must be one of"):
        task_loss(task, raw, target, valid, "no_such_loss")


@pytest.mark.parametrize("task", list_tasks())
def test_measure_is_one_on_perfect_predictions_and_lower_on_noisy_ones(task):
    spec = get_task(task)
    target = _targets(task, 300).double()
    perfect = spec.measures(target.clone(), target)
    assert perfect[spec.measure] == pytest.approx(1.0, abs=1e-6)
    noise = 0.6 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    noisy = spec.measures(target + noise.double(), target)
    assert noisy[spec.measure] < 0.95
    assert MEASURE[task] == spec.measure
    if spec.thresholded:  # tuned thresholds never lose to 0.5
        thr = spec.tune_thresholds(target + noise.double(), target)
        tuned = spec.measures(target + noise.double(), target, thr)
        extra = {k: v for k, v in tuned.items() if k not in noisy}  # e.g. au_f1_tuned
        assert thr.shape == (spec.outputs,) and extra
        assert min(extra.values()) >= noisy[spec.measure]


@pytest.mark.parametrize("task", list_tasks(annotated=True))  # EMI: no predictions.txt
def test_a_submission_row_parses_back_to_the_prediction(task):
    spec = get_task(task)
    raw = 3 * torch.randn(50, spec.outputs, generator=torch.Generator().manual_seed(3))
    pred = spec.activate(raw).double()
    rows = spec.submission_rows(pred)
    parsed = torch.tensor([[float(x) for x in r.split(",")] for r in rows], dtype=torch.float64)
    assert parsed.shape == (50, spec.values_per_line)
    assert len(spec.header.split(",")) == len(spec.columns)
    meaning = {
        "va": pred,
        "expr": pred.argmax(-1, keepdim=True).double(),
        "au": (pred > 0.5).double(),
    }
    torch.testing.assert_close(parsed, meaning[task], atol=5e-5, rtol=0)


def test_the_registry_names_and_parses_tasks():
    assert list_tasks() == ["va", "expr", "au", "emi"]
    assert list_tasks(annotated=True) == ["va", "expr", "au"]
    assert dict(OUTPUTS) == {"va": 2, "expr": 8, "au": 12, "emi": 6}
    assert parse_tasks(" VA, au,va ") == ("va", "au")
    assert parse_tasks(["emi"]) == ("emi",)
    with pytest.raises(ConfigError, match="unknown task 'emotion'; tasks are: va, expr, au, emi"):
        parse_tasks("va,emotion")
    with pytest.raises(ConfigError, match="unknown task 'emi'; tasks are: va, expr, au$"):
        parse_tasks("emi", annotated=True)  # video-level: no reader in the data layer
    with pytest.raises(ConfigError, match="no task given"):
        parse_tasks(" , ")
    with pytest.raises(ValueError, match="'va' is already registered"):
        register_task(Task("va", outputs=2, measure="va_ccc"))


# -- a task added to the registry is all the model needs -------------------------------------


@dataclass(frozen=True)
class Toy(Task):
    """Three intensities in [0, 1] (sigmoid, MSE), scored by 1 - mean absolute error."""

    def measures(self, pred, target, thresholds=None) -> dict[str, float]:
        return {self.measure: float(1 - (pred - target).abs().mean())}


@pytest.fixture
def toy():
    task = register_task(Toy("toy", outputs=3, measure="toy_score"))
    yield task
    registry._TASKS.pop(task.name)


class ToyClips(Dataset):
    """Clips of random frames with VA and toy targets, in the batch contract of the dataset."""

    def __init__(self, n: int, seq_len: int, size: int):
        self.n, self.seq_len, self.size = n, seq_len, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        t = self.seq_len
        return {
            "frames": torch.randint(0, 256, (t, 3, self.size, self.size), dtype=torch.uint8),
            "targets": {
                "va": torch.rand(t, 2, generator=g) * 2 - 1,
                "toy": torch.rand(t, 3, generator=g),
            },
            "valid": {
                "va": torch.ones(t, dtype=torch.bool),
                "toy": torch.ones(t, dtype=torch.bool),
            },
            "video": f"v{i}",
            "frame": torch.arange(1, t + 1),
            "pad": torch.zeros(t, dtype=torch.bool),
            "filled": torch.zeros(t, dtype=torch.bool),
            "corrupt": torch.zeros(t, dtype=torch.bool),
            "bad_files": [],
        }


def test_a_registered_task_is_trained_and_scored_by_the_module(toy, tmp_path):
    from lightning_modules.module import AffectModule

    assert "toy" in list_tasks() and OUTPUTS["toy"] == 3 and MEASURE["toy"] == "toy_score"
    model = AffectModule(backbone=TINY, head="frame", tasks="va,toy", seq_len=4, img_size=64)
    assert model.outputs["toy"].out_features == 3
    loader = DataLoader(ToyClips(4, 4, 64), batch_size=2, collate_fn=collate_clips)
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader, loader)
    metrics = trainer.validate(model, loader, verbose=False)[0]
    assert 0 < metrics["val/toy_score"] <= 1
    assert np.isfinite(metrics["val/va_ccc"])
    assert metrics["val/score"] == pytest.approx(
        (metrics["val/toy_score"] + metrics["val/va_ccc"]) / 2, abs=1e-6
    )
    preds = trainer.predict(model, loader)
    assert preds[0]["preds"]["toy"].shape == (2, 4, 3)
    # the same path without a trainer: merged frames -> the task's measure
    merged = {"toy": (torch.arange(8), torch.full((8, 3), 0.5), torch.full((8, 3), 0.25))}
    assert score_split(merged) == {"toy_score": 0.75, "score": 0.75}
