"""The experiment configuration: Pydantic models, YAML loading and ``a.b=value`` overrides.

Every section forbids unknown keys, so a typo fails before any work starts, with a suggestion.
Paths written in a YAML file are relative to that file; paths given as overrides on the command
line are relative to the working directory. Both are stored absolute in the resolved config.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from mlsmith.errors import ConfigError, did_you_mean

Mode = Literal["auto", "min", "max"]
Task = Literal["auto", "binary", "multiclass", "regression"]
BUILTIN_PREFIX = "sklearn:"


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    # Numbers where text is expected (`experiment: 2024`, an override `data.target=1`) are read
    # as text, as YAML users expect; without this Pydantic rejects them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


# --- data -------------------------------------------------------------------------------------


class SplitConfig(Section):
    """How rows are divided into train, validation and test splits."""

    val: float = Field(0.15, ge=0.0, lt=1.0, description="fraction of rows for validation")
    test: float = Field(0.15, ge=0.0, lt=1.0, description="fraction of rows for the test split")
    stratify: bool | None = Field(
        None, description="keep class proportions in every split; default: yes for classification"
    )
    group: str | None = Field(None, description="column whose values never straddle two splits")
    time: str | None = Field(
        None, description="column to split chronologically on: oldest rows train, newest test"
    )

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(
                f"val + test must leave rows for training, found val={self.val} test={self.test}"
            )
        if self.group and self.time:
            raise ValueError("choose one of 'group' and 'time', found both")
        return self


class DataSourceConfig(Section):
    """What every data kind shares: where the data is, the target, the task and the splits."""

    path: str = Field(description="the data: a file, a folder or a built-in")
    target: str = Field(description="the column to predict")
    task: Task = "auto"
    split: SplitConfig = Field(default_factory=SplitConfig)
    val_path: str | None = Field(None, description="a fixed validation file")
    test_path: str | None = Field(None, description="a fixed test file")

    @staticmethod
    def _separator(value: str | None) -> str | None:
        """Check ``sep`` (in the kinds that read CSV): one character; ``'\\t'`` means a tab."""
        # '\t' in single quotes (YAML) or on the command line arrives as two characters.
        value = {"\\t": "\t", "tab": "\t"}.get(value, value) if value is not None else None
        if value is not None and (len(value) != 1 or value in '"\r\n'):
            raise ValueError("expected one character such as ',', ';', '|' or '\\t'")
        return value


class DataConfig(DataSourceConfig):
    """A table: CSV, TSV, Parquet or a built-in such as sklearn:iris."""

    type: Literal["tabular"] = "tabular"
    path: str = Field(description="CSV or Parquet file, or a built-in such as sklearn:iris")
    drop: list[str] = Field(default_factory=list, description="columns to ignore")
    categorical: list[str] | None = Field(
        None, description="categorical columns; default: every non-numeric column"
    )
    sep: str | None = Field(
        None,
        description="CSV column separator, e.g. ';' or '\\t'; default: ',' (a tab for .tsv), or "
        "';', tab or '|' when the header holds no comma",
    )
    na_values: list[str] = Field(
        default_factory=list,
        description="more strings read as missing values, e.g. ['?', 'unknown'] (besides "
        "pandas' defaults: '', 'NA', 'N/A', 'n/a', 'null', 'NaN', ...)",
    )

    @field_validator("sep")
    @classmethod
    def _check_sep(cls, value: str | None) -> str | None:
        return cls._separator(value)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.target in self.drop:
            raise ValueError(
                f"drop: lists the target '{self.target}'; remove it from data.drop (the target "
                "is never a feature)"
            )
        return self


TabularDataConfig = DataConfig


class AugmentConfig(Section):
    """Training-time image augmentation (torchvision.transforms.v2); all off by default."""

    crop_scale: tuple[float, float] | None = Field(
        None, description="random resized crop with this area scale range, e.g. [0.8, 1.0]"
    )
    hflip: bool = Field(False, description="random horizontal flip")
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="random rotation, degrees")
    translate: float = Field(
        0.0, ge=0.0, lt=1.0, description="random shift, as a fraction of the width and height"
    )
    color_jitter: float = Field(
        0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation jitter strength"
    )
    randaugment: bool = Field(False, description="RandAugment (2 ops, magnitude 9)")

    @field_validator("crop_scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 < value[0] <= value[1] <= 1.0:
            raise ValueError("expected [low, high] with 0 < low <= high <= 1")
        return value

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return bool(
            self.crop_scale
            or self.hflip
            or self.rotation
            or self.translate
            or self.color_jitter
            or self.randaugment
        )


class ImageDataConfig(DataSourceConfig):
    """Images: a folder with one subfolder per class, a CSV of paths, or a NumPy .npz."""

    type: Literal["image"]
    path: str = Field(description="a class-per-subfolder directory, a CSV of paths, or an .npz")
    target: str = Field("label", description="the label column (CSV) or array (.npz)")
    task: Literal["auto", "binary", "multiclass"] = "auto"
    path_column: str = Field("path", description="CSV column of image paths (relative to it)")
    image_key: str = Field("images", description=".npz array holding the images")
    image_size: int | None = Field(
        None, ge=8, description="square side the images are resized to; default: as stored"
    )
    channels: Literal[1, 3] | None = Field(None, description="default: from the data")
    mean: list[float] | None = Field(None, description="per channel; default: from train")
    std: list[float] | None = Field(None, description="per channel; default: from train")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: decode once into a uint8 tensor; stream: a DataLoader"
    )
    cache_limit_mb: int = Field(2048, ge=1, description="auto: cache when it fits in this")
    num_workers: int = Field(2, ge=0, description="DataLoader workers when streaming")

    @model_validator(mode="after")
    def _check_normalization(self) -> ImageDataConfig:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is None:
                continue
            allowed = (1, self.channels) if self.channels else (1, 3)
            if len(values) not in allowed:
                count = " or ".join(map(str, sorted(set(allowed))))
                raise ValueError(
                    f"{key}: expected one value per channel ({count} values), found {values}"
                )
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"std: every value must be > 0, found {self.std}")
        return self


class TokenizerConfig(Section):
    """The tokenizer (Hugging Face `tokenizers`): trained on the training split, or loaded."""

    kind: Literal["wordpiece", "bpe"] = "wordpiece"
    vocab_size: int = Field(8000, ge=100)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True
    path: str | None = Field(
        None,
        description="a local tokenizer.json or a directory holding one, used as is instead of "
        "training one (relative to the working directory)",
    )


class TextDataConfig(DataSourceConfig):
    """Text classification: a CSV/Parquet with a text column and a label column."""

    type: Literal["text"]
    path: str = Field(description="CSV, TSV or Parquet file")
    task: Literal["auto", "binary", "multiclass"] = "auto"
    text_column: str = Field("text", description="the column holding the text")
    sep: str | None = Field(
        None,
        description="CSV column separator, e.g. ';' or '\\t'; default: ',' (a tab for .tsv), or "
        "';', tab or '|' when the header holds no comma",
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    max_length: int = Field(256, ge=4, description="tokens kept per text (truncation)")

    @field_validator("sep")
    @classmethod
    def _check_sep(cls, value: str | None) -> str | None:
        return cls._separator(value)


DATA_CONFIGS: dict[str, type[DataSourceConfig]] = {
    "tabular": DataConfig,
    "image": ImageDataConfig,
    "text": TextDataConfig,
}


# --- model ------------------------------------------------------------------------------------


class EmbeddingConfig(Section):
    """Size of the embedding learned for each categorical column."""

    rule: Literal["fastai", "sqrt", "fixed"] = Field(
        "fastai", description="fastai: 1.6*n^0.56; sqrt: ceil(sqrt(n)); fixed: always `dim`"
    )
    dim: int = Field(8, ge=1, description="the size used by rule 'fixed'")
    max_dim: int = Field(64, ge=1, description="upper bound for every rule")


class MLPConfig(Section):
    """A multilayer perceptron over standardized numerics and categorical embeddings."""

    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256, 128])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = "relu"
    norm: Literal["none", "batch", "layer"] = "none"
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)


class CNNConfig(Section):
    """A small, fast CNN for small images: conv-BN-ReLU blocks, each halving the resolution."""

    type: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [32, 64, 128], min_length=1, description="width of each block"
    )
    depth: int = Field(2, ge=1, le=4, description="conv-BN-ReLU layers per block")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    channels_last: bool = Field(False, description="channels-last memory format")


class TorchvisionConfig(Section):
    """A torchvision classification architecture, optionally with pretrained weights."""

    type: Literal["torchvision"] = "torchvision"
    arch: str = Field("resnet18", description="resnet18/34/50, efficientnet_b0, convnext_tiny...")
    pretrained: bool = Field(False, description="start from the architecture's default weights")
    freeze_backbone: bool = Field(False, description="train only the new classification head")
    channels_last: bool = Field(False, description="channels-last memory format")


class BagConfig(Section):
    """fastText-style: averaged embeddings of tokens and hashed n-grams, then a linear layer."""

    type: Literal["bag"] = "bag"
    dim: int = Field(
        16, ge=1, description="embedding width (fastText uses 10); the table is vocab + buckets"
    )
    ngrams: int = Field(2, ge=1, le=4, description="1: tokens only; 2: + bigrams...")
    buckets: int = Field(2**18, ge=1, description="hash buckets for the n-grams")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class TransformerConfig(Section):
    """A TransformerEncoder with learned positions and mean or CLS pooling."""

    type: Literal["transformer"] = "transformer"
    dim: int = Field(128, ge=8)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1, description="feed-forward width as a multiple of dim")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    pooling: Literal["mean", "cls"] = "mean"

    @model_validator(mode="after")
    def _check(self) -> TransformerConfig:
        if self.dim % self.heads:
            raise ValueError(
                f"dim must be divisible by heads, found dim={self.dim}, heads={self.heads}"
            )
        return self


class LightGBMConfig(Section):
    """Gradient-boosted trees with LightGBM (tabular data; ``pip install 'mlsmith[trees]'``).

    Names and defaults are LightGBM's own. Categorical columns use LightGBM's native categorical
    splits. Boosting stops when the validation loss has not improved for
    ``early_stopping_rounds`` rounds, and the best round's model is kept. The ``train:`` section
    is for torch networks and is ignored, except that ``train.preflight`` still applies.
    """

    type: Literal["lightgbm"] = "lightgbm"
    n_estimators: int = Field(1000, ge=1, description="boosting rounds at most")
    learning_rate: float = Field(0.1, gt=0.0)
    num_leaves: int = Field(31, ge=2, description="leaves per tree")
    max_depth: int = Field(-1, ge=-1, description="-1: no limit")
    min_child_samples: int = Field(20, ge=1, description="rows per leaf at least")
    reg_alpha: float = Field(0.0, ge=0.0, description="L1 regularisation of leaf values")
    reg_lambda: float = Field(0.0, ge=0.0, description="L2 regularisation of leaf values")
    subsample: float = Field(1.0, gt=0.0, le=1.0, description="row share per bagging round")
    subsample_freq: int = Field(0, ge=0, description="bag every k rounds; 0: no bagging")
    colsample_bytree: float = Field(1.0, gt=0.0, le=1.0, description="column share per tree")
    early_stopping_rounds: int | None = Field(
        50, ge=1, description="stop after this many rounds without a better val loss; null: off"
    )
    n_jobs: int | None = Field(None, ge=1, description="threads; default: every available core")


class XGBoostConfig(Section):
    """Gradient-boosted trees with XGBoost (tabular data; ``pip install 'mlsmith[trees]'``).

    Names and defaults are XGBoost's own. Categorical columns use XGBoost's native categorical
    support (``enable_categorical``). Early stopping and the ``train:`` section work as for
    ``lightgbm``.
    """

    type: Literal["xgboost"] = "xgboost"
    n_estimators: int = Field(1000, ge=1, description="boosting rounds at most")
    learning_rate: float = Field(0.3, gt=0.0)
    max_depth: int = Field(6, ge=0, description="0: no limit")
    min_child_weight: float = Field(1.0, ge=0.0, description="hessian sum per leaf at least")
    reg_alpha: float = Field(0.0, ge=0.0, description="L1 regularisation of leaf weights")
    reg_lambda: float = Field(1.0, ge=0.0, description="L2 regularisation of leaf weights")
    subsample: float = Field(1.0, gt=0.0, le=1.0, description="row share per tree")
    colsample_bytree: float = Field(1.0, gt=0.0, le=1.0, description="column share per tree")
    tree_method: Literal["hist", "approx", "exact"] = "hist"
    early_stopping_rounds: int | None = Field(
        50, ge=1, description="stop after this many rounds without a better val loss; null: off"
    )
    n_jobs: int | None = Field(None, ge=1, description="threads; default: every available core")


MODEL_CONFIGS: dict[str, type[Section]] = {
    "mlp": MLPConfig,
    "cnn": CNNConfig,
    "torchvision": TorchvisionConfig,
    "bag": BagConfig,
    "transformer": TransformerConfig,
    "lightgbm": LightGBMConfig,
    "xgboost": XGBoostConfig,
}
# Which model types work on which data types; the first is the default.
MODELS_FOR_DATA: dict[str, tuple[str, ...]] = {
    "tabular": ("mlp", "lightgbm", "xgboost"),
    "image": ("cnn", "torchvision"),
    "text": ("bag", "transformer"),
}


def _tag(default: str) -> Any:
    def tag(value: Any) -> str:
        if isinstance(value, dict):
            return str(value.get("type", default))
        return str(getattr(value, "type", default))

    return tag


AnyDataConfig = Annotated[
    (
        Annotated[DataConfig, Tag("tabular")]
        | Annotated[ImageDataConfig, Tag("image")]
        | Annotated[TextDataConfig, Tag("text")]
    ),
    Discriminator(_tag("tabular")),
]
ModelConfig = Annotated[
    (
        Annotated[MLPConfig, Tag("mlp")]
        | Annotated[CNNConfig, Tag("cnn")]
        | Annotated[TorchvisionConfig, Tag("torchvision")]
        | Annotated[BagConfig, Tag("bag")]
        | Annotated[TransformerConfig, Tag("transformer")]
        | Annotated[LightGBMConfig, Tag("lightgbm")]
        | Annotated[XGBoostConfig, Tag("xgboost")]
    ),
    Discriminator(_tag("mlp")),
]
# Sections whose class depends on their `type` key, with the classes by type.
TAGGED_SECTIONS: dict[str, dict[str, Any]] = {"data": DATA_CONFIGS, "model": MODEL_CONFIGS}


# --- training ---------------------------------------------------------------------------------


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-2, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw only")

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0, found momentum=0")
        return self


class SchedulerConfig(Section):
    name: Literal["none", "cosine", "onecycle", "step", "plateau"] = "none"
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warmup from lr/100, in epochs")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor, as a share of lr")
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="plateau: decay factor")
    patience: int = Field(5, ge=0, description="plateau: epochs without improvement")


class EarlyStoppingConfig(Section):
    enabled: bool = True
    monitor: str = "val/loss"
    mode: Mode = Field("auto", description="auto: min for losses and errors, max otherwise")
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class CheckpointConfig(Section):
    monitor: str = Field("val/loss", description="metric that picks best.pt")
    mode: Mode = "auto"
    every_n_steps: int | None = Field(
        None, ge=1, description="also write last.pt every N optimizer steps inside an epoch"
    )


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm")
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    compile: bool = Field(False, description="torch.compile the model")
    deterministic: bool = Field(False, description="deterministic algorithms only")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    drop_last: bool = False
    preflight: bool = Field(
        True, description="quick pre-flight checks before training (see `mlsmith check`)"
    )
    overfit_patience: int = Field(
        3,
        ge=0,
        description="warn when val loss rises while train loss falls this many epochs; 0: off",
    )
    log_grad_norm: bool = Field(True, description="per-step gradient norm (before clipping)")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # YAML reads `precision: 32` as an integer.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# --- tracking and evaluation ------------------------------------------------------------------


class TrackConfig(Section):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default: SQLite in output_dir")
    experiment: str | None = Field(None, description="MLflow experiment; default: `experiment`")
    parent_run_id: str | None = Field(
        None, description="MLflow run to nest this run under (set by `mlsmith tune`)"
    )


class EvalConfig(Section):
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the 95% CIs")
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    report: bool = Field(
        True, description="write report.html, REPORT.md and MODEL_CARD.md at the end of train"
    )


class CardConfig(Section):
    """What the model card says about the model beyond what mlsmith can measure."""

    description: str | None = Field(None, description="what the model does, in a sentence")
    intended_use: str | None = Field(None, description="who should use it, for what")
    out_of_scope: str | None = Field(None, description="uses it is not meant for")
    limitations: str | None = Field(None, description="known weaknesses, beyond the measured ones")
    ethical_considerations: str | None = None
    owners: list[str] = Field(default_factory=list, description="people or teams responsible")
    license: str | None = None


# --- tuning -----------------------------------------------------------------------------------


class FloatParam(Section):
    """A float in [low, high], optionally on a log scale or in steps."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("choose one of 'log' and 'step', found both")
        return self


