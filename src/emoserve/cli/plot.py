"""`emoserve plot`: an emotion timeline (PNG) from a frame or long-audio result.

Frame scores are drawn as a stacked area over time (at each instant the nine probabilities add up
to 1, so the band widths read as shares); voiced segments of a long file as a lane of bars coloured
by their emotion, more opaque the more confident. A channels=split result (a stereo call) gets these
lanes once per channel, named after it, with the stretches where both talk hatched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidParameterError
from ..labels import LABELS
from .common import clean_errors, console

COLORS = {"angry": "#e15759", "disgusted": "#59a14f", "fearful": "#b07aa1", "happy": "#edc948",
          "neutral": "#bab0ac", "other": "#9c755f", "sad": "#4e79a7", "surprised": "#f28e2b", "unknown": "#d7d7d7"}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), or a clear error."""
    try:
        import matplotlib
    except ImportError as e:
        raise InvalidParameterError("plots need matplotlib: pip install 'emoserve[cli]' (or pip install "
                                    "matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_result(path: Path, file: str | None) -> dict:
    """One result from an API response, `analyze --format json` (a list) or jsonl; `file` picks one."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    results = data if isinstance(data, list) else [data]
    if file is not None:
        results = [r for r in results if r.get("file") == file]
    if not results:
        raise InvalidParameterError(f"no result{' for ' + file if file else ''} in {path}")
    if "channel" in results[0]:  # analyze --channels split: a row per channel, drawn together
        rows = [r for r in results if r.get("file") == results[0].get("file")]
        results = [{"file": rows[0].get("file"), "duration_s": max(r.get("duration_s") or 0.0 for r in rows),
                    "channels": [{**r, "name": r["channel_name"]} for r in rows]}, *results[len(rows):]]
    if len(results) > 1:
        console.print(f"{len(results)} results in {path}: plotting {results[0].get('file', 'the first')} "
                      "(pick another with --file)")
    return results[0]


def has_frames(result: dict) -> bool:
    return isinstance(result.get("scores"), list) and result.get("timestamps") is not None


def lanes_of(result: dict) -> list[tuple[str, str, dict]]:
    """(kind, label, the result it draws) of each lane, top to bottom: per channel for a split result."""
    channels = result.get("channels")
    parts = [(c.get("name", f"ch{c.get('channel')}") + " ", c) for c in channels] if channels else [("", result)]
    lanes = []
    for name, part in parts:
        if has_frames(part):
            lanes.append(("frames", f"{name}score", part))
        if part.get("segments") is not None:
            lanes.append(("segments", f"{name}segments", part))
    return lanes


def plot_timeline(result: dict, output: Path, title: str | None = None) -> None:
    lanes = lanes_of(result)
    if not lanes:
        raise InvalidParameterError("this result has no timeline: analyse with --granularity frame, or a long file "
                                    "(segments)")
    plt = pyplot()
    heights = [4 if kind == "frames" else 1 for kind, _, _ in lanes]
    figure, axes = plt.subplots(len(lanes), 1, figsize=(12, sum(heights) + 1.2), sharex=True, squeeze=False,
                                gridspec_kw={"height_ratios": heights})
    duration = float(result.get("duration_s") or 0.0)
    for (kind, label, part), ax in zip(lanes, axes[:, 0], strict=True):
        if kind == "frames":
            draw_frames(ax, part)
        else:
            draw_segments(ax, part["segments"])
            draw_overlaps(ax, result.get("overlaps") or [])
        ax.set_ylabel(label)
    axes[-1, 0].set_xlabel("time (s)")
    axes[-1, 0].set_xlim(0, duration or None)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS.get(label, "#888888")) for label in LABELS]
    top = 1 - 0.6 / figure.get_figheight()  # the title and the legend keep 0.6 inch above the plots
    figure.legend(handles, LABELS, loc="lower center", bbox_to_anchor=(0.5, top), ncol=len(LABELS),
                  fontsize="small", frameon=False)
    figure.suptitle(title or f"{result.get('file', '')}  {headline(result)}", y=0.99, fontsize="medium")
    figure.tight_layout(rect=(0, 0, 1, top))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


def headline(result: dict) -> str:
    """overall: EMOTION, or per channel NAME: EMOTION for a split result."""
    def emotion(r: dict) -> str:
        return r.get("emotion") or (r.get("overall") or {}).get("emotion") or "-"

    if result.get("channels"):
        return "  ".join(f"{c.get('name')}: {emotion(c)}" for c in result["channels"])
    return f"overall: {emotion(result)}"


def draw_frames(ax, result: dict) -> None:
    import numpy as np

    labels = result.get("labels") or list(LABELS)
    scores = np.asarray(result["scores"], dtype=float).reshape(-1, len(labels))
    times = np.asarray(result["timestamps"], dtype=float)
    # each row holds for its 20 ms frame: draw steps, the last one to the end of the audio
    end = max(float(result.get("duration_s") or 0.0), times[-1] + 0.02 if len(times) else 0.0)
    times, scores = np.append(times, end), np.vstack([scores, scores[-1:]])
    ax.stackplot(times, scores.T, colors=[COLORS.get(label, "#888888") for label in labels], linewidth=0,
                 step="post")
    ax.set_ylim(0, 1)


def draw_segments(ax, segments: list[dict]) -> None:
    for s in segments:
        color = COLORS.get(s.get("emotion") or "", "#888888")
        alpha = 0.35 + 0.65 * float(s.get("confidence") or 0.0)
        ax.broken_barh([(s["start"], s["end"] - s["start"])], (0, 1), facecolors=color, alpha=alpha)
    ax.set_yticks([])


def draw_overlaps(ax, overlaps: list[dict]) -> None:
    """The stretches where two or more channels talk at once, hatched over the segments."""
    for o in overlaps:
        ax.axvspan(o["start"], o["end"], facecolor="none", edgecolor="#333333", hatch="///", linewidth=0)


def plot(
    result: Annotated[Path, typer.Argument(help="a result JSON (API response, analyze --format json/jsonl)",
                                           exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write")] = Path("timeline.png"),
    file: Annotated[str | None, typer.Option(help="which file's result, when RESULT holds several")] = None,
    title: Annotated[str | None, typer.Option(help="figure title")] = None,
) -> None:
    """Draw the emotion timeline of a frame result (stacked scores) or a long-audio result (segments); a
    channels=split result gets a lane per channel."""
    with clean_errors():
        plot_timeline(load_result(result, file), output, title)
    console.print(f"wrote {output}")
