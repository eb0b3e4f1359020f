"""Every `moorelab ...` command line in README.md names sub-commands and options the CLI has, and
every `--with` spec in them parses (the README is what users type; this catches drift such as a
documented `explain ffn --model` that the command rejected). The commands are resolved against
the real click tree, nothing is run; `moorelab run --quick` and friends are run by their own tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """`moorelab ...` lines from the bash blocks and inline code spans (``make run ARGS=...`` too)."""
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            out += [part.strip() for part in line.split(";") if part.strip().startswith("moorelab ")]
    for span in re.findall(r"`([^`\n]+)`", text):
        if span.startswith("moorelab "):
            out.append(span.strip())
        m = re.match(r'make run ARGS="([^"]*)"', span)
        if m:
            out.append("moorelab run " + m.group(1))
    return list(dict.fromkeys(out))


def is_group(cmd) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)  # typer may bundle its own click: no isinstance


def resolve(root, words: list[str]) -> list[tuple[object, list[str]]]:
    """The commands a line names (``a|b`` alternatives expand) and the words after them."""
    if not words or not is_group(root):
        return [(root, words)]
    names = words[0].split("|")
    if not all(n in root.commands for n in names):
        return [(root, words)]
    return [r for n in names for r in resolve(root.commands[n], words[1:])]


COMMANDS = readme_commands()


def test_readme_has_the_commands():
    assert len(COMMANDS) >= 10
    assert any(c.startswith("moorelab explain ffn") for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_exists_with_its_options(line):
    from moorelab.cli import app
    from moorelab.improve.api import parse_spec

    root = typer.main.get_command(app)
    words = re.sub(r"\s*\|\s*", "|", line).split()[1:]  # "attention | ffn" -> "attention|ffn": both
    for cmd, rest in resolve(root, words):
        # a group runs alone only when its callback is a command itself (`moorelab history` lists)
        assert not is_group(cmd) or cmd.invoke_without_command, f"{line!r}: {' '.join(rest[:1]) or '(nothing)'} is not a sub-command"
        if (getattr(cmd, "context_settings", None) or {}).get("ignore_unknown_options"):
            continue  # `moorelab lm-eval`: its options are lm-eval's own, passed through
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", " ".join(rest)):
            assert opt in opts, f"{line!r}: {cmd.name} has no option {opt} (has {sorted(opts)})"
        for spec in re.findall(r"--with\s+(\S+)", " ".join(rest)):
            parse_spec(spec)
