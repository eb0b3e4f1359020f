"""`moorelab explain attention|ffn`: the textbook worked examples, computed by our layers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

explain_app = typer.Typer(help="Worked examples of attention and the FFN, step by step.", no_args_is_help=True)


def _print(title: str, lines: list[tuple[str, str]]) -> None:
    from rich.console import Console

    con = Console()
    con.rule(title)
    for head, value in lines:
        con.print(head, style="bold", markup=False, highlight=False)
        if value:
            con.print(value, markup=False, highlight=False)


@explain_app.command("attention")
def attention_command(
    model: Optional[str] = typer.Option(None, "--model", help="Also plot a real model's attention (name or path)."),
    text: str = typer.Option("The capital of France is Paris.", "--text", help="Text for the heat-map."),
    layer: int = typer.Option(0, "--layer", help="Layer index for the heat-map (0-based; -1 = last)."),
    head: int = typer.Option(0, "--head", help="Head index for the heat-map (0-based)."),
    out: Path = typer.Option(Path("attention.png"), "--out", help="Heat-map PNG path."),
) -> None:
    """softmax(Q·Kᵀ/√d_k)·V for Q = K = V = [[0.1,0.2,0.3],[0.4,0.5,0.6],[0.7,0.8,0.9]], d_k = 3."""
    from moorelab.model.explain import attention_heatmap, attention_report, explain_attention

    _print("scaled dot-product attention (moorelab.model.transformer.Attention, eager path)",
           attention_report(explain_attention()))
    if model:
        from moorelab.model.zoo import load_pretrained

        loaded = load_pretrained(model, progress=lambda s: typer.echo(s, err=True))
        weights, tokens, path = attention_heatmap(loaded, text, layer, head, out)
        typer.echo(f"\n{loaded.name}: layer {layer}, head {head}, {len(tokens)} tokens; heat-map saved to {path}")
        hm = getattr(loaded.model.blocks[layer].attn, "head_map", None)  # set by head pruning (improve)
        if hm is not None:
            typer.echo(f"heads of a pruned layer are numbered as they are now: head {head} was head "
                       f"{hm['heads'][head]} of the original model (removed there: {hm['heads_removed']})")


@explain_app.command("ffn")
def ffn_command() -> None:
    """FFN(x) = ReLU(W2·ReLU(W1·x + b1) + b2) for the textbook x, W1, b1, W2, b2."""
    from moorelab.model.explain import TEXTBOOK_FFN, explain_ffn, ffn_report

    t = TEXTBOOK_FFN
    inputs = [(f"{k} = {t[k]}", "") for k in ("W1", "b1", "W2", "b2")]
    _print("feed-forward network (moorelab.model.transformer.FeedForward, ReLU)", inputs + ffn_report(explain_ffn()))
