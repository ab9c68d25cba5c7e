"""Models by name in MLflow's model registry: loading, registering and promoting them.

- ``loading``: a package from a folder, a run, ``runs:/<run_id>/package`` or
  ``models:/<name>@<alias>``.
- ``versions``: a run's logged package as a new version of a registered model, tagged with its
  metrics and intervals, data fingerprint, code version and parity figures.
- ``promotion``: the gate that points an alias at a version only when it is not measurably worse
  than the version holding it, and the rollback; ``comparison`` scores the two on the same rows.
- ``store``: the client, MLflow's errors as mlsmith's, versions by alias or number, tags.
"""

from mlsmith.registry.loading import load_package
from mlsmith.registry.promotion import Check, Decision, promote
from mlsmith.registry.store import resolve_tracking_uri
from mlsmith.registry.versions import RegisteredVersion, register, register_after_training

__all__ = [
    "Check",
    "Decision",
    "RegisteredVersion",
    "load_package",
    "promote",
    "register",
    "register_after_training",
    "resolve_tracking_uri",
]
