"""Monitoring a served model: the prediction log judged against the training data.

``logs`` is the prediction log's format and its reader (the server's ``predlog`` writes it);
``drift`` judges each feature and the predictions (PSI and a KS or chi-square test);
``performance`` scores logged answers on labels sent back; ``report`` writes the HTML page;
``monitor`` puts them together for ``mlsmith monitor``. The statistics themselves and the
server's sliding window live in :mod:`mlsmith.runtime.drift`, which travels in every package.
"""

from __future__ import annotations

from mlsmith.monitoring.drift import FeatureDrift
from mlsmith.monitoring.logs import read_labels, read_prediction_log
from mlsmith.monitoring.monitor import MonitorResult, monitor, monitor_config
from mlsmith.monitoring.performance import Performance

__all__ = [
    "FeatureDrift",
    "MonitorResult",
    "Performance",
    "monitor",
    "monitor_config",
    "read_labels",
    "read_prediction_log",
]
