"""Read W&B's offline run files back (run-<id>.wandb): the run's name, group, config and summary,
once W&B has written them to the end.

The file is W&B's record log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
records (4-byte checksum, 2-byte length, 1-byte type: full / first / middle / last), each a
``wandb_internal_pb2.Record``.
"""

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb


def _records(data: bytes, block: int = 32768):
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def _parsed(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out = []
    for raw in _records(data):
        r = pb.Record()
        r.ParseFromString(raw)
        out.append(r)
    return out


def read_offline_run(run_dir: Path, wait: float | None = 60.0) -> dict:
    """{"name", "group", "id", "config", "summary", "history"} of one offline-run-* folder
    (``history``: the logged rows in order, each a dict with its ``_step``). W&B's service may
    still be writing the file after ``run.finish()`` returned: it is read once it holds the
    run's ``exit`` record (polled, for ``wait`` s at most); ``wait=None`` reads what is there
    (a killed worker's run never ends)."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    t0 = time.monotonic()
    while True:
        try:
            records = _parsed(path)
        except Exception:  # a record cut in the middle while it is written
            records = []
        if wait is None or any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() - t0 < wait, f"{path} has no exit record after {wait} s"
        time.sleep(0.1)
    out = {"config": {}, "summary": {}, "history": []}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(name=r.run.display_name, group=r.run.run_group, id=r.run.run_id)
            out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":  # one logged row: {key: value, ..., "_step": n}
            out["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "summary":
            for i in r.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return out
