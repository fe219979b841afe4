"""`emoserve plot`: an emotion timeline (PNG) from a frame or long-audio result.

Frame scores are drawn as a stacked area over time (at each instant the nine probabilities add up
to 1, so the band widths read as shares); voiced segments of a long file as a lane of bars coloured
by their emotion, more opaque the more confident.
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
    if len(results) > 1:
        console.print(f"{len(results)} results in {path}: plotting {results[0].get('file', 'the first')} "
                      "(pick another with --file)")
    return results[0]


def plot_timeline(result: dict, output: Path, title: str | None = None) -> None:
    frames = isinstance(result.get("scores"), list) and result.get("timestamps") is not None
    segments = result.get("segments")
    if not frames and segments is None:
        raise InvalidParameterError("this result has no timeline: analyse with --granularity frame, or a long file "
                                    "(segments)")
    plt = pyplot()
    lanes = [name for name, present in (("frames", frames), ("segments", segments is not None)) if present]
    heights = [4 if lane == "frames" else 1 for lane in lanes]
    figure, axes = plt.subplots(len(lanes), 1, figsize=(12, sum(heights) + 1.2), sharex=True, squeeze=False,
                                gridspec_kw={"height_ratios": heights})
    duration = float(result.get("duration_s") or 0.0)
    for lane, ax in zip(lanes, axes[:, 0]):
        if lane == "frames":
            draw_frames(ax, result)
        else:
            draw_segments(ax, segments)
    axes[-1, 0].set_xlabel("time (s)")
    axes[-1, 0].set_xlim(0, duration or None)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS.get(label, "#888888")) for label in LABELS]
    top = 1 - 0.6 / figure.get_figheight()  # the title and the legend keep 0.6 inch above the plots
    figure.legend(handles, LABELS, loc="lower center", bbox_to_anchor=(0.5, top), ncol=len(LABELS),
                  fontsize="small", frameon=False)
    emotion = result.get("emotion") or (result.get("overall") or {}).get("emotion")
    figure.suptitle(title or f"{result.get('file', '')}  overall: {emotion or '-'}", y=0.99, fontsize="medium")
    figure.tight_layout(rect=(0, 0, 1, top))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


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
    ax.set_ylabel("score")


def draw_segments(ax, segments: list[dict]) -> None:
    for s in segments:
        color = COLORS.get(s.get("emotion") or "", "#888888")
        alpha = 0.35 + 0.65 * float(s.get("confidence") or 0.0)
        ax.broken_barh([(s["start"], s["end"] - s["start"])], (0, 1), facecolors=color, alpha=alpha)
    ax.set_yticks([])
    ax.set_ylabel("segments")


def plot(
    result: Annotated[Path, typer.Argument(help="a result JSON (API response, analyze --format json/jsonl)",
                                           exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write")] = Path("timeline.png"),
    file: Annotated[str | None, typer.Option(help="which file's result, when RESULT holds several")] = None,
    title: Annotated[str | None, typer.Option(help="figure title")] = None,
) -> None:
    """Draw the emotion timeline of a frame result (stacked scores) or a long-audio result (segments)."""
    with clean_errors():
        plot_timeline(load_result(result, file), output, title)
    console.print(f"wrote {output}")
