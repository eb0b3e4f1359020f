"""lm-evaluation-harness model adapter: run any lm-eval task on moorelab's Transformer and on its
quantized or pruned variants.

    lm_eval run --model moorelab --model_args pretrained=smollm2-135m,improve=int4 --tasks moorelab_hamlet_cloze \
        --include_path ~/.cache/moorelab/tasks --limit 50
    moorelab lm-eval --model_args pretrained=smollm2-135m,improve=int4 --tasks moorelab_hamlet_cloze --limit 50

Registration: lm-eval 0.4.13 reads no plugin entry points (its registry holds a fixed table,
``lm_eval/models/__init__.py``). ``moorelab lm-eval --register`` (run by ``make setup``) writes a
``.pth`` start-up hook into site-packages (:mod:`moorelab.report.lm_eval_plugin`): in every process,
right after ``lm_eval.models`` has filled lm-eval's registry, it adds the lazy placeholder
``moorelab -> moorelab.report.lm_eval_adapter:MoorelabLM``, so lm-eval's own ``lm_eval`` command (and
``lm_eval.simple_evaluate(model="moorelab", ...)``) finds the model, and this module is imported only
when lm-eval asks for it. Importing this module registers :class:`MoorelabLM` itself too (lm-eval's
registry upgrades the placeholder to the class), which is all ``moorelab lm-eval ARGS`` (or
``python -m moorelab.report.lm_eval_adapter ARGS``) needs: it works without the hook. It runs
lm-eval's own command line (``lm_eval.__main__.cli_evaluate``), adding ``--model moorelab`` when no
``--model`` is given and ``--include_path <cache>/tasks`` (the named tasks written by ``moorelab
eval-tasks``) when no ``--include_path`` is, and sets ``HF_DATASETS_OFFLINE=1``: tasks must read
local files (with the plain ``lm_eval`` command set ``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1``
yourself where hubs are unreachable).

``--model_args``: ``pretrained`` (a model name, HF folder, ``.gguf`` or saved ``moorelab improve``
folder; default smollm2-135m), ``improve`` (technique specs as ``moorelab improve --with``, several
joined by ``+``; as lm-eval splits ``model_args`` on commas, fields inside a spec are separated by
``;``: ``improve=int4:group_size=32;activation_bits=8``), ``max_length`` (default: the model's
``max_position_embeddings``, as lm-eval's ``hf`` backend reads it), ``threads``.

Requests (lm-eval ``LM`` API; tokenization by lm-eval's ``TemplateLM``, so contexts and
continuations are split exactly as for ``--model hf``):

* ``loglikelihood``: requests that share a context are scored together by
  :func:`moorelab.measure.choice.score_continuations` (the context once on a KV cache, the
  continuations in one batch); over-long inputs are truncated from the left as lm-eval does.
* ``loglikelihood_rolling``: lm-eval's disjoint rolling windows (``get_rolling_token_windows``,
  context 1, prefix token BOS/EOS), each scored the same way, summed per document.
* ``generate_until``: greedy decoding (:func:`moorelab.model.generate.generate`) until a stop
  string of ``until``, an end-of-sequence token or ``max_gen_toks`` (default 256); the stop
  string is cut off, as lm-eval does. Sampling (``do_sample=True``) is refused.
"""

from __future__ import annotations

import os
import sys
from typing import List

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

import lm_eval.models  # noqa: F401  (lm-eval's own table, before ours: get_model imports it only into an empty registry)

from moorelab.report.lm_eval_plugin import MODEL_NAME

DEFAULT_MAX_GEN_TOKS = 256


def parse_improve(improve: str | None) -> list[str]:
    """``"int4:group_size=32;activation_bits=8+ffn:fraction=0.25"`` -> technique specs in order."""
    if not improve:
        return []
    return [s.strip().replace(";", ",") for s in str(improve).split("+") if s.strip()]


