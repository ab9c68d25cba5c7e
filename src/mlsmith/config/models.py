"""The ``model:`` section: one class per model family, picked by ``model.type``.

A family is one section class here, one member of :data:`ModelConfig` and one row of
:data:`mlsmith.config.families.FAMILIES`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from mlsmith.config.base import Section, type_tag


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
    strategy: Literal["direct", "recursive", "combined", "auto"] = Field(
        "direct",
        description="data.type timeseries only (where combined is the default): forecast every "
        "step at once (direct), one step at a time from its own forecasts (recursive), the mean "
        "of the two (combined), or whichever of the two forecasts the last horizons of the "
        "history better (auto)",
    )


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


class CustomConfig(Section):
    """Your own ``torch.nn.Module``, trained, checked, exported and served like a built-in family.

    ``module`` names its class by path; it is built as
    ``Class(n_outputs=..., inputs=..., **params)``, where ``inputs`` describes what the data
    kind feeds (tables: ``{"numeric": count, "categorical": [cardinality, ...]}``; images:
    ``{"channels", "height", "width"}``; text: ``{"vocab_size", "max_length", "padding_id"}``),
    and ``forward`` takes the built-in families' named tensors (tables: ``numeric``,
    ``categorical``; images: ``image``; text: ``input_ids``, ``attention_mask``) and returns
    raw outputs of shape (batch, n_outputs).
    """

    type: Literal["custom"] = "custom"
    module: str = Field(
        description="your network class: my_pkg.nets.MyNet (importable) or nets.py:MyNet (a file)"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of its constructor beside n_outputs and inputs; tunable "
        "as model.params.<name>",
    )


class SklearnConfig(Section):
    """Any scikit-learn-style estimator class on the preprocessed table (tabular data).

    The estimator gets one matrix: the standardised, imputed numerics, then the categorical
    columns as ``categorical`` says. ``params`` go to its constructor as they are, and
    ``random_state`` is set to the config's seed when the estimator has one and ``params`` do
    not set it. It is fitted once on the training split (the validation split is only scored:
    one history row). The ``train:`` section is for torch networks and is ignored, except that
    ``train.preflight`` still applies. The fitted estimator is saved with skops, and loaded
    trusting only types from scikit-learn, numpy, scipy and the estimator's own package.
    """

    type: Literal["sklearn"] = "sklearn"
    estimator: str = Field(
        "auto",
        description="dotted path of an estimator class with fit/predict (and predict_proba for "
        "classification), e.g. sklearn.linear_model.LogisticRegression; auto: "
        "sklearn.ensemble.HistGradientBoostingClassifier, or ...Regressor for regression",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the estimator's constructor, e.g. {max_iter: 200}; "
        "tunable as model.params.<name>",
    )
    categorical: Literal["auto", "native", "onehot", "ordinal"] = Field(
        "auto",
        description="categorical columns as: native (the estimator's categorical_features, "
        "e.g. HistGradientBoosting), onehot (one 0/1 column per category and one for unseen "
        "values), ordinal (the category codes as numbers); auto: native when the estimator "
        "takes categorical_features, else onehot",
    )


class ETSConfig(Section):
    """Exponential smoothing with automatic selection (StatsForecast's AutoETS), one model per
    series (``data.type: timeseries``; ``pip install 'mlsmith[timeseries]'``)."""

    type: Literal["ets"] = "ets"


class ARIMAConfig(Section):
    """ARIMA with automatic order selection (StatsForecast's AutoARIMA), one model per series
    (``data.type: timeseries``; ``pip install 'mlsmith[timeseries]'``)."""

    type: Literal["arima"] = "arima"


class ThetaConfig(Section):
    """The Theta method with automatic selection (StatsForecast's AutoTheta), one model per
    series (``data.type: timeseries``; ``pip install 'mlsmith[timeseries]'``)."""

    type: Literal["theta"] = "theta"


class UNetConfig(Section):
    """A compact UNet, trained from scratch (``data.type: segmentation``)."""

    type: Literal["unet"] = "unet"
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [16, 32, 64, 128],
        min_length=2,
        description="channels of each encoder stage; each stage halves the resolution",
    )
    dice_weight: float = Field(
        1.0, ge=0.0, description="loss: cross-entropy + this x (1 - soft Dice); 0: CE only"
    )


class SegmenterConfig(Section):
    """What torchvision's segmentation networks share (``data.type: segmentation``)."""

    backbone: str = "resnet50"
    pretrained: bool = Field(
        False,
        description="start from the backbone's ImageNet weights, read from the local torch "
        "cache (nothing is downloaded)",
    )
    dice_weight: float = Field(
        1.0, ge=0.0, description="loss: cross-entropy + this x (1 - soft Dice); 0: CE only"
    )


class FCNConfig(SegmenterConfig):
    """torchvision's FCN (Long et al. 2015) on a ResNet backbone."""

    type: Literal["fcn"] = "fcn"
    backbone: Literal["resnet50", "resnet101"] = "resnet50"


class DeepLabConfig(SegmenterConfig):
    """torchvision's DeepLabV3 (Chen et al. 2017): atrous convolutions and ASPP."""

    type: Literal["deeplabv3"] = "deeplabv3"
    backbone: Literal["mobilenet_v3_large", "resnet50", "resnet101"] = "mobilenet_v3_large"


# The detectors' torchvision backbones, which have ImageNet weights; ``small`` has none.
PRETRAINED_DETECTION_BACKBONES = (
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet18",
    "resnet34",
    "resnet50",
)


class DetectorConfig(Section):
    """What torchvision's detectors share (``data.type: detection``); each computes its own
    losses, logged per component."""

    backbone: str = Field(
        "small",
        description="the feature extractor: small (a from-scratch CNN for CPUs), "
        "mobilenet_v3_large, mobilenet_v3_small, resnet18, resnet34 or resnet50",
    )
    pretrained: bool = Field(
        False,
        description="start the backbone from its ImageNet weights, read from the local torch "
        "cache (nothing is downloaded); the torchvision backbones only, not small",
    )
    min_score: float = Field(
        0.05, ge=0.0, lt=1.0, description="detections scoring below this are dropped"
    )
    max_detections: int = Field(100, ge=1, le=1000, description="detections kept per image")

    @model_validator(mode="after")
    def _check_pretrained(self) -> DetectorConfig:
        # Refused here, before any data is read or anything trains.
        if self.pretrained and self.backbone not in PRETRAINED_DETECTION_BACKBONES:
            what = " (the from-scratch CNN)" if self.backbone == "small" else ""
            raise ValueError(
                f"model.pretrained: true, but model.backbone '{self.backbone}'{what} has no "
                "pretrained weights; ImageNet weights exist for "
                f"{', '.join(PRETRAINED_DETECTION_BACKBONES)}: choose one of those as "
                "model.backbone, or set model.pretrained: false"
            )
        return self


class FasterRCNNConfig(DetectorConfig):
    """Faster R-CNN (Ren et al. 2015): a region proposal network, then a box head."""

    type: Literal["fasterrcnn"] = "fasterrcnn"


class RetinaNetConfig(DetectorConfig):
    """RetinaNet (Lin et al. 2017): one stage, focal loss."""

    type: Literal["retinanet"] = "retinanet"


class FCOSConfig(DetectorConfig):
    """FCOS (Tian et al. 2019): one stage, anchor-free."""

    type: Literal["fcos"] = "fcos"


# Written out member by member so mypy sees the union; tests/test_families.py checks that it
# holds exactly the classes of the FAMILIES table.
ModelConfig = Annotated[
    (
        Annotated[MLPConfig, Tag("mlp")]
        | Annotated[CNNConfig, Tag("cnn")]
        | Annotated[TorchvisionConfig, Tag("torchvision")]
        | Annotated[BagConfig, Tag("bag")]
        | Annotated[TransformerConfig, Tag("transformer")]
        | Annotated[LightGBMConfig, Tag("lightgbm")]
        | Annotated[XGBoostConfig, Tag("xgboost")]
        | Annotated[SklearnConfig, Tag("sklearn")]
        | Annotated[CustomConfig, Tag("custom")]
        | Annotated[ETSConfig, Tag("ets")]
        | Annotated[ARIMAConfig, Tag("arima")]
        | Annotated[ThetaConfig, Tag("theta")]
        | Annotated[UNetConfig, Tag("unet")]
        | Annotated[FCNConfig, Tag("fcn")]
        | Annotated[DeepLabConfig, Tag("deeplabv3")]
        | Annotated[FasterRCNNConfig, Tag("fasterrcnn")]
        | Annotated[RetinaNetConfig, Tag("retinanet")]
        | Annotated[FCOSConfig, Tag("fcos")]
    ),
    Discriminator(type_tag("mlp")),
]
