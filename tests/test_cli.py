import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import va_text, write_tree

from affbench.cli import main


def test_info_json_is_one_object_with_the_counts(tmp_path, capsys):
    write_tree(
        tmp_path,
        {"v": [1, 2, 4]},
        {
            ("va", "Train_Set", "v"): va_text(
                [(0.5, -0.5), (-5, -5), (0.1, 0.3), (0.3, 0.1), (0, 0)]
            )
        },
    )
    main(["data", "info", str(tmp_path), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info == {
        "Train_Set": {
            "va": {
                "videos": 1,
                "frames": 5,
                "annotated_frames": 4,
                "unannotated_frames": 1,
                "missing_images": 2,
                "annotated_missing_images": 2,
                "blank_lines": 0,
                "lines_beyond_frames": 1,
                "frames_beyond_lines": 0,
                "labels": {  # over the four annotated frames; population std
                    "valence_mean": 0.225,
                    "valence_std": pytest.approx(np.std([0.5, 0.1, 0.3, 0.0]), abs=1e-4),
                    "arousal_mean": -0.025,
                    "arousal_std": pytest.approx(np.std([-0.5, 0.3, 0.1, 0.0]), abs=1e-4),
                },
            }
        }
    }


def test_bad_input_is_one_line_naming_file_and_line(tmp_path):
    write_tree(tmp_path, {}, {("va", "Train_Set", "v"): "valence,arousal\n0.1,0.2\n0.1,1.2\n"})
    r = subprocess.run(
        [sys.executable, "-m", "affbench.cli", "data", "info", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("affbench: error:")
    assert "v.txt:3:" in r.stderr and "Traceback" not in r.stderr


def test_synth_prints_its_summary(tmp_path, capsys):
    main(["data", "synth", "--out", str(tmp_path / "d"), "--videos", "4", "--frames", "20"])
    out = capsys.readouterr().out
    assert out.startswith("wrote 4 videos")
    assert "Train_Set" in out and "annotated_frames" in out
