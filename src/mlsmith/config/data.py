"""The ``data:`` section: where the data is, its task and splits, and each data kind's options.

A data kind (``data.type``) is one section class here, one member of :data:`AnyDataConfig`
and one row of :data:`mlsmith.config.families.KINDS`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from mlsmith.config.base import BUILTIN_PREFIX, Section, Task, type_tag


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
    group_column: str | None = Field(
        None,
        description="ranking: the query id; items are ranked within a query, and a query never "
        "straddles two splits (implies task: ranking)",
    )
    stream: bool = Field(
        False,
        description="read a CSV or Parquet file larger than memory in chunks: each row goes to "
        "train, val or test by a seeded hash of its position (not stratified), the "
        "preprocessing is fitted in one pass over the training rows, and DataLoader workers "
        "read the training chunks in a new seeded order every epoch; MLP only",
    )
    chunk_rows: int = Field(
        65536,
        ge=1,
        description="stream: rows per chunk of a CSV (a Parquet file's chunks are its row "
        "groups, read this many rows at a time)",
    )
    shuffle_buffer: int = Field(
        65536,
        ge=1,
        description="stream: training rows are shuffled within windows of this many rows of "
        "each worker's chunks (besides the chunk order); larger mixes better, costs memory",
    )
    num_workers: int = Field(
        2, ge=0, description="stream: DataLoader worker processes reading training chunks"
    )
    stream_eval_rows: int | None = Field(
        100_000,
        ge=1,
        description="stream: the validation and test rows taken from data.path are held in "
        "memory, each split a seeded uniform sample of at most this many rows; null: all",
    )
    stream_sample_rows: int = Field(
        20_000,
        ge=1,
        description="stream: a seeded uniform sample of the training rows held in memory for "
        "the medians that impute numbers, the pre-flight checks, the baseline and the class "
        "weights (means, standard deviations and categories come from every training row)",
    )

    @field_validator("sep")
    @classmethod
    def _check_sep(cls, value: str | None) -> str | None:
        return cls._separator(value)

    @model_validator(mode="before")
    @classmethod
    def _ranking_defaults(cls, raw: Any) -> Any:
        # A query id means a ranking task, and the queries are what the splits keep whole. Set
        # here, on the raw values, so the saved config says both.
        if not isinstance(raw, dict) or not raw.get("group_column"):
            return raw
        raw = dict(raw)
        if raw.get("task", "auto") == "auto":
            raw["task"] = "ranking"
        split = raw.get("split")
        if raw["task"] == "ranking" and (split is None or isinstance(split, dict)):
            split = dict(split or {})
            if split.get("time"):
                raise ValueError(
                    "split.time: a ranking task splits by query (data.group_column); remove "
                    "data.split.time"
                )
            if split.get("group") not in (None, raw["group_column"]):
                raise ValueError(
                    f"split.group: '{split['group']}' differs from group_column "
                    f"'{raw['group_column']}'; a ranking task splits by its query id, so leave "
                    "data.split.group out"
                )
            raw["split"] = {**split, "group": raw["group_column"]}
        return raw

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.target in self.drop:
            raise ValueError(
                f"drop: lists the target '{self.target}'; remove it from data.drop (the target "
                "is never a feature)"
            )
        if self.task == "ranking" and not self.group_column:
            raise ValueError(
                "task: ranking needs group_column, the column holding each row's query id"
            )
        if self.group_column and self.task != "ranking":
            raise ValueError(
                f"group_column: names a ranking task's query id, and task is '{self.task}'; "
                "to keep groups apart in the splits of another task use data.split.group"
            )
        if self.group_column and self.group_column in (self.target, *self.drop):
            where = "is the target" if self.group_column == self.target else "is in data.drop"
            raise ValueError(f"group_column: '{self.group_column}' {where}")
        if self.stream:
            self._check_stream()
        return self

    def _check_stream(self) -> None:
        """Refuse what a chunk-by-chunk split and reading cannot do."""
        if self.path.startswith(BUILTIN_PREFIX):
            raise ValueError(
                f"stream: reads CSV or Parquet files; '{self.path}' is a small built-in dataset, "
                "read whole: remove data.stream"
            )
        # Each refusal: the key, and why one chunk at a time cannot honour it.
        refused = {
            "group_column": (
                self.group_column,
                "a ranking needs each query's rows together in a batch, and a streamed chunk "
                "order cannot promise that",
            ),
            "split.group": (
                self.split.group,
                "keeping groups whole needs every group's rows before splitting",
            ),
            "split.time": (
                self.split.time,
                "a chronological split sorts every row by time first",
            ),
            "split.stratify": (
                self.split.stratify,
                "a streamed split assigns each row by a seeded hash of its position before "
                "the class counts are known; set it to false (or leave it out)",
            ),
        }
        for key, (value, why) in refused.items():
            if value:
                raise ValueError(f"{key}: cannot be used with data.stream: {why}")


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


class TimeSeriesDataConfig(DataSourceConfig):
    """Forecasting: a long table of one row per (series, time), scored by rolling-origin
    backtesting over the last ``windows`` windows of ``horizon`` steps."""

    type: Literal["timeseries"]
    path: str = Field(description="CSV, TSV or Parquet file: one row per series and period")
    target: str = Field(description="the column to forecast")
    task: Literal["auto"] = "auto"  # a forecast: there is nothing to choose
    time_column: str = Field(description="the period of each row: dates, or whole numbers")
    id_column: str | None = Field(
        None, description="the series each row belongs to; none: the table is one series"
    )
    horizon: int = Field(ge=1, description="steps forecast from each origin")
    windows: int = Field(
        3, ge=1, description="backtest windows: the last is the test split, the others validate"
    )
    step: int | None = Field(
        None, ge=1, description="how far the origin moves between windows; default: horizon"
    )
    season_length: int | None = Field(
        None, ge=1, description="periods per season; default: from the frequency (12 monthly)"
    )
    freq: str | None = Field(
        None, description="pandas frequency alias, e.g. MS, QS, W-SUN, D; default: inferred"
    )
    levels: list[float] = Field(
        default_factory=lambda: [80.0],
        min_length=1,
        description="prediction interval levels in percent; the first one's coverage is `coverage`",
    )
    known_covariates: list[str] = Field(
        default_factory=list,
        description="numeric columns known in advance for every period (calendar, prices, "
        "promotions): a forecast may read them at the periods it forecasts",
    )
    past_covariates: list[str] = Field(
        default_factory=list,
        description="numeric columns observed only up to the forecast origin (other "
        "measurements): a forecast reads their past only",
    )
    sep: str | None = Field(None, description="CSV column separator; default: as for tables")
    na_values: list[str] = Field(
        default_factory=list, description="more strings read as missing values"
    )

    @field_validator("sep")
    @classmethod
    def _check_sep(cls, value: str | None) -> str | None:
        return cls._separator(value)

    @field_validator("levels")
    @classmethod
    def _check_levels(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < level < 100.0 for level in value):
            raise ValueError(f"every level must be a percentage between 0 and 100, found {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TimeSeriesDataConfig:
        # Compared with the defaults, not looked up among the keys given: a saved config.yaml
        # spells out every default.
        refused = [k for k in ("val_path", "test_path") if getattr(self, k) is not None]
        if self.split != SplitConfig():
            refused.insert(0, "split")
        if refused:
            raise ValueError(
                f"{', '.join(refused)}: a forecast is scored by backtest windows (data.horizon, "
                "data.windows, data.step) instead of splits; remove "
                + ", ".join(f"data.{k}" for k in refused)
            )
        columns = [self.time_column, self.target, self.id_column]
        named = [c for c in columns if c]
        if len(set(named)) != len(named):
            raise ValueError(
                f"time_column, target and id_column must be three different columns, found {named}"
            )
        covariates = [*self.known_covariates, *self.past_covariates]
        clash = sorted({c for c in covariates if c in named or covariates.count(c) > 1})
        if clash:
            raise ValueError(
                f"known_covariates, past_covariates: {clash} listed twice, or also the time, "
                "target or id column; a covariate is one other column, known or past"
            )
        return self


class SpatialAugmentConfig(Section):
    """Training-time augmentation that moves boxes and masks with the pixels
    (torchvision.transforms.v2 with tv_tensors)."""

    hflip: bool = Field(True, description="random horizontal flip")
    scale_jitter: tuple[float, float] | None = Field(
        None, description="resize by a random factor in [low, high], e.g. [0.75, 1.25]"
    )
    crop: bool = Field(
        False,
        description="random crop: an IoU crop that keeps boxes valid (detection), or 3/4 of "
        "each side, padded back (segmentation)",
    )
    color_jitter: float = Field(
        0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation jitter strength"
    )

    @field_validator("scale_jitter")
    @classmethod
    def _check_scale(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 < value[0] <= value[1] <= 4.0:
            raise ValueError("expected [low, high] with 0 < low <= high <= 4")
        return value


class SceneDataConfig(DataSourceConfig):
    """What segmentation and detection share: a folder of images, fitted onto one canvas."""

    path: str = Field(description="a folder of images (searched recursively)")
    task: Literal["auto"] = "auto"  # the data kind is the task
    image_size: int | None = Field(
        None,
        ge=16,
        description="each image is scaled so its longer side is this, then padded to a square; "
        "default: images keep their size, padded to the largest",
    )
    channels: Literal[1, 3] | None = Field(None, description="default: from the data")
    mean: list[float] | None = Field(None, description="per channel; default: from train")
    std: list[float] | None = Field(None, description="per channel; default: from train")
    augment: SpatialAugmentConfig = Field(default_factory=SpatialAugmentConfig)

    @model_validator(mode="after")
    def _check_scene(self) -> SceneDataConfig:
        if self.split.stratify or self.split.group or self.split.time:
            raise ValueError(
                "split: images are split at random; stratify, group and time do not apply"
            )
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"std: every value must be > 0, found {self.std}")
        fixed = [k for k in ("val_path", "test_path") if getattr(self, k) is not None]
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)}: not supported for {getattr(self, 'type', 'images')} yet; "
                "the images of data.path are split by data.split.val and data.split.test"
            )
        return self


class SegmentationDataConfig(SceneDataConfig):
    """Semantic segmentation: images and PNG masks of class ids (or colours) with the same
    file stems."""

    type: Literal["segmentation"]
    target: str = Field("mask", description="the name predictions are written under")
    masks: str = Field(description="the folder of PNG masks, one per image, same file stem")
    classes: list[str] | dict[str, tuple[int, int, int]] | None = Field(
        None,
        description="class names in id order (0 the background), or name -> [r, g, b] for "
        "colour masks; default: the ids found in the training masks",
    )


class DetectionDataConfig(SceneDataConfig):
    """Object detection: images and their boxes in a COCO JSON or a CSV
    (image, x_min, y_min, x_max, y_max, label)."""

    type: Literal["detection"]
    target: str = Field("boxes", description="the name predictions are written under")
    annotations: str = Field(description="COCO .json, or .csv of image, x_min..y_max, label")


# Written out member by member so mypy sees the union; tests/test_families.py checks that it
# holds exactly the classes of the KINDS table.
AnyDataConfig = Annotated[
    (
        Annotated[DataConfig, Tag("tabular")]
        | Annotated[ImageDataConfig, Tag("image")]
        | Annotated[TextDataConfig, Tag("text")]
        | Annotated[TimeSeriesDataConfig, Tag("timeseries")]
        | Annotated[SegmentationDataConfig, Tag("segmentation")]
        | Annotated[DetectionDataConfig, Tag("detection")]
    ),
    Discriminator(type_tag("tabular")),
]
