"""Time-series forecasting (``data.type: timeseries``): backtest windows, baselines, metrics.

The pieces here are plain numpy over one series at a time, so every model (the baselines,
StatsForecast's, the global tree and neural models) is judged on the same windows by the same
code: :mod:`.windows` cuts rolling-origin backtest windows that never see their own future,
:mod:`.baselines` forecasts naive, seasonal naive, drift and window average, and :mod:`.metrics`
scores forecasts (MASE, sMAPE, MAE, RMSE, weighted quantile loss, interval coverage) with
bootstrap intervals over series x windows.
"""
