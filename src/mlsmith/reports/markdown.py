"""``REPORT.md``: the training report as Markdown, for a repository, a pull request or a diff.

It says in text what ``report.html`` shows in plots: the configuration, how training went, the
final metrics with intervals, the files, and how to reproduce the run.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlsmith.baselines import reference_name
from mlsmith.reports import facts
from mlsmith.reports.runinfo import NOT_RECORDED, RunRecord, format_seconds, format_time


def render_report(record: RunRecord) -> str:
    """The Markdown training report for ``record``."""
    cfg, info = record.config, record.info
    status = info.get("status", NOT_RECORDED)
    lines = [
        f"# Training report: {cfg.experiment} / {record.id}",
        "",
        f"Status **{status}** · task {record.task or NOT_RECORDED} · model `{cfg.model.type}` · "
        f"started {format_time(info.get('started'))} · wall time {wall_time(info)} · "
        "plots in `report.html`.",
        "",
        "## Configuration summary",
        "",
        table(["key", "value"], _config_rows(record)),
        "",
        "The fully resolved configuration is `config.yaml` in the run directory.",
        "",
        "## Training progress",
        "",
        table(["", ""], facts.progress_facts(record)),
        "",
        "### Observations",
        "",
        bullets(facts.observations(record)),
        "",
        "## Final metrics",
        "",
        metrics_table(record),
        "",
        f"Intervals are {record.ci_level} percentile-bootstrap confidence intervals "
        f"({cfg.eval.bootstrap:,} resamples of the split's {_units(record)}).",
        "",
        "## Model vs baseline",
        "",
        baseline_section(record),
        "",
        *_cv(record),
        *importance_section(record),
        "## Measured limitations",
        "",
        bullets(facts.measured_limitations(record)),
        "",
        "## Pre-flight checks",
        "",
        _preflight(record),
        "",
        "## Artifacts",
        "",
        table(["file", "size"], facts.artifact_rows(record))
        if record.artifacts
        else f"Artifacts: {NOT_RECORDED}.",
        "",
        "`report.html`, `REPORT.md` and `MODEL_CARD.md` are written beside them.",
        "",
        "## Reproducibility",
        "",
        table(["", ""], facts.environment_rows(record)),
        "",
        "Reproduce the run (same seed, same data, a new run directory):",
        "",
        "```bash",
        facts.reproduce_command(record),
        "```",
        "",
    ]
    return "\n".join(lines)


def metrics_table(record: RunRecord, splits: tuple[str, ...] | None = None) -> str:
    """Every metric of the chosen splits (all by default) with its interval."""
    rows = [row for row in facts.metric_rows(record) if splits is None or row[0] in splits]
    if not rows:
        return f"Metrics: {NOT_RECORDED}."
    return table(["split", "metric", "value", record.ci_label], rows, align="llrr")


def baseline_section(record: RunRecord) -> str:
    """The baseline sentence and the model - baseline table with paired intervals."""
    rows = facts.baseline_rows(record)
    text = facts.baseline_summary(record)
    if not rows:
        return text
    headers = ["metric", "model", "baseline", "difference", record.ci_label]
    headers.append(reference_name(record.task))
    note = (
        "Differences are model minus baseline; their intervals are paired percentile-bootstrap "
        f"intervals (both scored on the same resampled {_units(record)})."
    )
    return f"{text}\n\n{table(headers, rows, align='lrrrrr')}\n\n{note}"


def _units(record: RunRecord) -> str:
    """What the bootstrap resamples: a ranking's queries, every other task's rows."""
    return "queries" if record.task == "ranking" else "rows"


def table(headers: list[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A GitHub-flavoured Markdown table; ``|`` and newlines in cells are escaped."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    rule = [("---:" if align[i : i + 1] == "r" else "---") for i in range(len(headers))]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items) if items else "None."


def wall_time(info: dict[str, object]) -> str:
    """Seconds from start to finish (training, evaluation, tracking), or "not recorded"."""
    started, finished = info.get("started"), info.get("finished")
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        return format_seconds(finished - started)
    return NOT_RECORDED


def _config_rows(record: RunRecord) -> list[tuple[str, str]]:
    cfg = record.config
    data = cfg.data
    rows = [
        ("data.path", data.path),
        ("data.target", data.target),
        ("data.task", f"{data.task} (resolved: {record.task or NOT_RECORDED})"),
        ("data.split", f"val {data.split.val}, test {data.split.test}"),
        ("model.type", cfg.model.type),
        *facts.hyperparameter_rows(record),
        ("seed", str(cfg.seed)),
        ("train.device", cfg.train.device),
    ]
    return rows


def _cv(record: RunRecord) -> list[str]:
    headers, rows = facts.cv_table(record)
    if not rows:
        return []
    info = record.info.get("cv") or {}
    return [
        "## Cross-validation",
        "",
        table(headers, rows, align="l" + "r" * (len(headers) - 1)),
        "",
        f"{info.get('folds', len(rows) - 2)} folds of the training split "
        f"({info.get('scheme', NOT_RECORDED)}), each with its own preprocessing; metrics on each "
        "fold's held-out rows; the interval is Student-t over the folds. Final model: "
        f"{info.get('final', NOT_RECORDED)}.",
        "",
    ]


def _preflight(record: RunRecord) -> str:
    rows = facts.preflight_rows(record)
    if not rows:
        return f"Pre-flight check results: {NOT_RECORDED}."
    header = ["group", "check", "status", "detail"]
    return f"{facts.preflight_summary(record)}.\n\n{table(header, rows)}"


def importance_section(record: RunRecord) -> list[str]:
    """The permutation importance table (and the trees' gain), when the run measured it."""
    found = (record.importance or {}).get("permutation")
    if not found:
        return []
    gain = (record.importance or {}).get("gain") or {}
    rows = [
        (
            f["name"],
            f"{f['importance']:.4f}",
            f"[{f['ci95'][0]:.4f}, {f['ci95'][1]:.4f}]",
            f"{gain[f['name']]:.3f}" if f["name"] in gain else "-",
        )
        for f in found["features"]
    ]
    return [
        "## Feature importance",
        "",
        f"The {found['metric']} lost when one feature is shuffled on {found['rows']:,} "
        f"validation rows ({found['repeats']} shuffles; 95% interval over them)"
        + ("; the trees' own share of the total gain beside it." if gain else "."),
        "",
        table(["feature", f"{found['metric']} lost", "95% interval", "gain share"], rows, "lrrr"),
        "",
    ]
