"""The ranking task end to end: config, grouped splits, LightGBM and XGBoost rankers, metrics
over queries with intervals, the baseline, predict's score and rank, the package, check, tune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import config_dict

import mlsmith
from mlsmith.config import Config
from mlsmith.errors import DataError
from mlsmith.tasks import RankingTask, task_from_dict


def make_ranking(queries: int = 60, seed: int = 0) -> pd.DataFrame:
    """Queries of 4-12 items whose relevance (0-3) follows two features; rows shuffled, so a
    query's items are scattered through the file as in real click logs."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for q in range(queries):
        n = int(rng.integers(4, 13))
        x = rng.normal(size=(n, 3))
        signal = 1.5 * x[:, 0] + x[:, 1] + rng.normal(scale=0.5, size=n)
        relevance = np.digitize(signal, [0.5, 1.5, 2.5])
        kind = rng.choice(["news", "shop", "video"], size=n)
        for i in range(n):
            rows.append(
                {"qid": f"q{q:03d}", "a": x[i, 0], "b": x[i, 1], "noise": x[i, 2], "kind": kind[i]}
                | {"rel": int(relevance[i])}
            )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def ranking_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    data = tmp_path / "rank.csv"
    if not data.exists():
        make_ranking().to_csv(data, index=False)
    config = config_dict(data, tmp_path / "runs", **sections)
    config["data"] = {"path": str(data), "target": "rel", "group_column": "qid"} | sections.get(
        "data", {}
    )
    config["model"] = sections.get("model", {"type": "lightgbm", "n_estimators": 60})
    return config


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "rank.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- config -----------------------------------------------------------------------------------


