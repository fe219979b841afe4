"""`emoserve analyze`: the emotion of many files, with a local model or a server, resumable.

Files are analysed `--jobs` at a time: against a server those are concurrent requests (the
server batches them); locally they go through one `Engine`, which batches them the same way.
Files over the single-request limit go through the long-audio path (`analyze_long`). With `--ray`,
files go through the same per-file function on a Ray cluster (`emoserve.scale.corpus`).
`--channels split` analyses each channel of a file on its own (a stereo call): one row per channel,
with `channel` and `channel_name`.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ..config import ModelConfig, get_settings
from ..errors import EmoserveError, InvalidParameterError
from ..inference.results import parse_channel_names
from .common import (
    Backend,
    Channels,
    Granularity,
    OutputFormat,
    Precision,
    about,
    clean_errors,
    complete_device,
    console,
    require_server,
    value_of,
)
from .outputs import Writer, flat_row, infer_format

if TYPE_CHECKING:
    from ..audio import AudioSource

AUDIO_EXTENSIONS = {".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".webm",
                    ".mka", ".wma", ".aif", ".aiff", ".caf", ".au", ".amr", ".w64"}
TOO_LONG = {"audio_too_long", "payload_too_large"}


@dataclass(frozen=True)
class Failure:
    file: str
    code: str
    message: str

    @classmethod
    def of(cls, file: str, error: Exception) -> Failure:
        """Our errors keep their code and message; anything else (httpx, OS, torch) is named by its type."""
        if isinstance(error, EmoserveError):
            return cls(file, error.code, error.message)
        return cls(file, type(error).__name__, str(error))


def collect_files(paths: list[Path], recursive: bool) -> tuple[list[Path], list[Failure]]:
    """Files as given, and the audio files in folders (sorted; subfolders with `recursive`)."""
    files, missing = [], []
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            files += sorted(p for p in found if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            missing.append(Failure(str(path), "not_found", "no such file or folder"))
    return list(dict.fromkeys(files)), missing


def embedding_path(directory: Path, file: Path, channel: int | None = None) -> Path:
    """DIR/<the file's path, without root or '..'>.npy (.chK.npy for channel K): one .npy per input (and
    channel), never outside DIR."""
    parts = [p for p in file.parts if p not in ("..", ".", file.anchor)]
    suffix = ".npy" if channel is None else f".ch{channel}.npy"
    return directory.joinpath(*parts[:-1], parts[-1] + suffix)


def analyze_file(client, path: Path | str, granularity: str, want_embedding: bool,
                 audio: AudioSource | None = None) -> tuple[dict, Any]:
    """(row, embedding) for one file: one request, or the long-audio path when it is over the limit.

    `audio` is the file's content when it was read or decoded elsewhere (the Ray pipeline); default: `path`.
    """
    audio = path if audio is None else audio
    try:
        result = client.analyze(audio, granularity=granularity, return_embedding=want_embedding)
        return {"file": str(path), **result.to_dict()}, result.embedding
    except EmoserveError as e:
        if e.code not in TOO_LONG:
            raise
    timeline = client.analyze_long(audio, granularity=granularity, return_embedding=want_embedding)
    overall = timeline.overall
    row = {"file": str(path), "emotion": overall.emotion, "confidence": overall.confidence, **timeline.to_dict()}
    return row, timeline.embedding


def analyze_channels_file(client, path: Path, granularity: str, want_embedding: bool,
                          names: str | None) -> list[tuple[dict, Any]]:
    """(row, embedding) for each channel of one file (channels=split): one request, or the long-audio path."""
    try:
        result = client.analyze(path, granularity=granularity, return_embedding=want_embedding, channels="split",
                                channel_names=names)
        return [(channel_row(path, entry.channel, entry.name, entry.result.to_dict()), entry.result.embedding)
                for entry in result.channels]
    except EmoserveError as e:
        if e.code not in TOO_LONG:
            raise
    timeline = client.analyze_long(path, granularity=granularity, return_embedding=want_embedding,
                                   channels="split", channel_names=names)
    rows = []
    for entry in timeline.channels:
        overall = entry.result.overall
        body = {"emotion": overall.emotion, "confidence": overall.confidence, **entry.result.to_dict()}
        rows.append((channel_row(path, entry.channel, entry.name, body), entry.result.embedding))
    return rows


def channel_row(path: Path, channel: int, name: str, body: dict) -> dict:
    return {"file": str(path), "channel": channel, "channel_name": name, **body}


def make_client(server: str | None, model: str | None, api_key: str | None, preconvert: bool, device: str | None,
                precision: str | None = None, backend: str | None = None):
    if server and model:
        raise InvalidParameterError("use --server URL or --model NAME, not both")
    settings = get_settings(model=model, device=device, precision=precision, backend=backend)
    if server:
        from ..client import EmoClient

        return EmoClient(server, api_key, preconvert=preconvert, resume_dir=settings.model.cache / "client-uploads")
    require_server("emoserve analyze without --server")
    from ..client import LocalClient
    from ..inference.emotion_model import EmotionModel  # torch loads here, not for `emoserve --help`

    loaded = EmotionModel.from_config(settings.model, settings.engine.threads)
    return LocalClient(loaded, max_duration_s=settings.server.max_duration_s)


def analyze(
    paths: Annotated[list[str], typer.Argument(help="audio files and folders; with --ray also globs, manifests "
                                                    "(*.txt, *.lst) and URLs (s3://, gs://, ...)")],
    server: Annotated[str | None, typer.Option(help="emoserve URL; default: a local model", envvar="EMOSERVE_SERVER",
                                               show_envvar=True)] = None,
    model: Annotated[str | None, typer.Option(help="local model: name, model dir or random:tiny|base|large")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --server", envvar="EMOSERVE_API_KEY")] = None,
    granularity: Annotated[Granularity, typer.Option(help="one result per file, or per 20 ms frame")]
    = Granularity.utterance,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="look into subfolders")] = False,
    output_format: Annotated[OutputFormat | None, typer.Option(
        "--format", help="default: from --output's suffix, else table")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write results here (default stdout)")] = None,
    embeddings_dir: Annotated[Path | None, typer.Option(help="save each file's embedding as a .npy here")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="files analysed at once")] = 4,
    resume: Annotated[bool, typer.Option("--resume", help="skip the files already in --output")] = False,
    preconvert: Annotated[bool, typer.Option("--preconvert", help="decode to 16 kHz mono FLAC before uploading")]
    = False,
    device: Annotated[str | None, typer.Option(help="local model device: auto, cpu, cuda, cuda:N",
                                               autocompletion=complete_device)] = None,
    ray: Annotated[str | None, typer.Option(
        help="run on a Ray cluster with Ray Data: auto (the running cluster), local (start one here) or its "
             "address; --jobs is then files at once per model replica (docs/scaling.md)")] = None,
    precision: Annotated[Precision | None, typer.Option(help="local model: exact (default) or fast (docs/engine.md)")]
    = None,
    channels: Annotated[Channels, typer.Option(help="mix: channels averaged to mono; split: each channel on its own "
                                                   "(a stereo call), one row per channel (docs/calls.md)")]
    = Channels.mix,
    channel_names: Annotated[str | None, typer.Option(help="with --channels split: comma-separated names, one per "
                                                           "channel (default left,right,ch2,...)")] = None,
    backend: Annotated[Backend | None, typer.Option(help="local model: " + about(ModelConfig, "backend"))] = None,
) -> None:
    """Emotion of audio files and folders, with a progress bar, a summary and a list of failures."""
    granularity = granularity.value
    split = channels.value == "split"
    with clean_errors():
        fmt = infer_format(output, value_of(output_format))
        if ray is not None and server:
            raise InvalidParameterError("--ray runs a local --model on the cluster's workers, not --server")
        if ray is not None and split:
            raise InvalidParameterError("--ray analyses files mixed to mono: run --channels split without --ray "
                                        "(locally or with --server)")
        if channel_names is not None and not split:
            raise InvalidParameterError("--channel-names names the channels of --channels split")
        parse_channel_names(channel_names)
        if ray is None:
            files, failures = collect_files([Path(p) for p in paths], recursive)
        else:
            from ..scale.corpus import list_inputs  # Ray is imported only with --ray

            files, failures = list_inputs(paths, recursive)
        writer = Writer(fmt, output, resume, split=split)
        todo = [f for f in files if str(f) not in writer.done]
        client = make_client(server, model, api_key, preconvert, device, value_of(precision),
                             value_of(backend)) if ray is None else None
        started = time.perf_counter()
        try:
            if client is not None:
                names = channel_names if split else None
                failures += run_all(client, todo, writer, granularity, embeddings_dir, jobs, split, names)
            else:
                from ..scale.corpus import run_corpus

                failures += run_corpus(ray, todo, writer, model, device, granularity, embeddings_dir, jobs)
        finally:
            if client is not None:
                client.close()
            writer.close()
    if fmt == "table":
        print_table(writer.rows, output, split)
    print_summary(writer.rows, failures, len(files) - len(todo), time.perf_counter() - started)
    if failures:
        raise typer.Exit(1)


def run_all(client, files: list[Path], writer: Writer, granularity: str, embeddings_dir: Path | None,
            jobs: int, split: bool = False, names: str | None = None) -> list[Failure]:
    """Analyse `jobs` files at a time; rows are written as each finishes; failures are collected, not raised.

    `split`: each channel of a file on its own, a row per channel, written together."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    failures: list[Failure] = []
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress, \
            ThreadPoolExecutor(jobs, thread_name_prefix="emoserve-analyze") as pool:
        task = progress.add_task("analysing", total=len(files))
        want_embedding = embeddings_dir is not None
        pending = {(pool.submit(analyze_channels_file, client, path, granularity, want_embedding, names) if split
                    else pool.submit(analyze_file, client, path, granularity, want_embedding)): path
                   for path in files}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    path = pending.pop(future)
                    try:
                        done = future.result()
                    except Exception as e:  # ours, OS, httpx errors, timeouts: this file fails, the run goes on
                        failures.append(Failure.of(str(path), e))
                    else:
                        for row, embedding in (done if split else [done]):
                            if embeddings_dir is not None and embedding is not None:
                                target = save_embedding(embeddings_dir, path, embedding, row.get("channel"))
                                row["embedding"] = str(target)
                            writer.add(row)
                    progress.advance(task)
        except KeyboardInterrupt:
            for future in pending:
                future.cancel()
            console.print(f"interrupted: {len(writer.rows)} results written; rerun with --resume to continue")
            raise
    return failures


