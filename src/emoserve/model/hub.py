"""Model names → Hugging Face / ModelScope repositories, and a local cache to pull them into.

`emoserve models pull emotion2vec_plus_large` downloads the official directory (config.yaml,
model.pt, tokens.txt) into `$EMOSERVE_CACHE/models/<name>/`, with a progress bar. Offline, it
fails with a message that says what to do instead.

Each known model is downloaded at the revision `MODELS` pins for its source; `EMOSERVE_REVISION` (or
`models pull --revision`) overrides it. A pin is a commit hash where one was found in a public source
(docs/configuration.md cites it), so those downloads are always the same files; the others name the
repository's default branch (Hugging Face `main`, ModelScope `master`), which follows the publisher's
updates, until a maintainer checks a download and pins its hash.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, ModelNotFoundError
from .checkpoint import find_model_files

log = logging.getLogger(__name__)

SOURCES = ("hf", "modelscope")
WANTED_FILES = ["*.yaml", "*.json", "*.pt", "tokens.txt"]  # not the README images and example wavs


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hf_repo: str | None
    hf_revision: str | None
    modelscope_repo: str | None
    modelscope_revision: str | None
    description: str

    def repo(self, source: str) -> str | None:
        return self.hf_repo if source == "hf" else self.modelscope_repo

    def revision(self, source: str) -> str | None:
        return self.hf_revision if source == "hf" else self.modelscope_revision


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # name, Hugging Face repo and revision, ModelScope repo and revision (a commit hash, or the default
        # branch where no hash is known: docs/configuration.md "Model revisions"), about
        ModelSpec("emotion2vec_plus_large", "emotion2vec/emotion2vec_plus_large",
                  "6c303ba987b86b93193de93e34bb2b077a6bedc4",
                  "iic/emotion2vec_plus_large", "master", "9 emotions, 1024-d, best accuracy (default)"),
        ModelSpec("emotion2vec_plus_base", "emotion2vec/emotion2vec_plus_base", "main",
                  "iic/emotion2vec_plus_base", "master", "9 emotions, 768-d, faster"),
        ModelSpec("emotion2vec_plus_seed", "emotion2vec/emotion2vec_plus_seed", "main",
                  "iic/emotion2vec_plus_seed", "master", "9 emotions, 768-d, trained on the seed data only"),
        ModelSpec("emotion2vec_base", "emotion2vec/emotion2vec_base", "0c9a3152734f9d7a7a05b4ee6bfb3c109d288664",
                  "iic/emotion2vec_base", "master", "pre-trained encoder, 768-d embeddings only (no emotion head)"),
        ModelSpec("emotion2vec_base_finetuned", None, None,
                  "iic/emotion2vec_base_finetuned", "master", "9 emotions, 768-d, the first fine-tuned release"),
    )
}


def model_dir(name: str, cache: Path) -> Path:
    return Path(cache) / "models" / name


def is_cached(name: str, cache: Path) -> bool:
    try:
        find_model_files(model_dir(name, cache))
        return True
    except CheckpointError:
        return False


def spec_for(name: str) -> ModelSpec:
    if name not in MODELS:
        known = ", ".join(MODELS)
        raise ModelNotFoundError(
            f"unknown model {name!r}; known models: {known} (or pass a local model directory, or random:tiny)")
    return MODELS[name]


def download_from_hf(repo: str, revision: str, directory: Path) -> None:
    from huggingface_hub import snapshot_download  # shows a tqdm progress bar per file

    snapshot_download(repo_id=repo, revision=revision, local_dir=directory, allow_patterns=WANTED_FILES)


def download_from_modelscope(repo: str, revision: str, directory: Path) -> None:
    from modelscope.hub.snapshot_download import snapshot_download

    snapshot_download(model_id=repo, revision=revision, local_dir=str(directory), allow_patterns=WANTED_FILES)


DOWNLOADERS = {"hf": download_from_hf, "modelscope": download_from_modelscope}


def pull(name: str, cache: Path, source: str = "hf", force: bool = False, revision: str | None = None) -> Path:
    """Download a model directory into the cache (a no-op when it is already there), at `revision` (default:
    the one pinned for the model and source)."""
    spec = spec_for(name)
    if source not in SOURCES:
        raise ModelNotFoundError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    target = model_dir(name, cache)
    if is_cached(name, cache) and not force:
        return target
    repo = spec.repo(source)
    if repo is None:
        other = next(s for s in SOURCES if s != source)
        raise ModelNotFoundError(f"{name} is not published on {source}; use --source {other}")
    revision = revision or spec.revision(source)
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    try:
        DOWNLOADERS[source](repo, revision, partial)
        find_model_files(partial)
    except CheckpointError as e:
        raise ModelNotFoundError(f"downloaded {repo} from {source}, but it is not a usable model directory: "
                                 f"{e.message}") from e
    except Exception as e:  # network, auth, disk: the message must say what to do
        raise ModelNotFoundError(
            f"could not download {name} ({repo}@{revision}) from {source}: {type(e).__name__}: {str(e)[:300]}\n"
            f"If this machine is offline, download the model directory elsewhere "
            f"(e.g. `huggingface-cli download {spec.hf_repo or repo}`), copy it here and pass its path "
            f"(--model /path/to/dir or EMOSERVE_MODEL), or place it in {target}. "
            f"Behind a mirror, set HF_ENDPOINT; from mainland China try --source modelscope."
        ) from e
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    log.info("pulled %s from %s at %s into %s", name, source, revision, target)
    return target


def resolve(name_or_path: str, cache: Path, source: str = "hf", download: bool = True,
            revision: str | None = None) -> Path:
    """A model name or a directory → the directory to load (downloading a known name if allowed)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path not in MODELS and ("/" in name_or_path or name_or_path.startswith(".")):
        raise ModelNotFoundError(f"model directory {name_or_path} does not exist")
    spec_for(name_or_path)
    if is_cached(name_or_path, cache):
        return model_dir(name_or_path, cache)
    if not download:
        raise ModelNotFoundError(f"{name_or_path} is not in the cache {cache}; run `emoserve models pull "
                                 f"{name_or_path}` first")
    return pull(name_or_path, cache, source, revision=revision)