def test_a_query_id_means_a_ranking_split_by_query_with_a_tree_ranker() -> None:
    cfg = Config.model_validate({"data": {"path": "r.csv", "target": "rel", "group_column": "q"}})
    assert cfg.data.task == "ranking"
    assert cfg.data.split.group == "q"
    assert cfg.model.type == "lightgbm"
    assert cfg.eval.ndcg_at == [1, 5, 10]
    # The saved config says so, and loads back the same.
    assert Config.model_validate(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "extra", "message"),
    [
        ({"task": "ranking"}, {}, "needs group_column"),
        ({"group_column": "q", "task": "binary"}, {}, "use data.split.group"),
        ({"group_column": "q"}, {"model": {"type": "sklearn"}}, "cannot rank"),
        ({"group_column": "q", "split": {"time": "t"}}, {}, "splits by query"),
        ({"group_column": "q", "split": {"group": "user"}}, {}, "differs from group_column"),
        ({"group_column": "rel"}, {}, "is the target"),
        ({"group_column": "q"}, {"eval": {"ndcg_at": [0, 5]}}, "at least 1"),
    ],
)
def test_ranking_config_mistakes_are_named(
    data: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    raw = {"data": {"path": "r.csv", "target": "rel", **data}, **extra}
    with pytest.raises(ValueError, match=message):
        Config.model_validate(raw)


def test_a_bad_ranking_config_is_exit_2_from_the_cli(tmp_path: Path, cli: Any) -> None:
    config = ranking_config(tmp_path, model={"type": "sklearn"})
    result = cli("train", write(tmp_path, config))
    assert result.code == 2
    assert "cannot rank" in result.stderr and "Traceback" not in result.stderr


# --- the task ---------------------------------------------------------------------------------


def test_relevance_must_be_whole_grades_and_the_task_round_trips() -> None:
    task = RankingTask([3, 1])
    assert task.metric_names == ("ndcg_3", "ndcg_1", "mrr", "map")
    assert task.encode(pd.Series([0, 2, 3], name="rel")).tolist() == [0.0, 2.0, 3.0]
    assert task.decode(np.array([[0.5], [-1.0]])).tolist() == [0.5, -1.0]
    assert not task.is_classification
    again = task_from_dict(json.loads(json.dumps(task.to_dict())))
    assert isinstance(again, RankingTask) and again.ks == [3, 1]
    for bad in ([0, 1.5], [0, -1], [0, "high"], [0, 31]):
        with pytest.raises(DataError, match="relevance must be a whole number"):
            task.encode(pd.Series(bad, name="rel"))


# --- training, metrics, prediction ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, mlsmith.Run]:
    tmp_path = tmp_path_factory.mktemp("ranking")
    config = ranking_config(
        tmp_path, eval={"bootstrap": 200, "baseline": True}, export={"package": True}
    )
    return tmp_path, mlsmith.train(config, progress=False)


def test_a_ranker_is_scored_per_query_with_intervals_and_beats_a_random_order(
    trained: tuple[Path, mlsmith.Run],
) -> None:
    import jsonschema

    from mlsmith.run import metrics_schema

    _, run = trained
    metrics = json.loads((run.path / "metrics.json").read_text())
    jsonschema.validate(metrics, metrics_schema())
    test = metrics["test"]
    assert set(test) == {"ndcg_1", "ndcg_5", "ndcg_10", "mrr", "map"}
    for entry in test.values():
        low, high = entry["ci95"]
        assert 0.0 <= low <= entry["value"] <= high <= 1.0
    # A learnable signal: far above the random order the baseline section holds.
    assert test["ndcg_10"]["value"] > metrics["majority"]["test"]["ndcg_10"]["value"] + 0.15
    assert metrics["vs_baseline"]["test"]["ndcg_10"]["a"] == pytest.approx(test["ndcg_10"]["value"])
    info = json.loads((run.path / "run.json").read_text())
    assert info["baseline"]["metric"] == "ndcg_10"
    assert info["data"]["task"] == "ranking"
    # Per-round history has the ranking metrics; val/loss is 1 - NDCG@10 (LightGBM's).
    history = pd.read_csv(run.path / "history.csv")
    assert {"val/ndcg_10", "val/mrr", "val/map"} <= set(history.columns)
    assert history["val/loss"].between(0.0, 1.0).all()


def test_no_query_straddles_two_splits(tmp_path: Path) -> None:
    from mlsmith.data.tabular import prepare

    data = prepare(Config.model_validate(ranking_config(tmp_path)))
    splits = [set(s.groups.tolist()) for s in (data.train, data.val, data.test) if s is not None]
    assert all(len(part) > 0 for part in splits)
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2])
    assert not (splits[1] & splits[2])
    assert "qid" not in data.preprocessor.features  # a query id is never a feature


def test_predict_writes_the_query_score_and_rank_within_each_query(
    trained: tuple[Path, mlsmith.Run], cli: Any
) -> None:
    tmp_path, run = trained
    out = tmp_path / "predictions.csv"
    result = cli("predict", run.path, "-i", tmp_path / "rank.csv", "-o", out)
    assert result.code == 0, result.stderr
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == ["qid", "score", "rank"]
    source = pd.read_csv(tmp_path / "rank.csv")
    assert predicted["qid"].tolist() == source["qid"].tolist()
    for _, query in predicted.groupby("qid"):
        assert sorted(query["rank"]) == list(range(1, len(query) + 1))
        best = query.sort_values("score", ascending=False, kind="stable")
        assert best["rank"].tolist() == list(range(1, len(query) + 1))
    # Rows without a query id are one query's candidates, ranked against each other.
    alone = tmp_path / "candidates.csv"
    source.drop(columns=["qid"]).head(6).to_csv(alone, index=False)
    ranked = run.predict(pd.read_csv(alone))
    assert sorted(ranked["rank"]) == [1, 2, 3, 4, 5, 6]


