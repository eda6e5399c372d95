"""What names an experiment: the run name that the W&B runs, the checkpoint folders, the
results store and the tables share (STYLE: metric keys and run names are defined once)."""

from __future__ import annotations

# The cost columns of a results row that tables, plots, sweeps and W&B read: spelled here, once.
PARAMS_M = "params_total_m"
GMACS_PER_FRAME = "gmacs_per_frame"
LATENCY_MS = "latency_ms_median"


def trainer_defaults() -> dict:
    """What every training of the suite uses unless told otherwise (the CLI, ablation grids,
    sweeps and the learning benchmark): gradients clipped at 1.0; bf16 mixed precision on a
    GPU, fp32 on the CPU."""
    import torch

    return {
        "gradient_clip_val": 1.0,
        "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
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
        import signal

        self.signum = int(signum)
        self.why = f"interrupted by {signal.Signals(self.signum).name}"
        super().__init__(self.why)
        self.checkpoint, self.run_id, self.train_s = checkpoint, run_id, train_s
