"""report.html: the test report as one self-contained page (style and script inline, from
templates/) linking the other outputs by relative paths: counts at the threshold, the metrics
and per-kind tables, the operating-point panel (`operating_point`, templates/panel.*), the
plots, the example sections, the per-patient section, data notes and the settings."""

from __future__ import annotations

import html
import json
from importlib.resources import files

import numpy as np
import yaml

from ..scoring.pixel_histogram import PRO_FPR_LIMIT
from ..scoring.thresholds import promise_summary
from .selection import Outputs


def _template(name: str) -> str:
    return (files(__package__) / "templates" / name).read_text(encoding="utf-8")


def _panel(data: dict) -> str:
    """The operating-point panel: its markup, its data as JSON (with "<" escaped, so that no
    string in it can end the script element) and its script."""
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return (
        f'{_template("panel.html")}<script type="application/json" id="panel-data">{payload}</script>\n'
        f"<script>\n{_template('panel.js')}</script>"
    )


_METRICS = [
    ("auroc", "AUROC"),
    ("ap", "average precision"),
    ("f1_max", "F1 max"),
    ("f1", "F1 at threshold"),
    ("precision", "precision"),
    ("sensitivity", "sensitivity (recall)"),
    ("specificity", "specificity"),
    ("aupro", f"AUPRO (FPR up to {PRO_FPR_LIMIT:.0%})"),
    ("dice", "Dice (micro)"),
    ("iou", "IoU (micro)"),
    ("hausdorff", "Hausdorff (mean, original pixels)"),
    ("threshold", "threshold"),
]
_KIND_COLUMNS = [
    ("image", "n_anomalous", "images"),
    ("image", "auroc", "image AUROC"),
    ("image", "ap", "image AP"),
    ("image", "sensitivity", "detected"),
    ("pixel", "auroc", "pixel AUROC"),
    ("pixel", "aupro", "AUPRO"),
    ("pixel", "dice", "Dice"),
    ("pixel", "hausdorff", "Hausdorff"),
]


def _number(value) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_table(metrics: dict) -> str:
    levels = [level for level in ("image", "pixel") if level in metrics]
    rows = [
        [title] + [_number(metrics[level].get(key)) for level in levels]
        for key, title in _METRICS
        if any(key in metrics[level] for level in levels)
    ]
    return _table(["metric"] + levels, rows)


def _per_kind_table(per_kind: dict) -> str:
    columns = [column for column in _KIND_COLUMNS if any(column[0] in entry for entry in per_kind.values())]
    rows = [
        [kind] + [_number(entry.get(level, {}).get(key)) for level, key, _ in columns]
        for kind, entry in per_kind.items()
    ]
    return _table(["kind (vs. normal)"] + [title for *_, title in columns], rows)


def _examples(title: str, rows: list[dict], total: int) -> str:
    if not rows:
        return f"<h3>{html.escape(title)} (none)</h3>"
    figures = "".join(
        f'<figure><a href="overlays/{row["name"]}.png"><img src="overlays/{row["name"]}.png" '
        f'alt="{html.escape(row["name"])}" loading="lazy"></a><figcaption>'
        f"{html.escape(row['path'])}<br>{html.escape(row['kind'])}, score "
        f"{row['score']:.4g}, anomalous area {row['anomalous_fraction']:.1%}</figcaption></figure>"
        for row in rows
    )
    shown = f" ({len(rows)} of {total})" if total > len(rows) else f" ({total})"
    return f'<h3>{html.escape(title)}{shown}</h3><div class="examples">{figures}</div>'


def _example_sections(rows: list[dict], groups: list[tuple[str, np.ndarray, int]]) -> str:
    return "".join(_examples(title, [rows[i] for i in shown], total) for title, shown, total in groups)


def _file_links(outputs: Outputs) -> str:
    """What this run wrote besides the report, for the report's first paragraph."""

    def which(parts: tuple[str, ...], extra: list[str]) -> str:
        if "all" in parts:
            return "every image"
        named = [part.replace("examples", "the examples below") for part in parts if part != "none"]
        return " + ".join(dict.fromkeys([*named, *extra]))

    links = [
        f'<a href="{name}">{name}</a>'
        for name, wanted in (("metrics.json", outputs.metrics), ("scores.csv", outputs.scores))
        if wanted
    ]
    if outputs.masks != ("none",):
        links.append(f"masks/ ({html.escape(which(outputs.masks, []))})")
    links.append(f"overlays/ ({html.escape(which(outputs.overlays, ['the examples below']))})")
    return ", ".join(links)