def test_the_package_ranks_as_mlsmith_predict_does(trained: tuple[Path, mlsmith.Run]) -> None:
    from mlsmith.runtime.package import Package

    tmp_path, run = trained
    rows = pd.read_csv(tmp_path / "rank.csv").head(80)
    expected = run.predict(rows)
    got = Package(run.path / "package").predict(rows)
    assert list(got.columns) == ["score", "rank"]
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6, atol=1e-9)
    assert got["rank"].tolist() == expected["rank"].tolist()


def test_evaluate_on_a_file_needs_its_query_ids(
    trained: tuple[Path, mlsmith.Run], cli: Any
) -> None:
    tmp_path, run = trained
    rows = pd.read_csv(tmp_path / "rank.csv")
    scored = run.evaluate(rows, name="again")
    assert set(scored["again"]) == {"ndcg_1", "ndcg_5", "ndcg_10", "mrr", "map"}
    no_ids = tmp_path / "no_ids.csv"
    rows.drop(columns=["qid"]).to_csv(no_ids, index=False)
    result = cli("evaluate", run.path, "--data", no_ids)
    assert result.code == 2
    assert "'qid' not found" in result.stderr


def test_a_reloaded_run_scores_the_same(trained: tuple[Path, mlsmith.Run]) -> None:
    tmp_path, run = trained
    rows = pd.read_csv(tmp_path / "rank.csv").head(50)
    again = mlsmith.load_run(run.path)
    pd.testing.assert_frame_equal(again.predict(rows), run.predict(rows))


def test_xgboost_ranks_too(tmp_path: Path) -> None:
    config = ranking_config(tmp_path, model={"type": "xgboost", "n_estimators": 40})
    run = mlsmith.train(config, progress=False)
    test = json.loads((run.path / "metrics.json").read_text())["test"]
    assert test["ndcg_10"]["value"] > 0.7
    predictions = pd.read_csv(run.path / "test_predictions.csv")
    assert list(predictions.columns) == ["query", "target", "score", "rank"]


def test_ranking_data_errors_name_the_row(tmp_path: Path, cli: Any) -> None:
    frame = make_ranking(queries=20)
    frame["rel"] = frame["rel"].astype(float)
    frame.loc[7, "rel"] = 1.5
    frame.to_csv(tmp_path / "rank.csv", index=False)
    result = cli("train", write(tmp_path, ranking_config(tmp_path)))
    assert result.code == 2
    assert "1.5" in result.stderr and "relevance must be a whole number" in result.stderr
    frame = make_ranking(queries=20)
    frame.loc[3, "qid"] = None
    frame.to_csv(tmp_path / "rank.csv", index=False)
    result = cli("train", write(tmp_path, ranking_config(tmp_path)))
    assert result.code == 2
    assert "1 rows have no value in the group column 'qid'" in result.stderr


def test_check_reports_the_queries_of_each_split(tmp_path: Path, cli: Any) -> None:
    frame = make_ranking(queries=40)
    # A query whose items are all irrelevant counts in no metric: check warns when one is held out.
    frame.loc[frame["qid"].isin([f"q{q:03d}" for q in range(0, 40, 2)]), "rel"] = 0
    frame.to_csv(tmp_path / "rank.csv", index=False)
    result = cli("check", write(tmp_path, ranking_config(tmp_path)), "--json")
    assert result.code in (0, 1), result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["results"]}
    assert checks["queries"]["status"] == "warn"
    assert "no relevant item" in checks["queries"]["detail"]


def test_cross_validation_folds_whole_queries_and_keeps_the_best_ndcg(tmp_path: Path) -> None:
    config = ranking_config(
        tmp_path,
        model={"type": "lightgbm", "n_estimators": 30},
        eval={"cv": {"folds": 3, "final": "best_fold"}},
    )
    run = mlsmith.train(config, progress=False)
    info = json.loads((run.path / "run.json").read_text())
    assert info["cv"]["scheme"] == "grouped by 'qid'"
    assert info["cv"]["selected_on"] == "ndcg_10"
    held = json.loads((run.path / "metrics.json").read_text())["cv"]["held_out"]
    folds = held["ndcg_10"]["folds"]
    assert len(folds) == 3 and all(0.0 < v <= 1.0 for v in folds)
    assert info["cv"]["kept_fold"] == int(np.argmax(folds)) + 1
    # No query's items in two folds.
    train = pd.read_csv(tmp_path / "rank.csv")
    seen: dict[str, int] = {}
    for fold in range(1, 4):
        rows = json.loads((run.path / "cv" / f"fold-{fold}" / "fold.json").read_text())
        for row in rows["held_out_rows"]:
            query = train.loc[int(row), "qid"]
            assert seen.setdefault(query, fold) == fold


