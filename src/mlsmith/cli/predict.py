"""``mlsmith predict RUN_OR_PACKAGE --input PATH --output PATH [--engine spark]``.

Paths stay strings: a URI such as ``hdfs://host/t`` would lose a slash as a ``Path``.
"""

from __future__ import annotations

import typer


def command(
    run: str = typer.Argument(
        ...,
        metavar="RUN_OR_PACKAGE",
        help="Run directory; with --engine spark also a package folder, runs:/ or models:/ URI.",
        show_default=False,
    ),
    input_path: str = typer.Option(
        None,
        "--input",
        "-i",
        help="Raw rows: CSV or Parquet; for image runs also a folder of images or an .npz. "
        "With --engine spark also a folder of part files or a URI Spark reads (hdfs://...). "
        "A forecasting run: the history to forecast from (default: its training table).",
        show_default=False,
    ),
    output_path: str = typer.Option(
        ...,
        "--output",
        "-o",
        help="Where to write predictions (.csv or .parquet); with --engine spark a folder of "
        "Parquet part files.",
        show_default=False,
    ),
    chunk_rows: int = typer.Option(
        50_000, "--chunk-rows", min=1, help="Rows read, predicted and written at a time."
    ),
    keep: list[str] = typer.Option(
        None, "--keep", help="Input column to copy into the output (repeatable), e.g. an id."
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local: this process, in chunks. spark: Apache Spark over the table's partitions "
        "(pip install 'mlsmith\\[spark]').",
    ),
    spark_master: str = typer.Option(
        None,
        "--spark-master",
        help="Spark master URL: local[4], spark://host:7077, yarn (default: Spark's own).",
        show_default=False,
    ),
    horizon: int = typer.Option(
        None,
        "--horizon",
        help="A forecasting run: periods to forecast after the history (default: its "
        "data.horizon).",
        show_default=False,
    ),
    spark_conf: list[str] = typer.Option(
        None,
        "--spark-conf",
        metavar="KEY=VALUE",
        help="A Spark setting for the session (repeatable), e.g. spark.executor.memory=4g.",
        show_default=False,
    ),
) -> None:
    """Predict raw rows in constant memory: the prediction, plus class probabilities; or
    forecast the next periods of a forecasting run's series."""
    from mlsmith.api import forecast, forecasting_run, predict

    if horizon is not None or forecasting_run(run):
        rows = forecast(run, horizon, history=input_path, output=output_path)
        typer.echo(f"wrote {rows} forecasts to {output_path}", err=True)
        typer.echo(str(output_path))
        return
    if input_path is None:
        from mlsmith.errors import ConfigError

        raise ConfigError("predict: --input is required (the rows to predict)")

    rows = predict(
        run,
        input_path,
        output_path,
        chunk_rows=chunk_rows,
        keep_columns=keep or [],
        engine=engine,
        spark_master=spark_master,
        spark_conf=_settings(spark_conf or []),
    )
    typer.echo(f"wrote {rows} predictions to {output_path}", err=True)
    typer.echo(str(output_path))


def _settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--spark-conf")
        settings[key.strip()] = value
    return settings
