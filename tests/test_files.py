"""Atomic writes' temporaries: what a killed process leaves is removed by the next write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlsmith import files


def test_a_dead_process_temporary_folder_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A Spark job writes its part files into a temporary folder beside the output; one whose
    process was killed goes at the next write into that folder, with its contents."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".out.{files.HOST_ID}-{int(dead.stdout)}-abcdef.tmp"
    (stale / "_temporary").mkdir(parents=True)
    (stale / "_temporary" / "part-00000.parquet").write_bytes(b"x")
    live = tmp_path / files.temporary_path(tmp_path / "other").name
    live.mkdir()
    assert f"-{os.getpid()}-" in live.name

    removed = files.sweep_stale_temporaries(tmp_path)

    assert removed == [stale]
    assert not stale.exists()
    assert live.is_dir()
