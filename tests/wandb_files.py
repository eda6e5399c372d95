"""Read W&B's offline run files back (run-<id>.wandb): the run's name, group, config and summary.

The file is W&B's record log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
records (4-byte checksum, 2-byte length, 1-byte type: full / first / middle / last), each a
``wandb_internal_pb2.Record``.
"""

import json
import struct
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


def read_offline_run(run_dir: Path) -> dict:
    """{"name", "group", "id", "config", "summary", "history"} of one offline-run-* folder
    (``history``: the logged rows in order, each a dict with its ``_step``)."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out = {"config": {}, "summary": {}, "history": []}
    for raw in _records(data):
        r = pb.Record()
        r.ParseFromString(raw)
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
