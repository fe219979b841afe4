"""`emoserve` command line: one typer app, one module per command group."""

from __future__ import annotations

import typer

from . import analyze, bench, cluster, export, models, plot, serve, ui

app = typer.Typer(name="emoserve", help="Speech emotion recognition with emotion2vec: library, service, CLI. "
                  "Settings: EMOSERVE_* variables, or a file named by EMOSERVE_CONFIG (docs/configuration.md).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True)
app.add_typer(models.app, name="models")
app.add_typer(export.app, name="export")
app.command("analyze")(analyze.analyze)
app.command("bench")(bench.bench)
app.command("cluster")(cluster.cluster)
app.command("plot")(plot.plot)
app.command("serve")(serve.serve)
app.command("ui")(ui.ui)


def main() -> None:
    app()