class IntParam(Section):
    """An integer in [low, high], in steps of ``step`` or on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("choose one of 'log' and 'step', found both")
        return self


class CategoricalParam(Section):
    """One of ``choices``: any YAML values, lists included (e.g. layer sizes)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


def _check_range(low: float, high: float, log: bool) -> None:
    if low >= high:
        raise ValueError(f"low must be < high, found low={low} high={high}")
    if log and low <= 0:
        raise ValueError(f"log needs low > 0, found low={low}")


SearchParam = Annotated[
    (
        Annotated[FloatParam, Tag("float")]
        | Annotated[IntParam, Tag("int")]
        | Annotated[CategoricalParam, Tag("categorical")]
    ),
    Discriminator(_tag("float")),
]


class TuneConfig(Section):
    """Hyperparameter search (``mlsmith tune``): what to optimise and over which config keys."""

    metric: str = Field("val/loss", description="a per-epoch monitor: val/loss, val/<metric>")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: minimise losses and errors, maximise scores"
    )
    trials: int = Field(20, ge=1, description="total trials of the study, across all workers")
    sampler: Literal["tpe", "random", "cmaes", "gp"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(3, ge=0, description="median pruner: trials before pruning")
    warmup_epochs: int = Field(1, ge=0, description="median pruner: epochs before pruning")
    seed: int | None = Field(None, description="sampler seed; default: the config's seed")
    space: dict[str, SearchParam] = Field(
        min_length=1, description="dotted config key -> {type: float|int|categorical, ...}"
    )


class Config(Section):
    """The whole experiment: one YAML file."""

    experiment: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 42
    output_dir: str = "runs"
    data: AnyDataConfig
    model: ModelConfig = Field(default_factory=MLPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    card: CardConfig = Field(default_factory=CardConfig)
    tune: TuneConfig | None = Field(None, description="search space for `mlsmith tune`")

    @model_validator(mode="before")
    @classmethod
    def _default_model_for_data(cls, raw: Any) -> Any:
        # The model's default type follows the data: an MLP for tables, a CNN for images...
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            kind = raw["data"].get("type", "tabular")
            model = raw.get("model", {})
            if kind in MODELS_FOR_DATA and isinstance(model, dict) and "type" not in model:
                raw = {**raw, "model": {**model, "type": MODELS_FOR_DATA[kind][0]}}
        return raw

    @model_validator(mode="after")
    def _model_fits_data(self) -> Config:
        allowed = MODELS_FOR_DATA.get(self.data.type, ())
        if self.model.type not in allowed:
            raise ValueError(
                f"model.type '{self.model.type}' does not work with data.type "
                f"'{self.data.type}'; use one of: {', '.join(allowed)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of every value, defaults included."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to leaf values, e.g. {'train.optimizer.lr': 0.001}."""
        return flatten(self.to_dict())


# --- loading ----------------------------------------------------------------------------------

_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("data", "path"),
    ("data", "val_path"),
    ("data", "test_path"),
    ("data", "tokenizer", "path"),
)


def load_config(
    source: str | Path | dict[str, Any] | Config, overrides: list[str] | None = None
) -> Config:
    """Build a validated :class:`Config` from a YAML path, a dict or a Config, plus overrides.

    Raises ConfigError naming the file, the key path, what was expected and what was found.
    """
    overrides = list(overrides or [])
    if isinstance(source, Config):
        raw: dict[str, Any] = source.to_dict()
        origin = "config"
    elif isinstance(source, dict):
        raw = _deep_copy(source)
        origin = "config"
    else:
        path = Path(source)
        raw = read_yaml_mapping(path)
        origin = str(path)
        raw.setdefault("experiment", _experiment_name(path.stem))
        _absolutize_paths(raw, path.parent)

    overridden = apply_overrides(raw, overrides)
    _absolutize_paths(raw, Path.cwd())
    # Stored absolute, so a run resumed or re-evaluated from elsewhere writes to the same place.
    if isinstance(raw.get("output_dir", "runs"), (str, Path)):
        raw["output_dir"] = str(Path(raw.get("output_dir", "runs")).resolve())
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin, overridden)) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error.

    YAML says keys are unique, but PyYAML keeps the last value silently: a second ``train:``
    block would quietly replace the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice in one mapping (lines {seen[key]} and {line}); "
                    "keep one",
                    key_node.start_mark,
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely, refusing repeated keys."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line, with the line and column it points at."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({error.context})" if error.context else ""
        return f"{where}{error.problem}{context}"
    return " ".join(str(error).split())


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))[:5]
        hint = f" such as {path / found[0]}" if found else ""
        raise ConfigError(f"{path} is a folder, not a config file; pass a YAML file{hint}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (it is not valid UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if loaded is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping with at least 'data'")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {_kind(loaded)}")
    return loaded


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> set[tuple[str, ...]]:
    """Apply ``a.b=value`` strings to ``raw`` in place; values are parsed as YAML.

    Returns the key paths that were set, so errors can say they came from the command line.
    """
    touched: set[tuple[str, ...]] = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"override '{item}' must look like key.path=value, e.g. train.lr=3e-4"
            )
        try:
            value = parse_yaml(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override '{item}': value is not valid YAML: {_yaml_problem(exc)}"
            ) from None
        parts = tuple(key.split("."))
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override '{item}': '{where}' holds {_kind(child)}, not a section"
                )
            node = child
        node[parts[-1]] = value
        touched.add(parts)
    return touched


def format_validation_error(
    exc: ValidationError, origin: str, overridden: set[tuple[str, ...]] | None = None
) -> str:
    """Turn Pydantic's errors into lines of 'where: key: expected ..., found ...'."""
    overridden = overridden or set()
    lines = []
    for err in exc.errors():
        loc, tagged = _untag(tuple(str(p) for p in err["loc"]))
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        where = _blame(loc, kind, overridden, origin)
        if kind == "union_tag_invalid":
            choices = (
                ", ".join(TAGGED_SECTIONS[loc[0]]) if loc and loc[0] in TAGGED_SECTIONS else ""
            )
            found = err["ctx"].get("tag") if err.get("ctx") else None
            lines.append(f"{where}: {key}.type: expected one of {choices}, found {found!r}")
        elif kind == "extra_forbidden":
            known = _fields_at(tagged, loc[1:-1]) if tagged else _fields_at(Config, loc[:-1])
            hint = did_you_mean(loc[-1], known)
            choices = ", ".join(sorted(known))
            lines.append(f"{where}: {key}: unknown key{hint}; valid keys here: {choices}")
        elif kind == "missing":
            lines.append(f"{where}: {key}: required key is missing")
        else:
            msg = err["msg"]
            if msg.startswith("Input should be "):
                msg = "expected " + msg[len("Input should be ") :]
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if isinstance(err["input"], dict):  # a whole section: its keys say enough
                lines.append(f"{where}: {key + ': ' if loc else ''}{msg}")
            else:
                lines.append(f"{where}: {key}: {msg}, found {err['input']!r}")
    head = "invalid configuration:" if len(lines) > 1 else "invalid configuration: "
    return head + ("\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0])


def _blame(loc: tuple[str, ...], kind: str, overridden: set[tuple[str, ...]], origin: str) -> str:
    """Where the faulty value came from: the command line, or the file (and why, when an
    override of a section's ``type`` made the file's keys wrong)."""
    if _from_overrides(loc, kind, overridden):
        return "command line"
    retyped = [s for s in TAGGED_SECTIONS if (s, "type") in overridden]
    if not loc and retyped:
        return "command line"  # e.g. model.type=cnn against tabular data
    if loc and loc[0] in retyped:
        return f"{origin} (with {loc[0]}.type changed on the command line)"
    return origin


def _from_overrides(loc: tuple[str, ...], kind: str, overridden: set[tuple[str, ...]]) -> bool:
    """Whether the value at ``loc`` was set on the command line.

    True when an override set it or a section holding it (``model.hidden=[64,0]`` fails at
    ``model.hidden.1``), and for an unknown key that an override created (``train.optimzer.lr=1``
    fails at ``train.optimzer``).
    """
    for path in overridden:
        if loc[: len(path)] == path:
            return True
        if kind in ("extra_forbidden", "union_tag_invalid") and path[: len(loc)] == loc:
            return True
    return False


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _untag(loc: tuple[str, ...]) -> tuple[tuple[str, ...], type[BaseModel] | None]:
    """Drop the union tag Pydantic puts in error locations ('data', 'image', 'x' -> 'data.x');
    also return the section class the tag chose."""
    if len(loc) >= 2 and loc[0] in TAGGED_SECTIONS and loc[1] in TAGGED_SECTIONS[loc[0]]:
        return (loc[0], *loc[2:]), TAGGED_SECTIONS[loc[0]][loc[1]]
    return loc, None


def _fields_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """Field names of the section found by following ``loc`` from ``model``."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or part not in current.model_fields:
            return []
        current = _section_type(current.model_fields[part].annotation)
    return list(current.model_fields) if current else []


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is Annotated:
        return _section_type(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if found:
                return found
    return None


def _absolutize_paths(raw: dict[str, Any], base: Path) -> None:
    for *sections, key in _PATH_KEYS:
        block: Any = raw
        for section in sections:
            block = block.get(section) if isinstance(block, dict) else None
        if not isinstance(block, dict):
            continue
        value = block.get(key)
        if isinstance(value, str) and value and not value.startswith(BUILTIN_PREFIX):
            path = Path(value).expanduser()
            block[key] = str(path if path.is_absolute() else (base / path).resolve())


def _experiment_name(stem: str) -> str:
    # ASCII only: the experiment pattern rejects letters such as 'é' that isalnum() accepts.
    cleaned = "".join(
        c if (c.isascii() and c.isalnum()) or c in "._-" else "-" for c in stem
    ).lstrip("._-")
    return cleaned or "default"


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    """Copy nested dicts; Path values (natural in Python dicts) become the strings YAML gives."""
    return {
        k: _deep_copy(v)
        if isinstance(v, dict)
        else os.fspath(v)
        if isinstance(v, os.PathLike)
        else v
        for k, v in tree.items()
    }


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
