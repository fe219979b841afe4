"""Where `emoserve analyze` writes its rows: table, json, jsonl, csv or parquet, resumable.

jsonl and csv are written a row at a time and flushed, so a run that is killed leaves every finished
file on disk; json and parquet are written when the run ends (an interrupted run with Ctrl-C still
writes them). `--resume` reads what an earlier run left and skips those files.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import IO

from ..errors import InvalidParameterError
from ..labels import LABELS

FORMATS = ("table", "json", "jsonl", "csv", "parquet")
CHANNEL_COLUMNS = ("channel", "channel_name")  # --channels split: one row per channel
FLAT_COLUMNS = ("file", "emotion", "confidence", "duration_s", "model", "granularity", "kind", "segments",
                *(f"score_{label}" for label in LABELS), "embedding")


def infer_format(output: Path | None, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise InvalidParameterError(f"--format must be one of {', '.join(FORMATS)}, got {given!r}")
        return given
    suffix = output.suffix.lower().lstrip(".") if output else ""
    return suffix if suffix in FORMATS[1:] else ("jsonl" if output else "table")


def flat_row(row: dict) -> dict:
    """One line per file with the clip-level scores: what csv, parquet and the table hold."""
    scores = row.get("utterance_scores") or (row.get("overall") or {}).get("scores") or row.get("scores")
    scores = scores if isinstance(scores, dict) else {}
    flat = {"file": row["file"], "emotion": row.get("emotion"), "confidence": row.get("confidence"),
            "duration_s": row.get("duration_s"), "model": row.get("model"), "granularity": row.get("granularity"),
            "kind": "long" if "segments" in row else "clip",
            "segments": len(row["segments"]) if "segments" in row else None,
            **{f"score_{label}": scores.get(label) for label in LABELS}, "embedding": row.get("embedding")}
    if "channel" in row:
        return {"file": flat.pop("file"), "channel": row["channel"], "channel_name": row["channel_name"], **flat}
    return flat


class Writer:
    """Rows out, as they come (`add`), and the files an earlier run finished (`done`)."""

    def __init__(self, output_format: str, output: Path | None, resume: bool, split: bool = False):
        if output_format == "parquet" and output is None:
            raise InvalidParameterError("parquet needs --output FILE")
        if resume and output is None:
            raise InvalidParameterError("--resume needs --output FILE: it skips the files already in it")
        if resume and output_format == "table":
            raise InvalidParameterError("--resume works with json, jsonl, csv or parquet output, not table")
        self.format, self.output = output_format, output
        self.columns = (FLAT_COLUMNS[0], *CHANNEL_COLUMNS, *FLAT_COLUMNS[1:]) if split else FLAT_COLUMNS
        self.previous: list[dict] = self.read_previous() if resume and output.exists() else []
        self.rows: list[dict] = []
        self.stream: IO[str] | None = None
        self.csv: csv.DictWriter | None = None
        if output_format in ("jsonl", "csv"):
            self.open_stream(append=bool(self.previous))

    @property
    def done(self) -> set[str]:
        return {row["file"] for row in self.previous}

    def read_previous(self) -> list[dict]:
        if self.format == "parquet":
            return parquet().read_table(self.output).to_pylist()
        text = self.output.read_text(encoding="utf-8")
        if self.format == "json":
            return json.loads(text) if text.strip() else []
        complete = text[: text.rfind("\n") + 1]  # a run killed mid-write leaves half a line: drop it
        if len(complete) != len(text):
            self.output.write_text(complete, encoding="utf-8")
        if self.format == "csv":
            return list(csv.DictReader(io.StringIO(complete)))
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def open_stream(self, append: bool) -> None:
        if self.output is None:
            self.stream = sys.stdout
        else:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.stream = open(self.output, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115
        if self.format == "csv":
            self.csv = csv.DictWriter(self.stream, self.columns)
            if not append:
                self.csv.writeheader()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.format == "jsonl":
            self.stream.write(json.dumps(row) + "\n")
            self.stream.flush()
        elif self.format == "csv":
            self.csv.writerow(flat_row(row))
            self.stream.flush()

    def close(self) -> None:
        """Finish the output (json and parquet are written here, earlier rows first)."""
        if self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()
        if self.format == "json":
            text = json.dumps(self.previous + self.rows, indent=1)
            if self.output is None:
                sys.stdout.write(text + "\n")
            else:
                self.output.parent.mkdir(parents=True, exist_ok=True)
                self.output.write_text(text + "\n", encoding="utf-8")
        elif self.format == "parquet":
            pa = parquet_module()
            table = pa.Table.from_pylist([*self.previous, *map(flat_row, self.rows)])  # earlier rows: flat already
            self.output.parent.mkdir(parents=True, exist_ok=True)
            parquet().write_table(table, self.output)


def parquet_module():
    try:
        import pyarrow
    except ImportError as e:
        raise InvalidParameterError("parquet output needs pyarrow: pip install 'emoserve[cli]' "
                                    "(or pip install pyarrow)") from e
    return pyarrow


def parquet():
    parquet_module()
    import pyarrow.parquet

    return pyarrow.parquet
