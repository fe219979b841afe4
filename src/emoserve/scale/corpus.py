"""`emoserve analyze --ray`: a corpus on a Ray cluster with Ray Data, with the local command's rows.

    file list (the driver: folders, globs, manifests; local paths or fsspec URLs)
    → read + decode + resample (CPU tasks: clips up to `max_duration_s` go on as 16 kHz samples)
    → model replicas (an actor pool, GPU or CPU: each actor loads the model once and runs the local
      command's own per-file function, `analyze_file`, on `--jobs` files at once, which its engine
      batches together; files over the clip limit take the long-audio path right there, decoded on
      the replica, so their samples never cross the object store)
    → rows back to the driver, written by the local command's `Writer` (same columns, same --resume)

Rows equal the local command's by construction: the same function makes them from the same
samples. A file that cannot be listed, read, decoded or analysed becomes an error row, reported
like the local command's failures; the run goes on. Every `EMOSERVE_*` variable of the driver is
set in the workers too, so the limits and long-audio options are the same everywhere.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..audio import AudioSource, decode_audio
from ..cli.analyze import AUDIO_EXTENSIONS, TOO_LONG, Failure, analyze_file, collect_files, make_client, save_embedding
from ..cli.outputs import Writer
from ..config import Settings, get_settings
from ..errors import EmoserveError, InvalidParameterError

MANIFEST_SUFFIXES = (".txt", ".lst")
GLOB_CHARACTERS = "*?["


# ---- the file list, on the driver ----

def is_url(path: str) -> bool:
    return "://" in path


def list_inputs(paths: Sequence[str], recursive: bool) -> tuple[list[str], list[Failure]]:
    """The files to analyse, in order, each once: files as given, audio files in folders (subfolders with
    `recursive`), the matches of globs, and the lines of manifests (*.txt, *.lst: one path or URL per line,
    relative to the manifest's folder; # starts a comment). URLs go through fsspec."""
    files: list[str] = []
    failures: list[Failure] = []
    for given in paths:
        found = list_url(given, recursive) if is_url(given) else list_local(given, recursive)
        if found:
            files += found
        else:
            failures.append(Failure(given, "not_found", "no such file or folder, or nothing matches"))
    return list(dict.fromkeys(files)), failures


def list_local(given: str, recursive: bool) -> list[str]:
    if any(c in given for c in GLOB_CHARACTERS):
        return sorted(p for p in glob.glob(given, recursive=True) if os.path.isfile(p))
    path = Path(given)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return manifest_lines(path.read_text(encoding="utf-8"), lambda line: str(path.parent / line))
    found, _ = collect_files([path], recursive)
    return [str(f) for f in found]


def list_url(url: str, recursive: bool) -> list[str]:
    fs, root = filesystem(url)
    if any(c in root for c in GLOB_CHARACTERS):
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(root) if fs.isfile(p))
    if fs.isdir(root):
        found = fs.find(root) if recursive else [e["name"] for e in fs.ls(root, detail=True) if e["type"] == "file"]
        return sorted(fs.unstrip_protocol(p) for p in found if Path(p).suffix.lower() in AUDIO_EXTENSIONS)
    if not fs.isfile(root):
        return []
    if Path(root).suffix.lower() in MANIFEST_SUFFIXES:
        with fs.open(root, "r", encoding="utf-8") as f:
            text = f.read()
        folder = url.rsplit("/", 1)[0]
        return manifest_lines(text, lambda line: f"{folder}/{line}")
    return [url]


def manifest_lines(text: str, relative) -> list[str]:
    """A manifest's entries: URLs and absolute paths as they are, relative paths through `relative`."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line if is_url(line) or os.path.isabs(line) else relative(line) for line in lines if line]


def filesystem(url: str):
    """The fsspec filesystem of a URL and the path in it; a scheme whose package is missing says which."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise InvalidParameterError(f"cannot open {url}: {e}") from e


# ---- the workers ----

def audio_source(file: str) -> AudioSource:
    """What `analyze_file` reads a file from: a local path as the local command gives it, a URL's bytes."""
    if not is_url(file):
        return Path(file)
    fs, path = filesystem(file)
    with fs.open(path, "rb") as f:
        return f.read()


