"""``MODEL_CARD.md``: what the model is, what it was trained and evaluated on, and its limits.

The sections follow "Model Cards for Model Reporting" (Mitchell et al., 2019). mlsmith fills in
what it measured; the rest (intended use, out of scope, ethics, owners, license) comes from the
config's optional ``card:`` section and says "not stated" when the author left it out, so a
missing statement is visible rather than silently absent.
"""

from __future__ import annotations

from mlsmith.reports import facts
from mlsmith.reports.markdown import baseline_section, bullets, metrics_table, table
from mlsmith.reports.runinfo import NOT_RECORDED, RunRecord, count_parameters, format_time

NOT_STATED = "not stated"
TASK_NAMES = {
    "binary": "binary classification",
    "multiclass": "multiclass classification",
    "regression": "regression",
}


def render_card(record: RunRecord) -> str:
    """The Markdown model card for ``record``."""
    cfg, card = record.config, record.config.card
    split = record.headline_split
    lines = [
        f"# Model card: {cfg.experiment} / {record.id}",
        "",
        card.description or f"Description: {NOT_STATED}.",
        "",
        "## Model details",
        "",
        table(["", ""], _details(record)),
        "",
        "Key hyper-parameters:",
        "",
        table(["key", "value"], facts.hyperparameter_rows(record)),
        "",
        "## Intended use",
        "",
        _stated(card.intended_use),
        "",
        "## Out of scope",
        "",
        _stated(card.out_of_scope),
        "",
        "## Training data",
        "",
        table(["", ""], _data_rows(record)),
        "",
        "Preprocessing is fitted on the training split only and stored in `preprocessing.json`.",
        "",
        "## Evaluation",
        "",
        metrics_table(record, (split,) if split else None),
        "",
        _evaluation_note(record, split),
        "",
        "### Compared with a baseline",
        "",
        baseline_section(record),
        "",
    ]
    per_class = facts.per_class_metrics(record)
    if record.is_classification:
        lines += ["### Per-class metrics (test split)", ""]
        if per_class:
            rows = [
                (c.label, f"{c.precision:.4f}", f"{c.recall:.4f}", f"{c.f1:.4f}", f"{c.support:,}")
                for c in per_class
            ]
            lines.append(table(["class", "precision", "recall", "F1", "support"], rows, "lrrrr"))
        else:
            lines.append(f"Test-split predictions: {NOT_RECORDED}.")
        lines.append("")
    lines += [
        "## Limitations",
        "",
        "Measured on the evaluation split:",
        "",
        bullets(facts.measured_limitations(record)),
        "",
        f"Stated by the authors: {card.limitations or NOT_STATED}.",
        "",
        "## Ethical considerations",
        "",
        _stated(card.ethical_considerations),
        "",
        *_slice_lines(record),
        "## Owners and license",
        "",
        f"- Owners: {', '.join(card.owners) if card.owners else NOT_STATED}",
        f"- License: {card.license or NOT_STATED}",
        "",
        "## Reproducibility",
        "",
        f"Seed {cfg.seed}, data fingerprint "
        f"`{record.info.get('data_fingerprint') or NOT_RECORDED}`; versions and commits are in "
        "`REPORT.md`. Reproduce with:",
        "",
        "```bash",
        facts.reproduce_command(record),
        "```",
        "",
    ]
    return "\n".join(lines)


def _details(record: RunRecord) -> list[tuple[str, str]]:
    cfg = record.config
    doc = (type(cfg.model).__doc__ or "").strip().splitlines()
    family = f"`{cfg.model.type}`" + (f": {doc[0].rstrip('.')}" if doc else "")
    # torchvision architectures, or a segmenter's or detector's backbone
    arch = getattr(cfg.model, "arch", None) or getattr(cfg.model, "backbone", None)
    if arch:
        pretrained = ", pretrained weights" if getattr(cfg.model, "pretrained", False) else ""
        family += f" (`{arch}`{pretrained})"
    task = TASK_NAMES.get(record.task or "", record.task or NOT_RECORDED)
    if record.is_classification and record.classes:
        shown = ", ".join(record.classes[:20]) + (", ..." if len(record.classes) > 20 else "")
        task += f" ({len(record.classes)} classes: {shown})"
    parameters = count_parameters(record.path)
    env = record.info.get("environment") or {}
    return [
        ("family", family),
        ("task", task),
        (
            "parameters",
            f"{parameters:,} (checkpoints/best.pt)" if parameters is not None else NOT_RECORDED,
        ),
        ("trained", f"{format_time(record.info.get('started'))}, run `{record.id}`"),
        (
            "software",
            f"mlsmith {env.get('mlsmith', NOT_RECORDED)}, "
            f"torch {(env.get('packages') or {}).get('torch', NOT_RECORDED)}",
        ),
        (
            "best epoch",
            f"{record.best_epoch} by {record.monitor}" if record.best_epoch else NOT_RECORDED,
        ),
    ]


def _data_rows(record: RunRecord) -> list[tuple[str, str]]:
    split = record.config.data.split
    rows = facts.data_rows(record) or [("summary", NOT_RECORDED)]
    rows.append(("fingerprint", str(record.info.get("data_fingerprint") or NOT_RECORDED)))
    if record.config.data.val_path or record.config.data.test_path:
        rows.append(("splits", "fixed validation/test files"))
    else:
        how = f"random, val {split.val}, test {split.test}, seed {record.config.seed}"
        if split.group:
            how += f", grouped by {split.group}"
        if split.time:
            how = f"chronological on {split.time}, val {split.val}, test {split.test}"
        rows.append(("splits", how))
    return rows


def _evaluation_note(record: RunRecord, split: str | None) -> str:
    if split is None:
        return f"Evaluation: {NOT_RECORDED}."
    rows = ((record.info.get("data") or {}).get("rows") or {}).get(split)
    size = f" ({rows:,} rows)" if isinstance(rows, int) else ""
    return (
        f"Scored on the held-out {split} split{size} with the best checkpoint; intervals are "
        f"{record.ci_level} percentile-bootstrap intervals "
        f"({record.config.eval.bootstrap:,} resamples)."
    )


def _slice_lines(record: RunRecord) -> list[str]:
    """What the test split's slices (``eval.slices``) measured: the groups the model serves
    unequally, in numbers."""
    from mlsmith.slices import summary_lines

    sliced = record.sections.get("slices")
    if not sliced:
        return [
            "Measured per group: not measured (list the columns that define groups in "
            "eval.slices).",
            "",
        ]
    return [
        "Measured per group on the test split (eval.slices):",
        "",
        bullets(summary_lines(sliced)),
        "",
    ]


def _stated(text: str | None) -> str:
    return text.strip() if text and text.strip() else f"{NOT_STATED.capitalize()}."
