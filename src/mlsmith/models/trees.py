"""Gradient-boosted trees for tables: LightGBM and XGBoost behind the same Model contract.

Trees train on the tabular preprocessor's inputs as one matrix (n, n_numeric + n_categorical):
the standardised, imputed numerics (a monotone transform, which trees do not mind) and the
categorical codes (0 = unseen), which both libraries split on natively. Targets are the task's
encoding, so the raw outputs are exactly what ``task.decode`` expects: one logit (binary), C
logits (multiclass) or the standardised value (regression), as for the networks.

Every boosting round reports the training and validation losses (the task's loss: log loss or
the MSE of the standardised target); :class:`~mlsmith.models.boosting.RoundRecorder` turns them
into history rows, stops when the validation loss has not improved for ``early_stopping_rounds``
and the best round's model is the one saved, as ``model/lightgbm.txt`` or
``model/xgboost.json``. lightgbm and xgboost are imported only when such a model is built.

Resuming (``mlsmith train --resume``) retrains from scratch: boosting has no mid-training
checkpoint, and with the same seed and data the retrained model is the same.
"""

from __future__ import annotations

import importlib
import logging
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlsmith.config import Config, LightGBMConfig, XGBoostConfig
from mlsmith.errors import MissingExtraError
from mlsmith.files import atomic_path
from mlsmith.models.base import FitContext, FitSummary, Model
from mlsmith.models.boosting import RoundRecorder
from mlsmith.runtime.engines import available_cores, feature_matrix
from mlsmith.tasks import RankingTask

if TYPE_CHECKING:
    from mlsmith.data.base import PreparedData, Preprocessor, Split

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def import_library(package: str) -> ModuleType:
    """The boosting library, or a clear error naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtraError(package, "trees", f"model.type {package}") from None


class TreeModel(Model):
    """A boosted-tree family; its fitted form is one model file under ``model/``."""

    library_name: ClassVar[str]
    model_file: ClassVar[str]

    def __init__(self, config: Config, preprocessor: Preprocessor) -> None:
        super().__init__(config, preprocessor)
        # Here rather than at fit: a missing library must fail before a run directory exists.
        self.library = import_library(self.library_name)
        self.booster: Any = None
        self.n_numeric = len(getattr(preprocessor, "numeric", []))
        self.n_categorical = len(getattr(preprocessor, "categorical", []))

    @property
    def settings(self) -> LightGBMConfig | XGBoostConfig:
        cfg = self.config.model
        if not isinstance(cfg, (LightGBMConfig, XGBoostConfig)):  # mlsmith.families routes by type
            raise TypeError(f"{type(self).__name__} got a model section of type '{cfg.type}'")
        return cfg

    @property
    def threads(self) -> int:
        return self.settings.n_jobs or available_cores()

    # --- what each library provides ------------------------------------------------------------

    @abstractmethod
    def boost(self, train: Rows, val: Rows, recorder: RoundRecorder) -> Any:
        """Train with ``recorder.after_round`` called every round; return the booster."""

    @abstractmethod
    def raw_outputs(self, booster: Any, x: np.ndarray, rounds: int | None = None) -> np.ndarray:
        """Raw margins (n, n_outputs) of ``booster``'s first ``rounds`` rounds (None: all)."""

    @abstractmethod
    def serialize(self, booster: Any, rounds: int) -> bytes:
        """The model file's bytes, keeping the first ``rounds`` rounds."""

    @abstractmethod
    def deserialize(self, content: bytes) -> Any:
        """A booster from the model file's bytes."""

    # --- the Model contract ----------------------------------------------------------------------

    def fit(self, data: PreparedData, context: FitContext) -> FitSummary:
        if context.resume:
            log.info("%s: resuming retrains from scratch (same seed, same model)", self.family)
        cfg = self.settings
        train = Rows.of(data.train)
        val = Rows.of(data.val)
        recorder = RoundRecorder(
            self.task,
            val.y,
            context.callbacks,
            val_groups=val.groups,
            rounds=cfg.n_estimators,
            lr=cfg.learning_rate,
            patience=cfg.early_stopping_rounds,
            n_train=len(train.y),
        )
        recorder.start()
        try:
            booster = self.boost(train, val, recorder)
            # Early stopping keeps the best round; without it, every round that ran.
            kept = recorder.best_round if cfg.early_stopping_rounds else recorder.rounds_run
            recorder.finish(kept, lambda r: self.task.decode(self.raw_outputs(booster, val.x, r)))
            path = Path(context.run_dir) / MODEL_DIR / self.model_file
            with atomic_path(path) as tmp:
                tmp.write_bytes(self.serialize(booster, kept))
            # Predict with the saved model, so a reloaded run gives bit-identical outputs.
            self.booster = self.deserialize(path.read_bytes())
        except BaseException as error:
            recorder.fail(error)
            raise
        stopped = recorder.rounds_run < cfg.n_estimators
        return FitSummary(
            recorder.state.history,
            best_epoch=kept,
            stopped_early=stopped,
            observations=self._observations(recorder, kept),
        )

    def predict_raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError(f"{type(self).__name__}: predict before fit or load")
        return self.raw_outputs(self.booster, feature_matrix(inputs))

    @classmethod
    def load(cls, run_dir: Path, config: Config, preprocessor: Preprocessor) -> TreeModel:
        model = cls(config, preprocessor)
        model.booster = model.deserialize((Path(run_dir) / MODEL_DIR / cls.model_file).read_bytes())
        return model

    def artifacts(self, run_dir: Path) -> list[Path]:
        return [Path(run_dir) / MODEL_DIR / self.model_file]

    def _observations(self, recorder: RoundRecorder, kept: int) -> list[str]:
        ran = recorder.rounds_run
        if recorder.stopped_by_patience:
            return [
                f"early stopping after round {ran}: val/loss did not improve for "
                f"{recorder.patience} rounds; best round {kept}"
            ]
        if recorder.state.should_stop and ran < self.settings.n_estimators:
            return [f"stopped after round {ran} at a callback's request; kept round {kept}"]
        return []

    def decoded_from_library(self, predictions: np.ndarray) -> np.ndarray:
        """The libraries' own validation predictions (built-in objectives: probabilities, or the
        standardised value) to what ``task.decode`` returns: (n, C) probabilities or values."""
        values = np.asarray(predictions, dtype=np.float64)
        if self.task.kind == "ranking":  # the ranking objectives' outputs are raw scores
            return self.task.decode(values.reshape(-1, 1))
        if self.task.kind == "binary":
            positive = values.reshape(-1)
            return np.stack([1.0 - positive, positive], axis=1)
        if self.task.kind == "multiclass":
            return values.reshape(-1, self.task.n_outputs)
        return self.task.decode(values.reshape(-1, 1))

    def _shaped(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float64).reshape(len(raw), self.task.n_outputs)


