"""Evaluation reports: the JSON file `captioning evaluate` writes, and the side-by-side markdown table.

The table puts our rows next to the original study's published Flickr8k test-split numbers, so that readers
see at a glance where a model stands, together with a note of what differs (split, number of images).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

REPORT_KIND = "captioning-evaluation"
REPORT_VERSION = 1
METRIC_COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr")
LANGUAGE_NAMES = {"en": "English", "ar": "Arabic"}

# The original notebook study, Flickr8k test split (1,000 images, 5 references each), BLEU only.
PUBLISHED_ROWS: tuple[dict[str, object], ...] = (
    {
        "name": "original study: Show-Attend-Tell (ResNet-50, attention, beam 3)",
        "language": "en",
        "data": "Flickr8k test, 1000 images",
        "scores": {"BLEU-1": 0.652, "BLEU-2": 0.447, "BLEU-3": 0.305, "BLEU-4": 0.208},
    },
    {
        "name": "original study: CNN + LSTM merge model (no attention)",
        "language": "en",
        "data": "Flickr8k test, 1000 images",
        "scores": {"BLEU-1": 0.496, "BLEU-2": 0.263, "BLEU-3": 0.135, "BLEU-4": 0.077},
    },
)


class ReportError(ValueError):
    """A file given to --compare is not an evaluation report."""


def write_json(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_report(path: Path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(report, dict) or report.get("kind") != REPORT_KIND:
        raise ReportError(f"{path}: not a `captioning evaluate` report (kind != {REPORT_KIND!r})")
    return report


def rows_of(report: dict) -> list[dict[str, object]]:
    """One table row per language scored in a report."""
    settings = report.get("settings", {})
    data = f"Flickr8k {settings.get('split', '?')}, {report.get('images', '?')} images"
    return [
        {"name": report.get("name", "?"), "language": lang, "data": data, "scores": scores}
        for lang, scores in report.get("scores", {}).items()
    ]


def _cell(value: object) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    return f"{value:.3f}"


def markdown_table(reports: Sequence[dict], *, published: bool = True) -> str:
    """Our rows, then the published reference rows, then notes on what makes them (in)comparable."""
    header = ["System", "Language", "Data", *METRIC_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [row for report in reports for row in rows_of(report)]
    if published:
        rows += list(PUBLISHED_ROWS)
    for row in rows:
        scores = row["scores"]
        assert isinstance(scores, dict)
        cells = [
            str(row["name"]),
            LANGUAGE_NAMES.get(str(row["language"]), str(row["language"])),
            str(row["data"]),
            *(_cell(scores.get(m)) for m in METRIC_COLUMNS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + notes(reports, published=published)


def notes(reports: Sequence[dict], *, published: bool = True) -> str:
    out = [
        "Notes:",
        "- Scores are pycocoevalcap's BLEU-1..4, METEOR and CIDEr on the 0-1 scale (CIDEr can exceed 1).",
    ]
    splits = sorted({str(r.get("settings", {}).get("split")) for r in reports})
    sizes = sorted({int(r.get("images", 0)) for r in reports})
    if published:
        out.append(
            "- The original study's rows are its published Flickr8k *test*-split numbers (1,000 images, "
            "BLEU only, its own tokenisation); "
            f"our rows use the {'/'.join(splits) or '?'} split with {'/'.join(map(str, sizes)) or '?'} images, "
            "so the numbers are indicative, not a like-for-like comparison."
        )
    if any(size < 1000 for size in sizes):
        out.append(
            "- On a few hundred images or fewer BLEU varies by several points between samples, and CIDEr's "
            "IDF weights come from the scored images' own references."
        )
    if any("ar" in r.get("scores", {}) for r in reports):
        out.append(
            "- Arabic rows: captions and the Arabic Flickr8k references (3 per image) are normalised "
            "(diacritics and tatweel removed, alef/ya/ta-marbuta unified, punctuation dropped; see "
            "captioning.training.metrics) and split on whitespace; METEOR uses exact matches only there."
        )
    return "\n".join(out) + "\n"


def write_markdown(reports: Sequence[dict], path: Path, *, title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# {title}\n\n" if title else "") + markdown_table(reports)
    path.write_text(text, encoding="utf-8")
    return path
