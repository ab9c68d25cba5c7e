"""What a run records and reports: MLflow tracking (``track:``), evaluation (``eval:``) and the
model card (``card:``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from mlsmith.config.base import Section
from mlsmith.config.export import RegisterConfig

Backend = Literal["mlflow", "tensorboard", "wandb"]
DEFAULT_BACKENDS: tuple[Backend, ...] = ("mlflow",)


class TrackConfig(Section):
    """MLflow tracking: on by default, into a SQLite store under ``output_dir``."""

    enabled: bool = True
    backends: list[Backend] = Field(
        default_factory=lambda: list(DEFAULT_BACKENDS),
        min_length=1,
        description="where runs are tracked: mlflow (the registry and `runs:/` need it), "
        "tensorboard (event files under the run directory; pip install 'mlsmith[tensorboard]'), "
        "wandb (Weights & Biases; pip install 'mlsmith[wandb]')",
    )
    wandb_mode: Literal["auto", "online", "offline"] = Field(
        "auto",
        description="wandb: online uploads to W&B; offline writes the run's files under "
        "<run>/wandb for `wandb sync`; auto: online when WANDB_API_KEY is set, else offline",
    )
    wandb_project: str | None = Field(None, description="W&B project; default: the experiment")
    wandb_entity: str | None = Field(None, description="W&B team or user; default: W&B's own")
    uri: str | None = Field(None, description="MLflow tracking URI; default: SQLite in output_dir")
    experiment: str | None = Field(None, description="MLflow experiment; default: `experiment`")
    parent_run_id: str | None = Field(
        None, description="MLflow run to nest this run under (set by `mlsmith tune`)"
    )
    # `register` in YAML; the Python name differs because pydantic models already have a
    # `register` (ABC's).
    registration: RegisterConfig | None = Field(
        None,
        alias="register",
        description="register the package as a model version at the end of train",
    )

    model_config = ConfigDict(
        **Section.model_config,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class CVConfig(Section):
    """K-fold cross-validation over the training split (``mlsmith.crossval`` says exactly how).

    The folds are cut from the training split only: the validation split stays every fold
    model's selection set (early stopping, best checkpoint) and the test split is never touched.
    Each fold refits the preprocessing on its own training rows. Folds are stratified for
    classification, grouped when ``data.split.group`` is set, and ordered in time (each fold
    trains on the rows before it) when ``data.split.time`` is set.
    """

    folds: int = Field(5, ge=2, le=100, description="number of folds K (K fits, plus the final)")
    final: Literal["refit", "best_fold"] = Field(
        "refit",
        description="the run's model: refit: trained on the whole training split as without "
        "CV; best_fold: the fold model with the lowest held-out loss (log_loss or mse), kept "
        "with its fold's preprocessing",
    )


class EvalConfig(Section):
    """Final evaluation: bootstrap confidence intervals and the reports."""

    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the 95% CIs")
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    report: bool = Field(
        True, description="write report.html, REPORT.md and MODEL_CARD.md at the end of train"
    )
    baseline: bool = Field(
        True,
        description="also fit a linear baseline (logistic/ridge regression, TF-IDF for text) and "
        "the majority class on the same split, and report the model's paired difference to it",
    )
    cv: CVConfig | None = Field(
        None,
        description="cross-validate on the training split first, e.g. {folds: 5}; tabular "
        "data only; results under `cv` in metrics.json; null: off",
    )
    threshold: float | Literal["auto"] = Field(
        0.5,
        description="binary: predict the positive class when its probability >= this; auto: "
        "chosen on the validation split (see threshold_for), then used for test metrics, "
        "predict and the package",
    )
    threshold_for: Literal["f1", "recall"] = Field(
        "f1",
        description="threshold=auto: maximise F1, or the highest threshold reaching target_recall",
    )
    target_recall: float = Field(
        0.9, gt=0.0, le=1.0, description="threshold_for=recall: the recall to reach on val"
    )
    importance_repeats: int = Field(
        5,
        ge=0,
        description="tabular: permutation importance of each feature on the validation split, "
        "this many shuffles each (CIs over them); 0: off. Boosted trees add their gain",
    )
    slices: list[str] = Field(
        default_factory=list,
        description="columns whose values cut the test split into slices, each scored with "
        "CIs (a numeric column with many values: quantile bins); results under `slices`",
    )
    slice_bins: int = Field(4, ge=2, description="quantile bins of a numeric slice column")
    min_slice_rows: int = Field(
        30, ge=1, description="a slice with fewer test rows is flagged too small to judge"
    )
    ndcg_at: list[int] = Field(
        default_factory=lambda: [1, 5, 10],
        min_length=1,
        description="ranking: the k of each NDCG@k reported (keys ndcg_<k>); the largest one "
        "is the trees' early-stopping metric",
    )

    @field_validator("ndcg_at")
    @classmethod
    def _ks(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"every k must be at least 1, found {value}")
        return sorted(set(value))

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if value == "auto":
            return value
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0.0 < value < 1.0:
            raise ValueError("expected a probability between 0 and 1 (exclusive) or 'auto'")
        return float(value)


class CardConfig(Section):
    """What the model card says about the model beyond what mlsmith can measure."""

    description: str | None = Field(None, description="what the model does, in a sentence")
    intended_use: str | None = Field(None, description="who should use it, for what")
    out_of_scope: str | None = Field(None, description="uses it is not meant for")
    limitations: str | None = Field(None, description="known weaknesses, beyond the measured ones")
    ethical_considerations: str | None = None
    owners: list[str] = Field(default_factory=list, description="people or teams responsible")
    license: str | None = None