def save_embedding(directory: Path, file: Path, embedding, channel: int | None = None) -> Path:
    import numpy as np

    target = embedding_path(directory, file, channel)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, embedding)
    return target


def print_table(rows: list[dict], output: Path | None, split: bool = False) -> None:
    from rich.console import Console

    table = Table("file", *(("channel", "channel_name") if split else ()), "emotion", "confidence", "duration (s)",
                  "kind")
    for row in map(flat_row, rows):
        confidence = f"{row['confidence']:.3f}" if row["confidence"] is not None else "-"
        channel = (str(row["channel"]), row["channel_name"]) if split else ()
        table.add_row(row["file"], *channel, row["emotion"] or "-", confidence, f"{row['duration_s']:.2f}",
                      row["kind"])
    if output is None:
        Console().print(table)
    else:
        with open(output, "w", encoding="utf-8") as f:
            Console(file=f, width=200).print(table)


def print_summary(rows: list[dict], failures: list[Failure], skipped: int, elapsed: float) -> None:
    audio_s = sum(row.get("duration_s") or 0.0 for row in rows)
    summary = Table(title="summary", show_header=False)
    summary.add_row("analysed", str(len(rows)))
    summary.add_row("failed", str(len(failures)))
    if skipped:
        summary.add_row("skipped (already in output)", str(skipped))
    summary.add_row("audio", f"{audio_s:.1f} s")
    summary.add_row("time", f"{elapsed:.1f} s ({len(rows) / elapsed:.2f} files/s)" if elapsed > 0 else "-")
    for emotion, count in Counter(row.get("emotion") or "-" for row in rows).most_common():
        summary.add_row(f"  {emotion}", str(count))
    console.print(summary)
    if failures:  # one line each, never wrapped: easy to grep and to copy a path from
        console.print(f"[red]{len(failures)} failed[/red]:")
        for failure in failures:
            console.print(f"  {failure.file}: {failure.code}: {failure.message}", highlight=False, soft_wrap=True,
                          markup=False)
