"""examples/distilabel_pipeline.py: a distilabel pipeline pointed at steer serve (the demo models),
run end to end. Skips where distilabel is not installed (it is in the test extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distilabel")
pytest.importorskip("fastapi")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distilabel_pipeline.py"


def test_the_distilabel_example_generates_a_dataset_through_steer_serve(tmp_path):
    out = tmp_path / "dataset"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--n", "8", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 rows (0 empty)" in done.stdout, done.stdout
    from datasets import load_from_disk

    rows = load_from_disk(str(out / "default" / "train"))
    assert len(rows) == 8 and all(text.strip() for text in rows["generation"])
