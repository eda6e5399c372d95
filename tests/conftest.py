"""Shared fixtures: hand-made ABAW trees whose pixels say which frame they are, and a small
synthetic dataset."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from datamodules.tasks import get_task

ANN = "6th ABAW Annotations"  # a name with spaces, as one edition had


def frame_jpeg(frame: int, size: int = 16) -> bytes:
    """A flat grey JPEG whose level encodes the frame number (recoverable to +-1)."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (frame_level(frame),) * 3).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def frame_level(frame: int) -> int:
    return (frame * 7) % 250


def write_tree(
    root: Path,
    images: dict[str, list[int]],
    annotations: dict[tuple[str, str, str], str],
    ann_dir: str = ANN,
) -> Path:
    """images: video -> frame numbers that exist; annotations: (task, split, video) -> file text
    (its header included)."""
    for video, frames in images.items():
        folder = root / "cropped_aligned" / video
        folder.mkdir(parents=True, exist_ok=True)
        for f in frames:
            (folder / f"{f:05d}.jpg").write_bytes(frame_jpeg(f))
    for (task, split, video), text in annotations.items():
        path = root / ann_dir / get_task(task).challenge / split / f"{video}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    return root


TINY = "mobilenetv4_conv_small_035"


def tiny_base(root) -> dict:
    """Settings of a tiny, seconds-long training run on ``root`` (ablation and sweep tests)."""
    return {
        "model": {"backbone": TINY, "tasks": "va", "seq_len": 8, "img_size": 112},
        "data": {"root": str(root), "batch_size": 4, "num_workers": 0},
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 2,
            "limit_test_batches": 1,
        },
        "seed": 0,
    }


def wait_for(predicate, seconds: float, what: str, proc=None, log: Path | None = None):
    """``predicate()``'s first truthy value, polled every 0.3 s; an AssertionError naming
    ``what`` after ``seconds`` (tests wait for states, never for a fixed time). ``proc``: the
    process that should bring the state about; if it exits first, the wait ends at once with
    its exit code and the end of its ``log``."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        got = predicate()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def va_text(values: list[tuple[float, float]], eol: str = "\n") -> str:
    return eol.join(["valence,arousal", *(f"{a},{b}" for a, b in values)]) + eol


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """Every test caches indexes in a fresh folder, never in the user's home."""
    monkeypatch.setenv("AFFBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from datamodules.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, videos=12, frames=60, seed=3)
    return root


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session. Skipped where PostgreSQL is not installed,
    except in CI (``CI`` set: `.ci/run` installs it), where its absence fails."""
    import os

    from postgres import Server, pg_bin

    bindir = pg_bin()
    if bindir is None:
        msg = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    server = Server(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request):
    """An empty database of its own on the session's server, for one test: no test sees another's
    studies (two tests may use the same study name), and each sets up a new Optuna schema."""
    return postgres_server.create_database(request.node.name)