def test_tune_maximises_a_ranking_metric(tmp_path: Path) -> None:
    config = ranking_config(
        tmp_path,
        model={"type": "lightgbm", "n_estimators": 20},
        tune={
            "trials": 2,
            "metric": "val/ndcg_10",
            "space": {"model.num_leaves": {"type": "int", "low": 4, "high": 16}},
        },
    )
    result = mlsmith.tune(config)
    assert result.direction == "maximize"
    assert 0.0 < result.best_value <= 1.0


def test_a_served_ranker_ranks_each_request_s_rows(trained: tuple[Path, mlsmith.Run]) -> None:
    """A real server: every request is one query's candidates, scored as the package scores
    them and ranked among themselves, over v2 JSON and the plain JSON predict; concurrent
    requests batched together are still ranked apart. Label feedback is refused clearly."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from tests.serving.conftest import start_server

    from mlsmith.runtime.package import Package

    tmp_path, run = trained
    rows = pd.read_csv(tmp_path / "rank.csv")
    features = rows.drop(columns=["qid", "rel"])
    package = Package(run.path / "package")
    server = start_server([f"rank={run.path / 'package'}"])
    try:
        meta = httpx.get(server.url + "/v2/models/rank", timeout=30).json()
        assert [o["name"] for o in meta["outputs"]] == ["score", "rank"]

        def v2(query: pd.DataFrame) -> dict[str, Any]:
            inputs = [
                {
                    "name": c,
                    "shape": [len(query)],
                    "datatype": "BYTES" if c == "kind" else "FP64",
                    "data": query[c].tolist(),
                }
                for c in query.columns
            ]
            answer = httpx.post(
                server.url + "/v2/models/rank/infer", json={"inputs": inputs}, timeout=30
            )
            assert answer.status_code == 200, answer.text
            return {o["name"]: o["data"] for o in answer.json()["outputs"]}

        queries = [features.iloc[i : i + 7] for i in range(0, 70, 7)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(v2, queries))
        for query, answer in zip(queries, answers, strict=True):
            expected = package.predict(query)  # rows without a query id: one query
            np.testing.assert_allclose(answer["score"], expected["score"], rtol=1e-6)
            assert answer["rank"] == expected["rank"].tolist()
            assert sorted(answer["rank"]) == list(range(1, 8))
        plain = httpx.post(
            server.url + "/v2/models/rank/predict",
            json={"rows": queries[0].to_dict(orient="records")},
            timeout=30,
        ).json()["predictions"]
        assert [p["rank"] for p in plain] == answers[0]["rank"]
        refused = httpx.post(
            server.url + "/v2/models/rank/feedback",
            json={"request_ids": ["x"], "labels": [[1, 0]]},
            timeout=30,
        )
        assert refused.status_code == 400 and "ranking model" in refused.text
        assert httpx.get(server.url + "/v2/models/rank/ab", timeout=30).json()["feedback"] is None
    finally:
        server.stop()


# --- the network ranker -----------------------------------------------------------------------


def test_the_listwise_loss_is_listnet_with_ndcg_gains_per_query() -> None:
    import torch

    from mlsmith.losses import listwise_loss

    scores = torch.tensor([2.0, 0.0, 1.0, 5.0, -1.0, 0.5, 0.3])
    relevance = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0])
    queries = torch.tensor([7, 7, 7, 3, 3, 9, 9])  # query 3 has nothing relevant: left out
    got = listwise_loss(scores, relevance, queries)

    def one(s: list[float], rel: list[float]) -> float:
        p = torch.log_softmax(torch.tensor(s), 0)
        gains = torch.exp2(torch.tensor(rel)) - 1
        return float(-(gains / gains.sum() * p).sum())

    expected = (one([2.0, 0.0, 1.0], [1.0, 0.0, 2.0]) + one([0.5, 0.3], [1.0, 0.0])) / 2
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # Its gradient raises the most relevant item's score and lowers the irrelevant one's.
    scores.requires_grad_(True)
    listwise_loss(scores, relevance, queries).backward()
    assert scores.grad is not None
    assert scores.grad[2] < 0 < scores.grad[1]
    assert scores.grad[3] == 0 and scores.grad[4] == 0
    # A batch without any relevant item still gives a loss to back-propagate (zero).
    empty = listwise_loss(torch.zeros(3, requires_grad=True), torch.zeros(3), torch.zeros(3))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_ranking_batches_shuffle_whole_queries_reproducibly() -> None:
    from mlsmith.data.batches import BatchOptions, QueryBatches

    queries = np.repeat(np.array(["b", "a", "c", "d", "e"]), [3, 5, 2, 4, 6])
    inputs = {"numeric": np.arange(20, dtype=np.float32).reshape(20, 1)}
    relevance = np.arange(20, dtype=np.float32) % 3

    def epoch_orders(seed: int) -> list[list[str]]:
        batches = QueryBatches(
            inputs, relevance, queries, BatchOptions(8, shuffle=True, seed=seed, train=True)
        )
        orders = []
        for _ in range(3):
            rows = [
                int(i)
                for step in batches.steps()
                for batch_inputs, target in step
                for i in batch_inputs["numeric"][:, 0]
            ]
            assert sorted(rows) == list(range(20))  # every row once an epoch
            assert batches.n_steps() == 3  # fixed, whatever the query order
            seen = [str(queries[i]) for i in rows]
            # Each query's rows are together, in table order.
            runs = [q for j, q in enumerate(seen) if j == 0 or seen[j - 1] != q]
            assert sorted(runs) == sorted(set(queries.tolist()))
            orders.append(runs)
        return orders

    first = epoch_orders(seed=1)
    assert first == epoch_orders(seed=1)
    assert len({tuple(order) for order in first}) > 1  # queries reshuffled every epoch


def test_a_network_ranks_through_the_trainer_and_its_package(tmp_path: Path) -> None:
    config = ranking_config(
        tmp_path,
        model={"type": "mlp", "hidden": [32], "dropout": 0.0},
        train={"epochs": 15, "batch_size": 64},
        export={"package": True},
    )
    run = mlsmith.train(config, progress=False)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["test"]["ndcg_10"]["value"] > 0.8
    history = pd.read_csv(run.path / "history.csv")
    assert {"val/ndcg_10", "val/map"} <= set(history.columns)
    assert history["train/loss"].iloc[-1] < history["train/loss"].iloc[0]
    rows = pd.read_csv(tmp_path / "rank.csv").head(60)
    from mlsmith.runtime.package import Package

    got = Package(run.path / "package").predict(rows)
    expected = run.predict(rows)
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-4, atol=1e-5)


def test_reports_show_a_ranking_s_own_plots_and_limits(trained: tuple[Path, mlsmith.Run]) -> None:
    _, run = trained
    mlsmith.report(run.path)
    markdown = (run.path / "REPORT.md").read_text()
    assert "resamples of the split's queries" in markdown
    assert "| random order |" in markdown
    html = (run.path / "report.html").read_text()
    for title in ("Relevance by rank", "NDCG@10 per query"):
        assert f'alt="{title}"' in html
        assert f"{title}: not recorded" not in html