@dataclass(frozen=True)
class Rows:
    """One split as the libraries take it: the feature matrix, the encoded target and, for a
    ranking task, the query of each row, with the rows ordered query by query (both libraries
    need a query's items contiguous)."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None

    @classmethod
    def of(cls, split: Split) -> Rows:
        x = feature_matrix(split.inputs)
        if split.groups is None:
            return cls(x, split.target)
        order = np.argsort(split.groups, kind="stable")
        return cls(x[order], split.target[order], split.groups[order])

    @property
    def query_sizes(self) -> np.ndarray | None:
        """Items per query, queries in row order (LightGBM's ``group``)."""
        if self.groups is None:
            return None
        _, sizes = np.unique(self.groups, return_counts=True)  # the rows are sorted by query
        return sizes

    @property
    def query_numbers(self) -> np.ndarray | None:
        """Each row's query as a number, ascending with the rows (XGBoost's ``qid``)."""
        if self.groups is None:
            return None
        return np.unique(self.groups, return_inverse=True)[1].reshape(-1)


def ranking_loss(ndcg: float) -> float:
    """What the ranking objectives report as the loss to stop on: 1 - NDCG@k, lower is better."""
    return 1.0 - ndcg


class LightGBMModel(TreeModel):
    family = "lightgbm"
    library_name = "lightgbm"
    model_file = "lightgbm.txt"

    # The task's loss as LightGBM's objective and evaluation metric.
    OBJECTIVES: ClassVar[dict[str, tuple[str, str]]] = {
        "binary": ("binary", "binary_logloss"),
        "multiclass": ("multiclass", "multi_logloss"),
        "regression": ("regression", "l2"),
        "ranking": ("lambdarank", "ndcg"),
    }

    def params(self) -> dict[str, Any]:
        cfg = self.settings
        assert isinstance(cfg, LightGBMConfig)
        objective, metric = self.OBJECTIVES[self.task.kind]
        params: dict[str, Any] = {
            "objective": objective,
            "metric": metric,
            # LightGBM's own names for the scikit-learn-style keys of the config.
            "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.num_leaves,
            "max_depth": cfg.max_depth,
            "min_data_in_leaf": cfg.min_child_samples,
            "lambda_l1": cfg.reg_alpha,
            "lambda_l2": cfg.reg_lambda,
            "bagging_fraction": cfg.subsample,
            "bagging_freq": cfg.subsample_freq,
            "feature_fraction": cfg.colsample_bytree,
            "seed": self.config.seed,
            "num_threads": self.threads,
            "verbosity": -1,
        }
        if self.task.kind == "multiclass":
            params["num_class"] = self.task.n_outputs
        if isinstance(self.task, RankingTask):
            params["eval_at"] = [max(self.task.ks)]  # the NDCG early stopping watches
        return params

    def boost(self, train: Rows, val: Rows, recorder: RoundRecorder) -> Any:
        lgb = self.library
        categorical = list(range(self.n_numeric, self.n_numeric + self.n_categorical))
        train_set = lgb.Dataset(
            train.x,
            label=train.y,
            group=train.query_sizes,
            categorical_feature=categorical,
            free_raw_data=False,
        )
        val_set = lgb.Dataset(val.x, label=val.y, group=val.query_sizes, reference=train_set)

        params = self.params()
        metric = params["metric"]
        if "eval_at" in params:
            metric = f"ndcg@{params['eval_at'][0]}"
        # The losses the recorder stops on: the task's loss, or 1 - NDCG for a ranking.
        as_loss = ranking_loss if self.task.kind == "ranking" else float
        latest: dict[str, np.ndarray] = {}

        def capture(predictions: np.ndarray, dataset: Any) -> tuple[str, float, bool]:
            # LightGBM keeps the validation predictions up to date every round and hands them
            # to custom metrics; keeping a reference costs nothing, predicting again would cost
            # a pass over every tree so far.
            if dataset is val_set:
                latest["val"] = predictions
            return "mlsmith_capture", 0.0, False

        def train_loss(booster: Any) -> float:
            # From LightGBM's running training scores: no prediction pass over the trees.
            return as_loss(next(v for _, name, v, _ in booster.eval_train() if name == metric))

        def after_round(env: Any) -> None:
            val_loss = as_loss(
                next(value for _, name, value, _ in env.evaluation_result_list if name == metric)
            )
            round_ = env.iteration + 1
            stop = recorder.after_round(
                round_,
                val_loss,
                lambda: train_loss(env.model),
                lambda: self.decoded_from_library(latest["val"]),
            )
            if stop:
                # LightGBM's own way out of lgb.train; it keeps the trees grown so far.
                raise lgb.callback.EarlyStopException(
                    recorder.best_round - 1, env.evaluation_result_list
                )

        after_round.order = 30  # type: ignore[attr-defined]  # after LightGBM's own callbacks
        return lgb.train(
            params,
            train_set,
            num_boost_round=self.settings.n_estimators,
            valid_sets=[val_set],
            valid_names=["val"],
            feval=capture,
            callbacks=[after_round],
        )

    def raw_outputs(self, booster: Any, x: np.ndarray, rounds: int | None = None) -> np.ndarray:
        # num_iteration=None would mean "the best iteration" on a booster that has one; be explicit.
        rounds = rounds if rounds is not None else booster.current_iteration()
        return self._shaped(booster.predict(x, num_iteration=rounds, raw_score=True))

    def serialize(self, booster: Any, rounds: int) -> bytes:
        text: str = booster.model_to_string(num_iteration=rounds)
        return text.encode()

    def deserialize(self, content: bytes) -> Any:
        return self.library.Booster(model_str=content.decode())


class XGBoostModel(TreeModel):
    family = "xgboost"
    library_name = "xgboost"
    model_file = "xgboost.json"

    OBJECTIVES: ClassVar[dict[str, tuple[str, str]]] = {
        "binary": ("binary:logistic", "logloss"),
        "multiclass": ("multi:softprob", "mlogloss"),
        "regression": ("reg:squarederror", "rmse"),
        "ranking": ("rank:ndcg", "ndcg"),
    }

    def params(self) -> dict[str, Any]:
        cfg = self.settings
        assert isinstance(cfg, XGBoostConfig)
        objective, metric = self.OBJECTIVES[self.task.kind]
        params: dict[str, Any] = {
            "objective": objective,
            "eval_metric": self._metric(metric),
            "learning_rate": cfg.learning_rate,
            "max_depth": cfg.max_depth,
            "min_child_weight": cfg.min_child_weight,
            "alpha": cfg.reg_alpha,
            "lambda": cfg.reg_lambda,
            "subsample": cfg.subsample,
            "colsample_bytree": cfg.colsample_bytree,
            "tree_method": cfg.tree_method,
            "seed": self.config.seed,
            "nthread": self.threads,
            "verbosity": 0,
        }
        if self.task.kind == "multiclass":
            params["num_class"] = self.task.n_outputs
        return params

    def _metric(self, metric: str) -> str:
        """XGBoost's name of the evaluation metric; NDCG at the largest k for a ranking."""
        if isinstance(self.task, RankingTask):
            return f"{metric}@{max(self.task.ks)}"
        return metric

    def matrix(
        self, x: np.ndarray, label: np.ndarray | None = None, qid: np.ndarray | None = None
    ) -> Any:
        types = ["q"] * self.n_numeric + ["c"] * self.n_categorical
        return self.library.DMatrix(
            x,
            label=label,
            qid=qid,
            feature_types=types,
            enable_categorical=True,
            nthread=self.threads,
        )

    def boost(self, train: Rows, val: Rows, recorder: RoundRecorder) -> Any:
        xgb = self.library
        train_matrix = self.matrix(train.x, train.y, train.query_numbers)
        val_matrix = self.matrix(val.x, val.y, val.query_numbers)
        metric = self._metric(self.OBJECTIVES[self.task.kind][1])

        def as_loss(value: float) -> float:
            if self.task.kind == "ranking":
                return ranking_loss(value)
            # RMSE squared is the task's loss for regression (the MSE of the standardised target).
            return value**2 if metric == "rmse" else value

        model = self
        latest: dict[str, np.ndarray] = {}

        def capture(predictions: np.ndarray, matrix: Any) -> tuple[str, float]:
            # XGBoost hands custom metrics its cached, transformed predictions for each eval
            # set every round: the validation outputs without predicting again.
            if matrix is val_matrix:
                latest["val"] = predictions
            return "mlsmith_capture", 0.0

        def train_loss(booster: Any) -> float:
            # "[12]\ttrain-logloss:0.123": XGBoost caches the training predictions.
            text: str = booster.eval(train_matrix, name="train")
            return as_loss(float(text.rsplit(":", 1)[1]))

        callback_base: Any = xgb.callback.TrainingCallback

        class AfterRound(callback_base):
            def after_iteration(self, booster: Any, epoch: int, evals_log: Any) -> bool:
                stop: bool = recorder.after_round(
                    epoch + 1,
                    as_loss(evals_log["val"][metric][-1]),
                    lambda: train_loss(booster),
                    lambda: model.decoded_from_library(latest["val"]),
                )
                return stop

        return xgb.train(
            self.params(),
            train_matrix,
            num_boost_round=self.settings.n_estimators,
            evals=[(val_matrix, "val")],
            custom_metric=capture,
            callbacks=[AfterRound()],
            verbose_eval=False,
        )

    def raw_outputs(self, booster: Any, x: Any, rounds: int | None = None) -> np.ndarray:
        data = x if isinstance(x, self.library.DMatrix) else self.matrix(x)
        # iteration_range (0, 0) means every round.
        margin = booster.predict(data, output_margin=True, iteration_range=(0, rounds or 0))
        return self._shaped(margin)

    def serialize(self, booster: Any, rounds: int) -> bytes:
        content: bytes = booster[:rounds].save_raw(raw_format="json")
        return bytes(content)

    def deserialize(self, content: bytes) -> Any:
        booster = self.library.Booster()
        booster.load_model(bytearray(content))
        booster.set_param({"nthread": self.threads})
        return booster
