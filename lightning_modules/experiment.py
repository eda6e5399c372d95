"""What names an experiment: the run name that the W&B runs, the checkpoint folders, the
results store and the tables share (STYLE: metric keys and run names are defined once)."""

from __future__ import annotations


def run_name(settings: dict) -> str:
    """``{backbone}+{head}_t{T}_r{res}_s{seed}`` (plus head settings and tasks where given)."""
    m = settings.get("model", {})
    name = f"{m.get('backbone', 'mobilenetv4_conv_small')}+{m.get('head', 'mixer3')}"
    for k, v in sorted((m.get("head_kwargs") or {}).items()):
        name += f"-{k}{v}"
    name += f"_t{m.get('seq_len', 32)}_r{m.get('img_size', 112)}_s{settings.get('seed', 0)}"
    tasks = m.get("tasks", "va")
    return name if tasks == "va" else f"{name}_{str(tasks).replace(',', '-')}"
