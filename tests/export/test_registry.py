"""The model registry and the promotion gate, against a real MLflow server on PostgreSQL.

The module starts ``mlflow server`` on a fresh PostgreSQL database, trains two tiny tabular runs
tracked to it (a good one, registered by ``track.register`` at the end of train, and one trained
one epoch at lr 1e-6), then plays one promotion history through the CLI, once: the bad model
becomes ``champion`` (nobody held it), the good one replaces it, the bad one (registered again)
is refused, forced, and rolled back. The tests read what each step returned and left in the
registry. A last test does ``register`` and ``promote`` on the default SQLite store, no server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from tests.conftest import CliResult, config_dict, make_table
from tests.hostile.conftest import PG_ADMIN_URL, free_port, wait_for

import mlsmith
from mlsmith.errors import ConfigError
from mlsmith.evaluation import paired_difference

NAME = "tabular"
TRAINED_IN = "tabular-at-train"
MLFLOW = Path(sys.executable).with_name("mlflow")


def _mlsmith(*args: str | Path) -> CliResult:
    """``mlsmith ARGS...`` in this process (module fixtures cannot use capsys)."""
    from mlsmith.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code: Any = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return CliResult(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def _train(
    data: Path,
    root: Path,
    uri: str | None,
    *,
    register: dict[str, str] | None = None,
    **sections: Any,
) -> mlsmith.Run:
    """A tiny tabular run with its package, tracked to ``uri`` (None: the default store)."""
    raw = config_dict(data, root / "runs", **sections)
    raw["data"]["split"] = {"val": 0.2, "test": 0.4}  # 400 test rows of 1,000: enough to compare
    raw["export"] = {"package": True}
    raw["track"] = {"enabled": True}
    if uri:
        raw["track"]["uri"] = uri
    if register:
        raw["track"]["register"] = register
    return mlsmith.train(raw, progress=False, epoch_lines=False)


# --- the server -------------------------------------------------------------------------------


@dataclass
class Server:
    """An ``mlflow server`` starting up; :meth:`wait` returns its URL once it answers."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait(self) -> str:
        from mlsmith.tracking.store import StoreUnavailable, check_server

        def up() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                check_server(self.url, timeout=1)
            except StoreUnavailable:
                return False
            return True

        wait_for(up, 120, "mlflow server")
        return self.url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``mlflow server`` on its own fresh PostgreSQL database, started but not waited for: its
    schema takes a while to create, time in which something else can be trained."""
    import psycopg

    if importlib.util.find_spec("mlflow.server.fastapi_app") is None or not MLFLOW.is_file():
        pytest.skip("needs the full mlflow package (its server), not mlflow-skinny")
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as error:
        pytest.skip(f"no PostgreSQL reachable at {PG_ADMIN_URL} ({error})")
    root = tmp_path_factory.mktemp("server")
    database = f"mlsmith_registry_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    port = free_port()
    command = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"]
    command += ["--artifacts-destination", str(root / "artifacts"), "--serve-artifacts"]
    command += ["--workers", "1"]
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield Server(f"http://127.0.0.1:{port}", process, root / "server.log")
    finally:
        # The server, its workers and its job consumers share the process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> mlsmith.Run:
    """A run tracked to the default store: ``<output_dir>/mlflow.db``, no server."""
    root = tmp_path_factory.mktemp("local")
    make_table("binary", rows=600, seed=0).to_csv(root / "data.csv", index=False)
    return _train(root / "data.csv", root, None, train={"epochs": 2, "batch_size": 32})


# --- one promotion history, played once -------------------------------------------------------


@dataclass
class History:
    url: str
    root: Path
    data: Path  # the 1,000 rows both runs split (seed 0)
    good: mlsmith.Run
    bad: mlsmith.Run
    steps: dict[str, CliResult]
    holders: dict[str, str | None]  # champion's version after each step
    version_tags: dict[str, dict[str, dict[str, str]]]  # step -> version -> its tags then

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def promotion(self, step: str, version: str) -> dict[str, str]:
        """The ``mlsmith.promotion.champion.*`` tags of a version after ``step``, by key."""
        prefix = "mlsmith.promotion.champion."
        tags = self.version_tags[step][version]
        return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}


def _champion(url: str) -> str | None:
    aliases = MlflowClient(tracking_uri=url, registry_uri=url).get_registered_model(NAME).aliases
    version = aliases.get("champion")
    return None if version is None else str(version)


@pytest.fixture(scope="module")
def history(
    server: Server, local_run: mlsmith.Run, tmp_path_factory: pytest.TempPathFactory
) -> History:
    # local_run is trained while the server starts (it also pays for the first imports).
    url = server.wait()
    root = tmp_path_factory.mktemp("registry")
    data = root / "data.csv"
    make_table("binary", rows=1000, seed=0).to_csv(data, index=False)
    make_table("binary", rows=150, seed=7).to_csv(root / "few.csv", index=False)
    good = _train(
        data,
        root,
        url,
        train={"epochs": 5, "batch_size": 32},
        eval={"bootstrap": 200, "report": True},
        register={"name": TRAINED_IN, "alias": "staging"},
    )
    bad = _train(data, root, url, train={"epochs": 1, "batch_size": 32, "optimizer": {"lr": 1e-6}})
    steps: dict[str, CliResult] = {}
    holders: dict[str, str | None] = {}
    tags: dict[str, dict[str, dict[str, str]]] = {}
    uri = ("--tracking-uri", url)

    def step(key: str, *args: str | Path) -> None:
        steps[key] = _mlsmith(*args)
        holders[key] = _champion(url)
        # A later step may overwrite a version's tags: keep what each step left.
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        tags[key] = {
            str(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{NAME}'")
        }

    step("register bad", "register", bad.path, "--name", NAME)  # version 1
    step("first", "promote", NAME, "--candidate", "1", "--to", "champion", *uri)
    step("register good", "register", good.path, "--name", NAME, "--alias", "candidate")  # 2
    step("reserved alias", "register", good.path, "--name", NAME, "--alias", "latest")
    step("better", "promote", NAME, "--candidate", "candidate", "--to", "champion", *uri)
    few = ("--data", root / "few.csv")
    step("too few", "promote", NAME, "-c", "1", "--to", "champion", *few, *uri)
    step("register bad again", "register", bad.path, "--name", NAME)  # version 3
    # --data is the whole training file: the 600 rows both runs trained or validated on must be
    # left out by content, leaving their 400 test rows.
    # log_loss: smaller is better, so the difference is incumbent minus candidate.
    worse = ("--data", data, "--metric", "log_loss")
    step("worse", "promote", NAME, "-c", "3", "--to", "champion", *worse, *uri)
    forced = ("--force", "--reason", "hotfix")
    step("forced", "promote", NAME, "-c", "3", "--to", "champion", *forced, *uri)
    step("rollback", "promote", NAME, "--rollback", "--to", "champion", *uri)
    step("unknown name", "promote", "tabluar", "-c", "1", "--to", "champion", *uri)
    step("unknown alias", "promote", NAME, "-c", "nightly", "--to", "champion", *uri)
    step("unknown version", "promote", NAME, "-c", "99", "--to", "champion", *uri)
    return History(url, root, data, good, bad, steps, holders, tags)


def test_register_tags_the_version_with_metrics_fingerprint_and_parity(history: History) -> None:
    result = history.steps["register good"]
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == f"models:/{NAME}/2"
    version = history.client.get_model_version(NAME, "2")
    run, tags = history.good, version.tags
    assert version.run_id == run.info["mlflow_run_id"]
    assert version.source == f"models:/{run.info['package']['mlflow_model_id']}"
    accuracy = run.metrics["test"]["accuracy"]
    assert float(tags["test/accuracy"]) == pytest.approx(accuracy["value"])
    assert float(tags["test/accuracy_ci95_low"]) == pytest.approx(accuracy["ci95"][0])
    assert float(tags["test/accuracy_ci95_high"]) == pytest.approx(accuracy["ci95"][1])
    assert tags["mlsmith.data_fingerprint"] == run.info["data_fingerprint"]
    assert tags["mlsmith.code_version"].startswith("mlsmith ")
    export = json.loads((run.path / "package/data/mlsmith/export.json").read_text())
    assert (
        float(tags["mlsmith.parity.onnx.max_abs_diff"]) == export["formats"]["onnx"]["max_abs_diff"]
    )
    assert int(tags["mlsmith.parity.rows_checked"]) == export["rows_checked"]
    assert "mlsmith.parity.package_check.max_abs_diff" in tags
    assert tags["mlsmith.run_dir"] == str(run.path)
    # eval.report was on: the model card is the description.
    assert version.description == (run.path / "MODEL_CARD.md").read_text()
    assert str(history.client.get_registered_model(NAME).aliases["candidate"]) == "2"
    # The bad run had no report: no description.
    assert not history.client.get_model_version(NAME, "1").description


def test_track_register_registers_at_the_end_of_train(history: History) -> None:
    record = history.good.info["registration"]
    assert record == {
        "status": "registered",
        "name": TRAINED_IN,
        "version": "1",
        "alias": "staging",
        "uri": f"models:/{TRAINED_IN}/1",
    }
    version = history.client.get_model_version_by_alias(TRAINED_IN, "staging")
    assert str(version.version) == "1" and version.run_id == history.good.info["mlflow_run_id"]
    assert version.description == (history.good.path / "MODEL_CARD.md").read_text()
    assert "test/accuracy" in version.tags


def test_promote_with_no_incumbent_checks_loading_only(history: History) -> None:
    result = history.steps["first"]
    assert result.code == 0, result.stderr
    assert history.holders["first"] == "1"
    assert "promoted" in result.stdout and "no version held 'champion'" in result.stdout
    tags = history.promotion("first", "1")
    assert tags["decision"] == "promoted"
    assert tags["previous_version"] == "none" and tags["incumbent_version"] == "none"
    assert tags["checks"] == "loads: ok"
    assert "metric" not in tags  # nothing to compare with


def test_a_better_candidate_is_promoted_with_its_figures_recorded(history: History) -> None:
    result = history.steps["better"]
    assert result.code == 0, result.stdout + result.stderr
    assert history.holders["better"] == "2"
    tags = history.promotion("better", "2")
    assert tags["decision"] == "promoted"
    assert tags["previous_version"] == "1" and tags["incumbent_version"] == "1"
    assert tags["metric"] == "accuracy"
    assert float(tags["difference"]) > 0 and float(tags["ci95_low"]) >= 0
    assert float(tags["candidate_value"]) == pytest.approx(
        history.good.metrics["test"]["accuracy"]["value"]
    )
    assert tags["rows"] == "400" and tags["rows_excluded"] == "0"
    assert tags["checks"] == "loads: ok; inputs: ok"
    assert "accuracy" in result.stdout and "difference" in result.stdout


def test_a_worse_candidate_is_refused_and_the_alias_stays(history: History) -> None:
    result = history.steps["worse"]
    assert result.code == 1, result.stdout + result.stderr
    assert history.holders["worse"] == "2"
    assert "refused" in result.stdout
    tags = history.promotion("worse", "3")
    assert tags["decision"] == "refused" and tags["metric"] == "log_loss"
    # The bad model's log loss is higher: worse, so a negative difference.
    assert float(tags["candidate_value"]) > float(tags["incumbent_value"])
    assert float(tags["ci95_high"]) < 0
    # Of the 1,000 rows given, the 600 both runs trained or validated on were left out.
    assert tags["rows"] == "400" and tags["rows_excluded"] == "600"


def test_force_overrides_and_records_the_reason(history: History) -> None:
    result = history.steps["forced"]
    assert result.code == 0, result.stdout + result.stderr
    assert history.holders["forced"] == "3"
    tags = history.promotion("forced", "3")
    assert tags["decision"] == "forced" and tags["force_reason"] == "hotfix"
    assert tags["previous_version"] == "2"
    assert "may be worse" in tags["reason"] and float(tags["ci95_high"]) < 0


def test_rollback_moves_the_alias_to_its_previous_holder(history: History) -> None:
    result = history.steps["rollback"]
    assert result.code == 0, result.stdout + result.stderr
    assert history.holders["rollback"] == "2"
    assert history.promotion("rollback", "3")["rolled_back_to"] == "2"
    assert "rolled back from version 3 to 2" in result.stdout


def test_too_few_rows_asks_for_data(history: History) -> None:
    result = history.steps["too few"]
    assert result.code == 2
    assert "only 150 labelled rows" in result.stderr and "--data" in result.stderr
    assert history.holders["too few"] == "2"


def test_a_reserved_alias_is_refused_before_anything_is_registered(history: History) -> None:
    result = history.steps["reserved alias"]
    assert (
        result.code == 2 and "'latest' alias name (case insensitive) is reserved" in result.stderr
    )
    versions = history.client.search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]


def test_unknown_names_are_clear_errors(history: History) -> None:
    name = history.steps["unknown name"]
    assert name.code == 2 and "no registered model 'tabluar'" in name.stderr
    assert "did you mean 'tabular'" in name.stderr
    alias = history.steps["unknown alias"]
    assert alias.code == 2 and "no alias 'nightly'" in alias.stderr
    assert "candidate" in alias.stderr and "champion" in alias.stderr
    version = history.steps["unknown version"]
    assert version.code == 2 and "no version 99" in version.stderr
    assert "Traceback" not in name.stderr + alias.stderr + version.stderr


def test_the_champion_loads_in_a_fresh_process_and_predicts_as_mlsmith_predict(
    history: History,
) -> None:
    rows = make_table("binary", rows=50, seed=11).drop(columns="label")
    rows.to_csv(history.root / "rows.csv", index=False)
    script = (
        "import sys, mlflow.pyfunc, pandas as pd; "
        "model = mlflow.pyfunc.load_model(sys.argv[1]); "
        "model.predict(pd.read_csv(sys.argv[2])).to_csv(sys.argv[3], index=False)"
    )
    out = history.root / "served.csv"
    env = {**os.environ, "MLFLOW_TRACKING_URI": history.url}
    done = subprocess.run(
        [sys.executable, "-c", script, f"models:/{NAME}@champion", history.root / "rows.csv", out],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served, expected = pd.read_csv(out), history.good.predict(rows)  # champion is "good" again
    assert list(served.columns) == list(expected.columns)
    assert (served["prediction"].astype(str) == expected["prediction"].astype(str)).all()
    probabilities = [c for c in expected.columns if c.startswith("proba_")]
    np.testing.assert_allclose(served[probabilities], expected[probabilities], atol=1e-5)


def test_register_needs_a_logged_package(history: History) -> None:
    no_package = history.root / "no-package"
    shutil.copytree(history.bad.path, no_package)
    shutil.rmtree(no_package / "package")
    info = json.loads((no_package / "run.json").read_text())
    info.pop("package")
    (no_package / "run.json").write_text(json.dumps(info))
    result = _mlsmith("register", no_package, "--name", NAME)
    assert result.code == 2 and f"mlsmith export {no_package}" in result.stderr

    not_logged = history.root / "not-logged"
    shutil.copytree(history.bad.path, not_logged)
    info = json.loads((not_logged / "run.json").read_text())
    del info["package"]["mlflow_model_id"]
    (not_logged / "run.json").write_text(json.dumps(info))
    result = _mlsmith("register", not_logged, "--name", NAME)
    assert result.code == 2 and "not logged to MLflow" in result.stderr
    assert f"mlsmith export {not_logged}" in result.stderr


# --- the default store, no server -------------------------------------------------------------


def test_register_and_promote_on_the_default_sqlite_store(local_run: mlsmith.Run) -> None:
    run = local_run
    uri = run.info["tracking_uri"]
    assert uri == f"sqlite:///{run.path.parents[1] / 'mlflow.db'}"

    first = mlsmith.register(run, "local", alias="champion")  # the run's own store
    second = mlsmith.register(run.path, "local")
    assert (first.version, second.version, first.tracking_uri) == ("1", "2", uri)
    # The same model twice: a difference of exactly 0 is "not worse".
    decision = mlsmith.promote("local", "2", "champion", tracking_uri=uri)
    assert decision.promoted and decision.exit_code == 0 and decision.incumbent == "1"
    assert decision.figures is not None and decision.figures.difference == 0.0
    assert decision.figures.ci95 == (0.0, 0.0) and decision.figures.rows == 240
    assert decision.figures.metric == "accuracy"
    assert [c.name for c in decision.checks] == ["loads", "inputs"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_registered_model("local").aliases == {"champion": 2}
    tags = client.get_model_version("local", "1").tags
    assert tags["mlsmith.promotion.champion.previous_version"] == "none"  # from register
    with pytest.raises(ConfigError, match="not a binary metric"):
        mlsmith.promote("local", "1", "champion", metric="rsme", tracking_uri=uri)
    with pytest.raises(ConfigError, match="--reason goes with --force"):
        mlsmith.promote("local", "1", "champion", reason="why", tracking_uri=uri)
    back = mlsmith.promote("local", None, "champion", rollback=True, tracking_uri=uri)
    assert back.rollback and back.holder == "1"
    assert client.get_registered_model("local").aliases == {"champion": 1}


def test_paired_difference_is_a_paired_bootstrap_of_the_metric() -> None:
    from mlsmith.evaluation import point_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=500)
    sharp = np.clip(y + rng.normal(0, 0.3, size=500), 0.01, 0.99)  # P(class 1), mostly right
    vague = np.full(500, 0.5) + rng.normal(0, 0.05, size=500)
    a, b = np.column_stack([1 - sharp, sharp]), np.column_stack([1 - vague, vague])
    value_a, value_b, diff, low, high = paired_difference("binary", y, a, b, "accuracy")
    assert value_a == pytest.approx(point_metrics("binary", y, a)["accuracy"])
    assert value_b == pytest.approx(point_metrics("binary", y, b)["accuracy"])
    assert diff == pytest.approx(value_a - value_b) and 0 < low < diff < high
    # The same outputs: every resample's difference is exactly zero.
    assert paired_difference("binary", y, a, a, "accuracy")[2:] == (0.0, 0.0, 0.0)
    # Same seed, same interval.
    assert paired_difference("binary", y, a, b, "accuracy") == (value_a, value_b, diff, low, high)