class MoorelabLM(TemplateLM):
    """lm-eval ``LM`` backed by moorelab's Transformer (see the module docstring).

    Args:
        pretrained: model name or path for :func:`moorelab.model.zoo.load_pretrained`.
        improve: technique specs (``+`` between techniques, ``;`` between fields) applied in order.
        max_length: context in tokens (default: the model's ``max_position_embeddings``).
        threads: torch threads.
        kwargs: lm-eval's ``batch_size``, ``device``, ``max_batch_size``, ``dtype`` (accepted,
            unused: the model runs on the CPU in float32 whatever ``--device`` says (lm-eval's
            default is ``cuda``), one context at a time).

    Raises:
        MoorelabError: unknown model, bad spec.
    """

    def __init__(self, pretrained: str = "smollm2-135m", improve: str | None = None, max_length: int | None = None,
                 threads: int | None = None, **kwargs) -> None:
        super().__init__()
        import torch

        import moorelab.improve.save  # noqa: F401  (loads saved `moorelab improve` folders)
        from moorelab.improve.api import ApplyContext, apply, needs_calibration, parse_spec, precheck_chain
        from moorelab.measure.text import calibration_windows
        from moorelab.model.tokenize import encode_text
        from moorelab.model.zoo import load_pretrained

        if threads:
            torch.set_num_threads(int(threads))
        self.specs = parse_improve(improve)
        configs = [parse_spec(s) for s in self.specs]
        precheck_chain(self.specs, configs)
        self.loaded = load_pretrained(str(pretrained))
        self.model = self.loaded.model
        precheck_chain(self.specs, configs, self.model)
        ctx = ApplyContext()
        if any(needs_calibration(c) for c in configs):
            ctx.calibration = calibration_windows(self.loaded.tokenizer, "histories/henry-v.md", 4096)
        if any(type(c).__name__ == "DistillConfig" for c in configs):
            ctx.teacher = load_pretrained(str(pretrained)).model
        for cfg in configs:
            apply(self.model, cfg, ctx)
        self.model.eval()
        self._max_length = int(max_length) if max_length else int(self.loaded.config.max_position_embeddings)
        self._encode = lambda text: encode_text(self.loaded.tokenizer, text)

    # ---- tokenization (TemplateLM builds context/continuation pairs from these) ----
    @property
    def eot_token_id(self) -> int:
        return self.loaded.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # lm-eval's hf backend: BOS, else EOS
        return self.loaded.bos_token_id if self.loaded.bos_token_id is not None else self.loaded.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return f"moorelab:{self.loaded.name}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of ``string`` as ordinary text (no special tokens added; SmolLM2's tokenizer
        adds none either way)."""
        return self._encode(string)

    def tok_decode(self, tokens) -> str:
        return self.loaded.tokenizer.decode(list(tokens), skip_special_tokens=False)

    # ---- the three request types ----
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``requests``: ``((context, continuation), ctx_ids, cont_ids)``; those sharing
        ``ctx_ids`` are scored together. Returns ``(log-likelihood in nats, greedy?)`` in order."""
        from tqdm import tqdm

        from moorelab.measure.choice import score_continuations

        groups: dict[tuple, list[int]] = {}
        for i, (_, ctx, _) in enumerate(requests):
            groups.setdefault(tuple(ctx), []).append(i)
        res: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="moorelab loglikelihood")
        for ctx, idx in groups.items():
            lls, greedy, _ = score_continuations(self.model, list(ctx), [requests[i][2] for i in idx], self.max_length)
            for i, ll, g in zip(idx, lls, greedy):
                res[i] = (ll, g)
            bar.update(len(idx))
        bar.close()
        return res  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-likelihoods of each document over lm-eval's disjoint rolling windows."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for (string,) in [r.args for r in requests]:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            lls = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            out.append(sum(ll for ll, _ in lls))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context until a stop string, EOS or ``max_gen_toks``."""
        import torch
        from tqdm import tqdm

        from moorelab.errors import MoorelabError
        from moorelab.model.generate import generate

        class _Stop(Exception):
            pass

        out = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm, desc="moorelab generate"):
            kw = dict(gen_kwargs or {})
            if kw.get("do_sample") and float(kw.get("temperature", 1.0) or 0) > 0:
                raise MoorelabError("generate_until: sampling (do_sample=True) is not supported by the moorelab backend; greedy only")
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):]
            new: list[int] = []

            def on_token(tok, new=new, until=until):
                new.append(int(tok[0]))
                if until and any(s in self.tok_decode(new) for s in until):
                    raise _Stop

            try:
                generate(self.model, torch.tensor([ids]), max_new_tokens=max_new, eos_token_id=self.loaded.eos_token_ids,
                         on_token=on_token)
            except _Stop:
                pass
            if new and new[-1] in self.loaded.eos_token_ids:
                new = new[:-1]
            text = self.tok_decode(new)
            for s in until:
                if s and s in text:
                    text = text.split(s)[0]
            out.append(text)
        return out


if __name__ != "__main__":
    # lm-eval's registry upgrades the start-up hook's placeholder (moorelab.report.lm_eval_plugin.TARGET,
    # "this module:MoorelabLM") to the class, or registers the class when no hook ran. Under
    # `python -m` this file also runs as __main__, whose copy of the class must not claim the name.
    register_model(MODEL_NAME)(MoorelabLM)


def run_lm_eval_cli(args: list[str]) -> None:
    """Register the adapter, then run lm-eval's own command line on ``args`` (adding
    ``--model moorelab`` and ``--include_path <cache>/tasks`` when absent)."""
    from moorelab.measure.tasks import task_dir

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = list(args)
    if args and args[0] in ("ls", "validate"):
        sub, args = [args[0]], args[1:]
    else:
        sub = ["run"]
    if sub == ["run"] and not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", "moorelab", *args]
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        tasks_root = task_dir("x").parent
        if tasks_root.is_dir():
            args += ["--include_path", str(tasks_root)]
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *sub, *args]
    cli_evaluate()


def main(argv: List[str] | None = None) -> None:
    """``python -m moorelab.report.lm_eval_adapter ARGS``: lm-eval's command line with the adapter registered."""
    run_lm_eval_cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    from moorelab.report.lm_eval_adapter import main as _main  # the importable module: it registers the model

    _main()