def decode_file(row: dict, max_seconds: float) -> dict:
    """Read and decode one file on a CPU worker. A clip goes on as its 16 kHz samples; a file over the
    clip limit goes on as `long` (the replica runs the long-audio path on it); a failure as an error row."""
    out = {"file": row["file"], "samples": b"", "long": False, "error_code": "", "error_message": ""}
    try:
        out["samples"] = decode_audio(audio_source(row["file"]), max_seconds=max_seconds).tobytes()
    except Exception as e:  # one bad file is an error row, never a failed job
        if isinstance(e, EmoserveError) and e.code in TOO_LONG:
            out["long"] = True
        else:
            out.update(error_columns(row["file"], e))
    return out


def error_columns(file: str, error: Exception) -> dict:
    failure = Failure.of(file, error)
    return {"error_code": failure.code, "error_message": failure.message}


class ModelReplica:
    """One model on one worker, loaded once. Ray Data calls it with one decoded file at a time, `--jobs`
    calls at once (threads), which the model's engine batches like the local command's files."""

    def __init__(self, model: str | None, device: str | None, granularity: str, want_embedding: bool):
        self.client = make_client(None, model, None, False, device)
        self.granularity, self.want_embedding = granularity, want_embedding

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        results = [self.analyze(row) for row in rows]
        return {column: [result[column] for result in results] for column in results[0]}

    def analyze(self, row: dict) -> dict:
        file = str(row["file"])
        out = {"file": file, "result": "", "embedding": b"", "error_code": str(row["error_code"]),
               "error_message": str(row["error_message"])}
        if out["error_code"]:
            return out
        try:
            # decoded samples are read-only views of the block: a copy the engine may own
            audio = audio_source(file) if row["long"] else np.frombuffer(row["samples"], dtype=np.float32).copy()
            result, embedding = analyze_file(self.client, file, self.granularity, self.want_embedding, audio=audio)
        except Exception as e:  # as in the local command: this file fails, the run goes on
            out.update(error_columns(file, e))
            return out
        out["result"] = json.dumps(result)
        if embedding is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(embedding))
            out["embedding"] = buffer.getvalue()
        return out


# ---- the driver ----

@contextlib.contextmanager
def ray_connection(address: str) -> Iterator[None]:
    """Connect to the cluster at `address` (auto: the running one; local: start one here, on loopback
    only and without Ray's usage report), unless this process is connected already."""
    if address == "local":  # read by Ray when it is imported, and by every process it starts
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:
        raise InvalidParameterError("--ray needs Ray: pip install 'emoserve[ray]'") from e
    if ray.is_initialized():
        yield
        return
    options = {"_node_ip_address": "127.0.0.1", "include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, **options)
    except ConnectionError as e:
        raise InvalidParameterError(f"no Ray cluster at --ray {address} ({e}): start one with `ray start --head` "
                                    "(docs/scaling.md), or use --ray local") from e
    try:
        yield
    finally:
        ray.shutdown()


def pipeline(files: list[str], settings: Settings, granularity: str, want_embedding: bool, jobs: int):
    """The Ray Dataset of result rows (lazy: it runs as it is iterated)."""
    import ray.data

    workers = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("EMOSERVE_")}}
    replicas = ray.data.ActorPoolStrategy(min_size=settings.ray.min_replicas, max_size=settings.ray.max_replicas,
                                          max_concurrent_calls_per_actor=jobs, enable_true_multi_threading=True)
    return (ray.data.from_items([{"file": f} for f in files])
            .map(decode_file, fn_kwargs={"max_seconds": settings.server.max_duration_s}, runtime_env=workers)
            .map_batches(ModelReplica, batch_size=1, compute=replicas, runtime_env=workers,
                         num_cpus=settings.ray.replica_cpus, num_gpus=settings.ray.replica_gpus,
                         fn_constructor_kwargs={"model": settings.model.model, "device": settings.model.device,
                                                "granularity": granularity, "want_embedding": want_embedding}))


def run_corpus(address: str, files: list[str], writer: Writer, model: str | None, device: str | None,
               granularity: str, embeddings_dir: Path | None, jobs: int) -> list[Failure]:
    """Analyse `files` on the cluster; rows are written as they arrive, failures collected, not raised."""
    failures: list[Failure] = []
    if not files:
        return failures
    settings = get_settings(model=model, device=device)
    with ray_connection(address):
        for row in pipeline(files, settings, granularity, embeddings_dir is not None, jobs).iter_rows():
            if row["error_code"]:
                failures.append(Failure(row["file"], row["error_code"], row["error_message"]))
                continue
            result = json.loads(row["result"])
            if embeddings_dir is not None and row["embedding"]:
                embedding = np.load(io.BytesIO(row["embedding"]))
                result["embedding"] = str(save_embedding(embeddings_dir, Path(row["file"]), embedding))
            writer.add(result)
    return failures
