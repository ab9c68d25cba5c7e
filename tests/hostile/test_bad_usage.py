"""Bad commands, configs, folders and files: one clear message, exit 2, nothing lost.

Each test is one case a hostile user found: it failed (a traceback, a silent surprise or a
misleading message) before the fix it guards.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.conftest import CliResult, config_dict, make_table

import mlsmith

Cli = Callable[..., CliResult]


def _user_error(result: CliResult, *fragments: str, code: int = 2) -> None:
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> mlsmith.Run:
    root = tmp_path_factory.mktemp("usage")
    data = root / "train.csv"
    make_table("binary").to_csv(data, index=False)
    return mlsmith.train(config_dict(data, root / "runs"), progress=False)


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in, for this user."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path("/sys")  # root may write anywhere permissions allow; /sys refuses new files


# --- predict ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_predict_refuses_to_write_over_its_input(
    cli: Cli, run: mlsmith.Run, tmp_path: Path, spelling: str
) -> None:
    source = tmp_path / "rows.csv"
    make_table("binary", rows=20).to_csv(source, index=False)
    before = source.read_bytes()
    output = {
        "same": source,
        "dotdot": tmp_path / "x" / ".." / "rows.csv",
        "symlink": tmp_path / "link.csv",
    }[spelling]
    if spelling == "symlink":
        output.symlink_to(source)
    result = cli("predict", run.path, "--input", source, "--output", output)
    _user_error(result, "is the input file", "another path")
    assert source.read_bytes() == before


def test_predict_output_in_a_place_that_cannot_be_written(
    cli: Cli, run: mlsmith.Run, tmp_path: Path
) -> None:
    source = tmp_path / "rows.csv"
    make_table("binary", rows=20).to_csv(source, index=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    result = cli("predict", run.path, "--input", source, "--output", blocker / "out.csv")
    _user_error(result, f"cannot write {blocker / 'out.csv'}")
    readonly = _unwritable_folder(tmp_path)
    result = cli("predict", run.path, "--input", source, "--output", readonly / "sub" / "o.csv")
    _user_error(result, "cannot write", "permission denied")


# --- output_dir ---------------------------------------------------------------------------------


def test_output_dir_that_is_a_file(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    make_table("binary", rows=60).to_csv(data, index=False)
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(config_dict(data, blocker)))
    _user_error(cli("train", config), "output_dir", "is a file, not a folder")
    assert blocker.read_text() == "not a folder"
    _user_error(cli("train", config, f"output_dir={blocker / 'deeper'}"), "which is a file")


def test_output_dir_that_cannot_be_written(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    make_table("binary", rows=60).to_csv(data, index=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(config_dict(data, tmp_path / "runs")))
    readonly = _unwritable_folder(tmp_path)
    result = cli("train", config, f"output_dir={readonly / 'runs'}")
    _user_error(result, "output_dir: cannot write runs under", "choose another output_dir")


# --- config files and overrides -----------------------------------------------------------------


def test_an_override_of_model_type_is_blamed_on_the_command_line(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    make_table("binary", rows=60).to_csv(data, index=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(config_dict(data, tmp_path / "runs")))
    result = cli("check", config, "model.type=mlpp")
    _user_error(result, "command line: model.type: expected one of", "'mlpp'")
    assert f"{config}: model.type" not in result.stderr
    # The file's MLP keys are not CNN keys: said, with the override named as the cause.
    result = cli("check", config, "model.type=cnn")
    _user_error(result, "with model.type changed on the command line", "model.hidden")


def test_a_repeated_yaml_key_is_an_error(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    make_table("binary", rows=60).to_csv(data, index=False)
    config = tmp_path / "c.yaml"
    text = yaml.safe_dump(config_dict(data, tmp_path / "runs"), sort_keys=False)
    config.write_text(text + "seed: 7\n")  # `seed: 0` is already at the top
    _user_error(cli("check", config), "key 'seed' appears twice", "lines 2 and")
    nested = text.replace("train:\n", "train:\n  epochs: 9\n", 1)
    config.write_text(nested)
    _user_error(cli("check", config), "key 'epochs' appears twice")


def test_a_folder_given_as_the_config(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text("data: {path: d.csv, target: y}\n")
    result = cli("train", tmp_path)
    _user_error(result, "is a folder, not a config file", str(tmp_path / "exp.yaml"))
    assert "not found" not in result.stderr


# --- run directories and checkpoints ------------------------------------------------------------


def test_a_file_given_as_a_run_directory(cli: Cli, run: mlsmith.Run) -> None:
    metrics = run.path / "metrics.json"
    for verb in (["evaluate"], ["compare", str(run.path)]):
        result = cli(*verb, metrics)
        _user_error(result, "is a file, not a run directory", f"its run directory is {run.path}")
        assert "not found" not in result.stderr


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 64], ids=["empty", "garbage"])
def test_an_unreadable_last_checkpoint_on_resume(
    cli: Cli, run: mlsmith.Run, tmp_path: Path, content: bytes
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "checkpoints" / "last.pt").write_bytes(content)
    result = cli("train", copy / "config.yaml", "--resume", copy)
    reason = "empty (0 bytes)" if not content else "not a PyTorch checkpoint file"
    _user_error(result, str(copy / "checkpoints" / "last.pt"), reason)
    assert "weights_only" not in result.stderr
    assert "()" not in result.stderr  # an empty reason in parentheses, as before


def test_nan_advice_never_suggests_the_precision_in_use(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    make_table("regression", rows=120).to_csv(data, index=False)
    config = tmp_path / "c.yaml"
    cfg = config_dict(data, tmp_path / "runs")
    cfg["train"].update(preflight=False, optimizer={"lr": 1e12, "name": "sgd"})
    config.write_text(yaml.safe_dump(cfg))
    result = cli("train", config)
    _user_error(result, "training stopped", code=1)
    assert "train.precision=32" not in result.stderr  # it is already 32
    result = cli("train", config, "train.precision=bf16-mixed")
    _user_error(result, "training stopped", "train.precision=32", code=1)
    assert "or bf16-mixed" not in result.stderr


def test_ctrl_c_status_is_recorded_even_before_the_first_epoch(tmp_path: Path) -> None:
    """run.json exists and says 'interrupted' whatever the moment: checked through the API."""
    data = tmp_path / "d.csv"
    make_table("binary", rows=60).to_csv(data, index=False)

    class StopAtStart:
        def on_fit_start(self, trainer: object) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mlsmith.train(config_dict(data, tmp_path / "runs"), callbacks=[StopAtStart()])
    (run_dir,) = (tmp_path / "runs" / "t").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    # Whole enough to report on.
    written = {p.name for p in mlsmith.report(run_dir)}
    assert written == {"report.html", "REPORT.md", "MODEL_CARD.md"}
