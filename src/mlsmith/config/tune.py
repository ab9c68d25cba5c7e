"""The ``tune:`` section: what ``mlsmith tune`` optimises and the search space it samples."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from mlsmith.config.base import Section, type_tag


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
    Discriminator(type_tag("float")),
]


class TuneConfig(Section):
    """Hyperparameter search (``mlsmith tune``): what to optimise and over which config keys."""

    metric: str = Field("val/loss", description="a per-epoch monitor: val/loss, val/<metric>")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: minimise losses and errors, maximise scores"
    )
    objective: Literal["val", "cv"] = Field(
        "val",
        description="val: the best per-epoch value of `metric` on the validation split; cv: "
        "its mean over the held-out folds of eval.cv (val/loss means log_loss or mse there); "
        "cv needs eval.cv and turns pruning off",
    )
    trials: int = Field(20, ge=1, description="total trials of the study, across all workers")
    sampler: Literal["tpe", "random", "cmaes", "gp", "grid"] = Field(
        "tpe",
        description="grid: every combination of the space's values, in a random order "
        "(categorical choices; int ranges by step; floats need a step)",
    )
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(3, ge=0, description="median pruner: trials before pruning")
    warmup_epochs: int = Field(1, ge=0, description="median pruner: epochs before pruning")
    seed: int | None = Field(None, description="sampler seed; default: the config's seed")
    space: dict[str, SearchParam] = Field(
        min_length=1, description="dotted config key -> {type: float|int|categorical, ...}"
    )
