"""The engine against FunASR's AutoModel.generate, side by side: `python benchmarks/engine_bench.py --help`.

The same program as `emoserve bench` (src/emoserve/cli/bench.py). Full run (random-weight
emotion2vec_plus_large, 5 s and 2-10 s clips, concurrency 1/8/64, every mode):

    PYTHONPATH=src python benchmarks/engine_bench.py
    PYTHONPATH=src python benchmarks/engine_bench.py --quick          # seconds: tiny model, CI smoke run

Results go to benchmarks/results/ as JSON and a markdown table.
"""

import typer

from emoserve.cli.bench import bench

if __name__ == "__main__":
    typer.run(bench)
