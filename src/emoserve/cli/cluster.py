"""`emoserve cluster`: group recordings by their emotion2vec embeddings (k-means), with a 2-D map.

Embeddings come from `emoserve analyze --embeddings-dir DIR` (a folder of .npy files) or from that
command's results file, whose `embedding` column points at them. Frame or segment embeddings
(T, D) are averaged to one vector per file; vectors are L2-normalised, so k-means groups by
direction (cosine similarity), which is what the embeddings encode.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from ..errors import InvalidParameterError
from .common import clean_errors, console


def load_embeddings(source: Path) -> tuple[list[str], np.ndarray, list[str | None]]:
    """(names, (N, D) matrix, emotions or None per file) from a .npy folder or a results file."""
    if source.is_dir():
        files = sorted(source.rglob("*.npy"))
        names, emotions = [str(f.relative_to(source)) for f in files], [None] * len(files)
    elif source.is_file():
        rows = [r for r in read_rows(source) if r.get("embedding")]
        files = [resolve(source, r["embedding"]) for r in rows]
        names, emotions = [r["file"] for r in rows], [r.get("emotion") or None for r in rows]
    else:
        raise InvalidParameterError(f"{source} is neither a folder of .npy files nor a results file")
    if not files:
        raise InvalidParameterError(f"no embeddings in {source}: run `emoserve analyze ... --embeddings-dir DIR`")
    vectors = []
    for f in files:
        array = np.load(f, allow_pickle=False).astype(np.float64)
        vectors.append(array.mean(axis=0) if array.ndim == 2 else array.reshape(-1))
    if len({v.shape for v in vectors}) != 1:
        raise InvalidParameterError("the embeddings differ in size: were they made by different models?")
    return names, np.stack(vectors), emotions


def resolve(results: Path, embedding: str) -> Path:
    path = Path(embedding)
    return path if path.is_absolute() or path.exists() else results.parent / path


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        from .outputs import parquet

        return parquet().read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def kmeans(matrix: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(matrix)


def choose_k(matrix: np.ndarray, max_k: int, seed: int) -> tuple[int, dict[int, float]]:
    """The k in 2..max_k with the best silhouette score (how much closer points are to their own cluster)."""
    from sklearn.metrics import silhouette_score

    candidates = range(2, min(max_k, len(matrix) - 1) + 1)
    if not candidates:
        raise InvalidParameterError(f"choosing k needs at least 3 embeddings; there are {len(matrix)}")
    scores = {k: float(silhouette_score(matrix, kmeans(matrix, k, seed))) for k in candidates}
    return max(scores, key=scores.get), scores


def project_2d(matrix: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    if len(matrix) < 2:
        return np.zeros((len(matrix), 2))
    points = PCA(n_components=min(2, matrix.shape[1], len(matrix)), random_state=0).fit_transform(matrix)
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))


def plot_clusters(points: np.ndarray, labels: np.ndarray, title: str, path: Path) -> None:
    from .plot import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 6))
    for cluster in np.unique(labels):
        members = labels == cluster
        axes.scatter(points[members, 0], points[members, 1], s=24, label=f"cluster {cluster} ({members.sum()})")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title(title)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def cluster(
    source: Annotated[Path, typer.Argument(help="folder of .npy embeddings, or a results file of `analyze`",
                                           exists=True)],
    k: Annotated[str, typer.Option("--k", help="number of clusters, or auto (best silhouette)")] = "auto",
    max_k: Annotated[int, typer.Option(min=2, help="largest k tried by --k auto")] = 10,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="default: beside SOURCE")] = None,
    seed: Annotated[int, typer.Option(help="k-means random seed")] = 0,
) -> None:
    """Cluster embeddings with k-means: writes clusters.csv (file → cluster) and clusters.png (2-D PCA map)."""
    with clean_errors():
        names, matrix, emotions = load_embeddings(source)
        matrix = normalise(matrix)
        if k == "auto":
            chosen, silhouettes = choose_k(matrix, max_k, seed)
        elif k.isdigit() and 1 <= int(k) <= len(matrix):
            chosen, silhouettes = int(k), {}
        else:
            raise InvalidParameterError(f"--k must be auto or 1 to {len(matrix)} (the number of embeddings)")
        labels = kmeans(matrix, chosen, seed)
        out = output_dir or (source if source.is_dir() else source.parent)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "clusters.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "cluster", "emotion"])
            writer.writerows(zip(names, labels.tolist(), emotions))
        title = f"k = {chosen}" + (f", silhouette {silhouettes[chosen]:.2f}" if silhouettes else "")
        plot_clusters(project_2d(matrix), labels, f"{len(names)} recordings, {title}", out / "clusters.png")
    table = Table("cluster", "files", "emotions", title=title)
    for c in range(chosen):
        members = [e for e, label in zip(emotions, labels) if label == c]
        counts = {e: members.count(e) for e in dict.fromkeys(members) if e}
        table.add_row(str(c), str(len(members)), ", ".join(f"{e} {n}" for e, n in counts.items()) or "-")
    console.print(table)
    if silhouettes:
        console.print("silhouette by k: " + ", ".join(f"{n}: {s:.3f}" for n, s in silhouettes.items()))
    console.print(f"wrote {out / 'clusters.csv'} and {out / 'clusters.png'}")
