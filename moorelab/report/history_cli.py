"""``moorelab history``: list, export, add and remove the run history records.

The store is :mod:`moorelab.measure.history`; ``moorelab trend local``
(:mod:`moorelab.report.local_trend`) fits a trend over it. Commands:

* ``moorelab history [--json | --csv] [--db PATH]`` -- every record, oldest first: a table, one
  JSON object (``{"database", "schema_version", "units", "records"}``) or CSV (all columns, a header);
* ``moorelab history rm ID`` -- delete one record;
* ``moorelab history add RESULTS_JSON [--date YYYY-MM-DD]`` -- record the rows of a results.json
  written earlier (e.g. when the history was locked at the end of the job), dated by ``--date``
  or by the file's modification time (UTC).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from moorelab.errors import MoorelabError
from moorelab.measure import history

history_app = typer.Typer(help="Your run history: one record per measured row of every run/improve "
                               "(list, --json, --csv, rm, add).", invoke_without_command=True)

DbOpt = typer.Option(None, "--db", help="History database (default: $MOORELAB_HISTORY or "
                                        "<cache>/history.sqlite).")

#: columns of the terminal table (all columns: --json or --csv)
TABLE = (("id", "id"), ("recorded_at", "date (UTC)"), ("command", "job"), ("model", "model"),
         ("row_name", "row"), ("bits_per_byte", "bits/byte"), ("decode_tokens_per_s", "decode tok/s"),
         ("usd_per_million_tokens", "$/1M tok"), ("decode_cpu_share", "CPU share"),
         ("speed_disturbed", "disturbed"), ("missing", "missing"))


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "speed_disturbed":
        return "yes" if v else "no"
    if key == "recorded_at":
        return str(v)[:16].replace("T", " ")
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@history_app.callback()
def history_list(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout (all columns, units)."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout (all columns, a header line)."),
    db: Optional[Path] = DbOpt,
) -> None:
    """List every record of your run history, oldest first."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = db
        return
    if as_json and as_csv:
        raise MoorelabError("--json and --csv: choose one")
    path = db if db is not None else history.default_path()
    records = history.list_records(path)
    if as_json:
        sys.stdout.write(json.dumps({"database": str(path), "schema_version": history.SCHEMA_VERSION,
                                     "units": history.COLUMNS, "records": records}) + "\n")
        return
    if as_csv:
        w = csv.DictWriter(sys.stdout, fieldnames=list(history.COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(records)
        return
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=200)
    if not records:
        con.print(f"no runs recorded yet in {path} (every `moorelab run` and `moorelab improve` adds its rows)")
        return
    t = Table(title=f"run history: {len(records)} record(s) in {path}")
    for _, head in TABLE:
        t.add_column(head, overflow="fold")
    for r in records:
        t.add_row(*(_cell(k, r.get(k)) for k, _ in TABLE))
    con.print(t)


@history_app.command("rm")
def history_rm(ctx: typer.Context, record_id: int = typer.Argument(..., help="Record id (see `moorelab history`)."),
               db: Optional[Path] = DbOpt) -> None:
    """Delete one record of the history by its id."""
    db = db if db is not None else ctx.obj
    rec = history.remove_record(record_id, db)
    typer.echo(f"removed #{rec['id']}: {rec.get('recorded_at')} {rec.get('command')} {rec.get('model')} "
               f"{rec.get('row_name')}")


def _mtime_utc(path: Path) -> str:
    ts = path.stat().st_mtime
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).replace(microsecond=0).isoformat()


@history_app.command("add")
def history_add(ctx: typer.Context,
                results_json: Path = typer.Argument(..., help="A results.json written by run/improve."),
                date: Optional[str] = typer.Option(None, help="Date of the run, YYYY-MM-DD (UTC; default: "
                                                              "the file's modification time)."),
                command: Optional[str] = typer.Option(None, help="Job name (default: from the file's schema)."),
                db: Optional[Path] = DbOpt) -> None:
    """Record the rows of an existing results.json (e.g. one the history missed)."""
    db = db if db is not None else ctx.obj
    try:
        results = json.loads(results_json.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MoorelabError(f"{results_json}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoorelabError(f"{results_json}: not a results.json ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list) or not results["rows"]:
        raise MoorelabError(f"{results_json}: not a results.json (no 'rows' list of measured rows)")
    if date is not None:
        try:
            when = _dt.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=_dt.timezone.utc).isoformat()
        except ValueError:
            raise MoorelabError(f"--date {date!r}: expected YYYY-MM-DD") from None
    else:
        when = _mtime_utc(results_json)
    if command is None:
        schema = str(results.get("schema", ""))  # e.g. "moorelab.run/1"
        command = schema.split(".", 1)[-1].split("/", 1)[0] if schema.startswith("moorelab.") else "unknown"
    ids = history.record_rows(results, command=command, results_path=results_json.resolve(),
                              path=db, recorded_at=when)
    typer.echo(f"recorded {len(ids)} row(s) of {results_json} as #{ids[0]}-#{ids[-1]} ({when[:10]})")