_VOLUME_METRICS = [
    ("auroc", "AUROC"),
    ("ap", "average precision"),
    ("f1", "F1 at threshold"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
]


def _volume_section(summary: dict, volumes: list[dict], rows: list[dict]) -> str:
    """Per patient: detection over volumes, then each volume's figures and a strip of its
    most anomalous slices, most anomalous volume first."""
    detection = summary.get("detection", {})
    overall = [[title, _number(detection.get(key))] for key, title in _VOLUME_METRICS]
    overall += [
        ["3-D Dice (mean over volumes with lesion)", _number(summary.get("dice_mean"))],
        ["3-D IoU (mean over volumes with lesion)", _number(summary.get("iou_mean"))],
        ["lesion volume |predicted - true|, mean ml", _number(summary.get("lesion_ml_abs_error_mean"))],
        ["voxel AP (every voxel of every volume pooled, as MOOD)", _number(summary.get("voxel_ap"))],
    ]
    parts = [
        f"<h2>Per patient ({len(volumes)} volumes)</h2>",
        f'<p class="note">Volume score: {html.escape(summary.get("score", ""))}. Files: '
        '<a href="volumes.csv">volumes.csv</a>, volumes/ (NIfTI maps and masks on each '
        "scan's grid).</p>",
        _table(["metric", "volumes"], overall),
    ]
    for volume in sorted(volumes, key=lambda v: v["score"], reverse=True):
        label = {1: "lesion", 0: "no lesion", -1: "unlabelled"}[volume["label"]]
        parts.append(
            f"<h3>{html.escape(volume['volume'])}: score {volume['score']:.4g} "
            f"({'flagged' if volume['predicted'] else 'not flagged'}), {label}, {volume['slices']} slices, "
            f"lesion {_number(volume['lesion_ml'])} ml true / {volume['predicted_ml']:.4g} ml predicted, "
            f"Dice {_number(volume['dice'])}</h3>"
        )
        parts.append(
            '<div class="examples">'
            + "".join(
                f'<figure><a href="overlays/{rows[i]["name"]}.png"><img src="overlays/{rows[i]["name"]}.png" '
                f'alt="{html.escape(rows[i]["name"])}" loading="lazy"></a><figcaption>'
                f"{html.escape(rows[i]['path'])}, score {rows[i]['score']:.4g}</figcaption></figure>"
                for i in volume["top_rows"]
            )
            + "</div>"
        )
    return "\n".join(parts)


def _promise_line(kept: dict | None) -> list[str]:
    """The test normals flagged against the threshold's promise, as a warning when broken."""
    if kept is None:
        return []
    if kept["warning"]:
        return [f'<p class="warning"><strong>Warning:</strong> {html.escape(kept["warning"])}.</p>']
    summary = promise_summary(kept)
    return [f"<p>{html.escape(summary[0].upper() + summary[1:])}.</p>"]


def render_report(
    metrics: dict,
    rows: list[dict],
    plots: list[tuple[str, str]],
    settings: dict,
    notes: list[str],
    color_max: float,
    groups: list[tuple[str, np.ndarray, int]],
    outputs: Outputs,
    volumes: list[dict] | None = None,
    panel: dict | None = None,
) -> str:
    """The page; `panel`: the operating-point panel's data (`operating_point.panel_data`;
    None: no panel)."""
    image = metrics["image"]
    counts = image["counts"]
    # A JSON round trip turns tuples, paths and numbers into plain YAML-able values.
    settings_yaml = yaml.safe_dump(json.loads(json.dumps(settings, default=str)), sort_keys=False)
    parts = [
        f"<h1>Anomaly detection test report</h1><p>{len(rows)} images: "
        f"{image['n_normal']} normal, {image['n_anomalous']} anomalous. At the image threshold "
        f"{image['threshold']:.4g}: {counts['tp']} true positives, {counts['fp']} false "
        f"positives, {counts['fn']} false negatives, {counts['tn']} true negatives. Files: "
        f"{_file_links(outputs)}.</p>",
        *_promise_line(metrics.get("promise")),
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
    ]
    if "scored_pixels" in metrics:
        parts.append(f'<p class="note">Pixels scored: {html.escape(metrics["scored_pixels"])}.</p>')
    if metrics["per_kind"]:
        parts += ["<h2>Per kind</h2>", _per_kind_table(metrics["per_kind"])]
    if panel is not None:
        parts.append(_panel(panel))
    parts += ['<h2>Plots</h2><div class="plots">']
    parts += [
        f'<a href="{path}"><img src="{path}" alt="{html.escape(title)}" title="{html.escape(title)}"></a>'
        for title, path in plots
    ]
    parts += [
        "</div><h2>Examples</h2>",
        f'<p class="note">Panels: image | anomaly map (colour scale 0 to {color_max:.4g}, the '
        "same for every image) | predicted mask (red) | ground truth (green, when known).</p>",
        _example_sections(rows, groups),
    ]
    if volumes:
        parts += [_volume_section(metrics.get("volume", {}), volumes, rows)]
    if notes:
        parts += ["<h2>Data notes</h2><ul>"]
        parts += [f"<li>{html.escape(note)}</li>" for note in notes] + ["</ul>"]
    parts += ["<h2>Settings</h2>", f"<pre>{html.escape(settings_yaml)}</pre>"]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>funetgan test report</title><style>\n{_template('report.css')}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
