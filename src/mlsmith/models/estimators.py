"""Any scikit-learn-style estimator on tables, behind the same Model contract as the networks.

``model.estimator`` names a class by its dotted path (``auto``: HistGradientBoosting, the
classifier or the regressor by task); ``model.params`` are its constructor's arguments. The
estimator is built when the model is, so a path that does not import, is not a class or lacks
``fit``/``predict`` (``predict_proba`` for classification), and parameters its constructor or
its own validation refuse, are ConfigErrors naming ``model.estimator`` or ``model.params``
before a run directory exists.

Inputs are the tabular preprocessor's arrays as one float64 matrix: the standardised, imputed
numerics, then the categorical codes (0 = unseen in training), either as they are for an
estimator that splits on categories natively (``categorical_features``, set to those columns
unless ``model.params`` set it), one-hot, or as ordinal numbers (``model.categorical``).
Targets are the task's encoding: class indices, or the standardised value for regression, so
raw outputs are what ``task.decode`` expects: the logit of the positive class (binary), log
probabilities (multiclass) or the standardised value.

The estimator is fitted once; that fit is the run's one "epoch" (a history row with the
training and validation losses and the validation metrics), so progress, history.csv, MLflow
and a tuner's callback work unchanged. Resuming fits again from scratch (same seed, same model).

The fitted estimator is saved with skops (``model/sklearn.skops``), not pickle: loading a
pickle runs whatever code the file names. skops refuses any type it is not told to trust, and
:func:`load_estimator` trusts only the types of scikit-learn, numpy, scipy, the configured
estimator's own package (lightgbm for ``lightgbm.LGBMClassifier``) and a few standard-library
containers; a file naming anything else is refused with a RunError.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlsmith.config import Config, SklearnConfig
from mlsmith.errors import ConfigError, RunError
from mlsmith.files import atomic_path
from mlsmith.models.base import FitContext, FitSummary, Model
from mlsmith.models.boosting import RoundRecorder

if TYPE_CHECKING:
    from mlsmith.data.base import PreparedData, Preprocessor
    from mlsmith.tasks import Task

log = logging.getLogger(__name__)

MODEL_DIR = "model"
MODEL_FILE = "sklearn.skops"
AUTO_ESTIMATORS = {
    True: "sklearn.ensemble.HistGradientBoostingClassifier",
    False: "sklearn.ensemble.HistGradientBoostingRegressor",
}
# Packages whose types a saved estimator may hold (besides the estimator's own package).
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")
# Standard-library containers and wrappers that run nothing themselves (a partial's function
# and a defaultdict's factory are types of their own, which skops checks apart).
TRUSTED_TYPES = frozenset(
    {"functools.partial", "collections.OrderedDict", "collections.defaultdict", "collections.deque"}
)
# Probabilities are clipped before their logarithm, so raw outputs stay finite.
_EPS = 1e-15
# HistGradientBoosting's default max_bins: it splits natively on at most this many categories.
_NATIVE_CATEGORIES = 255


def estimator_class(path: str, task: Task) -> type:
    """The class ``model.estimator`` names; a ConfigError naming the key when it is unusable."""
    dotted = AUTO_ESTIMATORS[task.is_classification] if path == "auto" else path
    module_name, _, name = dotted.rpartition(".")
    example = "e.g. sklearn.linear_model.LogisticRegression"
    if not module_name or not name:
        raise ConfigError(
            f"model.estimator: expected the dotted path of a class ({example}), found '{path}'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"model.estimator: cannot import module '{module_name}' of '{dotted}' ({error}); "
            f"expected the dotted path of an installed estimator class ({example})"
        ) from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ConfigError(f"model.estimator: module '{module_name}' has no '{name}' ({example})")
    if not isinstance(cls, type):
        raise ConfigError(
            f"model.estimator: '{dotted}' is a {type(cls).__name__}, not a class ({example})"
        )
    return cls


def build_estimator(cls: type, settings: SklearnConfig, task: Task, seed: int) -> Any:
    """An unfitted ``cls(**model.params)``, seeded, checked to have what the task needs."""
    dotted = f"{cls.__module__}.{cls.__qualname__}"
    try:
        estimator = cls(**settings.params)
    except TypeError as error:
        raise ConfigError(f"model.params: {dotted} refused them: {error}") from None
    required = ["fit", "predict"] + (["predict_proba"] if task.is_classification else [])
    # On the instance: some methods exist only for some parameters (SVC's predict_proba).
    missing = [m for m in required if not callable(getattr(estimator, m, None))]
    if missing:
        why = " (classification needs probabilities)" if "predict_proba" in missing else ""
        raise ConfigError(
            f"model.estimator: {dotted} has no {', '.join(missing)}{why}; expected an estimator "
            "with the scikit-learn API"
        )
    names = _param_names(estimator)
    if "random_state" in names and "random_state" not in settings.params:
        estimator.set_params(random_state=seed)
    # scikit-learn checks parameter values at fit; check them now, before a run directory.
    # Only estimators that declare their constraints (scikit-learn's own) can check them.
    validate = getattr(estimator, "_validate_params", None)
    if callable(validate) and hasattr(estimator, "_parameter_constraints"):
        try:
            validate()
        except (ValueError, TypeError) as error:
            raise ConfigError(f"model.params: {dotted}: {error}") from None
    return estimator


def load_estimator(file: Path, cls: type) -> Any:
    """The estimator saved in ``file``, which must be an instance of ``cls``.

    skops, not pickle: unpickling runs code, and a run directory can come from anywhere. Only
    the types of scikit-learn, numpy, scipy and ``cls``'s own package are trusted; anything else
    in the file is refused, as is a file holding another class than the configured one.
    """
    import skops.io

    content = file.read_bytes()
    own = cls.__module__.split(".")[0]
    untrusted = skops.io.get_untrusted_types(data=content)
    refused = [
        t
        for t in untrusted
        if t.split(".")[0] not in {*TRUSTED_PACKAGES, own} and t not in TRUSTED_TYPES
    ]
    if refused:
        raise RunError(
            f"{file}: holds types outside scikit-learn, numpy, scipy, {own} and a few "
            f"standard containers: "
            f"{', '.join(refused)}; refusing to load it"
        )
    estimator = skops.io.loads(content, trusted=untrusted)
    if not isinstance(estimator, cls):
        raise RunError(
            f"{file}: holds a {type(estimator).__name__}, the run's model.estimator is "
            f"{cls.__qualname__}"
        )
    return estimator


class SklearnModel(Model):
    """A scikit-learn-style estimator on the preprocessed table; one file under ``model/``."""

    family = "sklearn"
    model_file: ClassVar[str] = MODEL_FILE

    def __init__(self, config: Config, preprocessor: Preprocessor) -> None:
        super().__init__(config, preprocessor)
        settings = self.settings
        self.cls = estimator_class(settings.estimator, self.task)
        # Here rather than at fit: a bad class or parameter must fail before a run directory.
        self.estimator: Any = build_estimator(self.cls, settings, self.task, config.seed)
        self.fitted = False
        self.n_numeric = len(getattr(preprocessor, "numeric", []))
        vocabularies = getattr(preprocessor, "vocabularies", [])
        self.cardinalities = [len(v) + 1 for v in vocabularies]  # + the unseen bucket, code 0
        self.encoding = self._categorical_encoding()

    @property
    def settings(self) -> SklearnConfig:
        cfg = self.config.model
        if not isinstance(cfg, SklearnConfig):  # mlsmith.families routes by type
            raise TypeError(f"{type(self).__name__} got a model section of type '{cfg.type}'")
        return cfg

    def _categorical_encoding(self) -> str:
        """native, onehot or ordinal; native also tells the estimator which columns they are."""
        mode = self.settings.categorical
        names = _param_names(self.estimator)
        if mode == "auto":
            mode = "native" if "categorical_features" in names else "onehot"
        if mode != "native" or not self.cardinalities:
            return mode
        if "categorical_features" not in names:
            raise ConfigError(
                f"model.categorical: native needs an estimator with categorical_features; "
                f"{self.cls.__qualname__} has none (use onehot or ordinal)"
            )
        if "categorical_features" in self.settings.params:
            return mode  # the user's own choice of columns
        limit = int(self.estimator.get_params().get("max_bins", _NATIVE_CATEGORIES))
        if max(self.cardinalities) > limit:
            log.warning(
                "sklearn: a categorical column has %d categories, more than the %d %s splits on "
                "natively; its codes are used as ordinal numbers",
                max(self.cardinalities),
                limit,
                self.cls.__qualname__,
            )
            return "ordinal"
        mask = [False] * self.n_numeric + [True] * len(self.cardinalities)
        self.estimator.set_params(categorical_features=mask)
        return mode

    def matrix(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Preprocessed inputs to the estimator's (n, features) float64 matrix."""
        numeric = np.asarray(inputs["numeric"], dtype=np.float64)
        codes = np.asarray(inputs["categorical"], dtype=np.int64)
        if self.encoding != "onehot" or not self.cardinalities:
            return np.hstack([numeric, codes.astype(np.float64)])
        offsets = np.concatenate([[0], np.cumsum(self.cardinalities)[:-1]])
        onehot = np.zeros((len(codes), sum(self.cardinalities)), dtype=np.float64)
        rows = np.arange(len(codes))
        for column, offset in enumerate(offsets):
            # A code outside the vocabulary (never from the preprocessor) counts as unseen.
            code = codes[:, column]
            code = np.where((code >= 0) & (code < self.cardinalities[column]), code, 0)
            onehot[rows, offset + code] = 1.0
        return np.hstack([numeric, onehot])

    def _targets(self, encoded: np.ndarray) -> np.ndarray:
        if self.task.is_classification:
            return np.asarray(self.task.truth(encoded), dtype=np.int64)
        return np.asarray(encoded, dtype=np.float64).reshape(-1)

    # --- the Model contract ----------------------------------------------------------------------

    def fit(self, data: PreparedData, context: FitContext) -> FitSummary:
        if context.resume:
            log.info("sklearn: resuming fits again from scratch (same seed, same model)")
        x, y = self.matrix(data.train.inputs), self._targets(data.train.target)
        recorder = RoundRecorder(
            self.task,
            data.val.target,
            context.callbacks,
            rounds=1,
            lr=math.nan,  # no learning rate: history's lr column stays empty
            patience=None,
            n_train=len(y),
        )
        recorder.start()
        try:
            started = time.perf_counter()
            self.estimator.fit(x, y)
            self.fitted = True
            log.debug("sklearn: fitted in %.2f s", time.perf_counter() - started)
            val_raw = self.predict_raw(data.val.inputs)
            recorder.after_round(
                1,
                self._loss(val_raw, data.val.target),
                lambda: self._loss(self.predict_raw(data.train.inputs), data.train.target),
                lambda: self.task.decode(val_raw),
            )
            recorder.finish(1, lambda _: self.task.decode(val_raw))
            path = Path(context.run_dir) / MODEL_DIR / self.model_file
            import skops.io

            with atomic_path(path) as tmp:
                tmp.write_bytes(skops.io.dumps(self.estimator))
            # Predict with the saved model, so a reloaded run gives bit-identical outputs.
            self.estimator = load_estimator(path, self.cls)
        except BaseException as error:
            recorder.fail(error)
            raise
        return FitSummary(recorder.state.history, best_epoch=1, stopped_early=False)

    def predict_raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}: predict before fit or load")
        x = self.matrix(inputs)
        if not self.task.is_classification:
            return np.asarray(self.estimator.predict(x), dtype=np.float64).reshape(len(x), 1)
        proba = np.asarray(self.estimator.predict_proba(x), dtype=np.float64)
        full = np.zeros((len(x), len(self.task.classes)), dtype=np.float64)
        # Columns follow the classes seen in training; a class absent there gets probability 0.
        full[:, np.asarray(self.estimator.classes_, dtype=np.int64)] = proba
        logs = np.log(np.clip(full, _EPS, 1.0))
        if self.task.kind == "binary":
            return (logs[:, 1] - logs[:, 0]).reshape(-1, 1)
        return logs

    @classmethod
    def load(cls, run_dir: Path, config: Config, preprocessor: Preprocessor) -> SklearnModel:
        """The estimator saved in ``run_dir``: always the run's own ``model/sklearn.skops``."""
        model = cls(config, preprocessor)
        model.estimator = load_estimator(Path(run_dir) / MODEL_DIR / cls.model_file, model.cls)
        model.fitted = True
        return model

    def artifacts(self, run_dir: Path) -> list[Path]:
        return [Path(run_dir) / MODEL_DIR / self.model_file]

    def _loss(self, raw: np.ndarray, encoded: np.ndarray) -> float:
        """The task's loss, as the networks train on: log loss, or the standardised MSE."""
        if not self.task.is_classification:
            diff = raw.reshape(-1) - np.asarray(encoded, dtype=np.float64).reshape(-1)
            return float(np.mean(diff**2))
        proba = self.task.decode(raw)
        truth = self._targets(encoded)
        picked = np.clip(proba[np.arange(len(truth)), truth], _EPS, 1.0)
        return float(-np.mean(np.log(picked)))


def _param_names(estimator: Any) -> set[str]:
    get_params = getattr(estimator, "get_params", None)
    return set(get_params(deep=False)) if callable(get_params) else set()
