"""Sources: every format read into documents with their source, bad input counted, compressed and fsspec inputs,
per-source filtering and dedup priority, and the weighted mixture the loader realises."""

import bz2
import gzip
import json
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import ConfigError, SourceConfig, parse_config
from tasks.ingest import IngestStage
from tasks.mixture import build_mixture, choose_repeats, plan_epochs
from tasks.sharded import run_unit
from tests.conftest import shared_path
from tests.helpers import prose


def ingest(tmp_path, *sources: SourceConfig, **cfg):
    """Run ingest over these sources; (kept rows, drop rows, unit count)."""
    from tasks.config import IngestConfig

    stage = IngestStage(IngestConfig(**cfg), sources)
    units = stage.plan(stage.sources())
    out = tmp_path / "out"
    results = [run_unit(stage, u, out) for u in units]
    kept = [r for res in results for f in res.files for r in pq.read_table(out / f.name).to_pylist()]
    dropped = [r for res in results if res.drops_file for r in pq.read_table(out / res.drops_file).to_pylist()]
    assert sum(r.docs_in for r in results) == len(kept) + len(dropped)  # every record is a document or a drop
    return kept, dropped, len(units)


def test_text_one_document_per_file_paragraph_or_line(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    texts = [prose(i, 9) for i in range(4)]
    for i, t in enumerate(texts):
        (books / f"b{i}.txt").write_text(t)
    paragraphs = sum(len(t.split("\n\n")) for t in texts)
    lines = sum(len([x for x in t.splitlines() if x.strip()]) for t in texts)
    for split, want in (("file", 4), ("paragraph", paragraphs), ("line", lines)):
        kept, dropped, _ = ingest(tmp_path / split, SourceConfig(name="books", inputs=[str(books / "*.txt")],
                                                                 format="text", text_split=split))
        assert len(kept) == want and not dropped, split
        assert {r["source"] for r in kept} == {"books"} and {r["content_type"] for r in kept} == {"text/plain"}
        assert len({r["doc_id"] for r in kept}) == want
    kept, _, _ = ingest(tmp_path / "whole", SourceConfig(name="books", inputs=[str(books / "b0.txt")], format="text"))
    assert kept[0]["html"] == texts[0] and kept[0]["warc_file"].endswith("b0.txt") and kept[0]["warc_offset"] == 0


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".zst", None)])
def test_compressed_inputs_stream_to_the_same_documents(tmp_path, suffix, opener):
    text = "\n".join(f"line {i}: " + prose(i, 2).replace("\n", " ") for i in range(50)) + "\n"
    plain = tmp_path / "plain.txt"
    plain.write_text(text)
    packed = tmp_path / f"packed.txt{suffix}"
    if opener is None:
        import zstandard

        packed.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    else:
        with opener(packed, "wb") as fh:
            fh.write(text.encode())
    a, _, _ = ingest(tmp_path / "a", SourceConfig(name="t", inputs=[str(plain)], format="text", text_split="line"))
    b, _, _ = ingest(tmp_path / "b", SourceConfig(name="t", inputs=[str(packed)], format="text", text_split="line"))
    assert len(a) == 50 and [r["html"] for r in a] == [r["html"] for r in b]
    assert [r["warc_offset"] for r in a] == [r["warc_offset"] for r in b]  # offsets in the decompressed text


def test_jsonl_fields_metadata_and_every_bad_line_counted(tmp_path):
    good = [{"text": prose(i, 3), "id": f"w{i}", "url": f"https://wiki.example.org/{i}", "title": f"T{i}",
             "lang": "en"} for i in range(5)]
    lines = [b"\xef\xbb\xbf" + json.dumps(good[0]).encode(), b"{not json", b"[1, 2]", json.dumps({"body": "x"}).encode(),
             json.dumps({"text": 42}).encode(), json.dumps({"text": "   "}).encode(),
             b'{"text": "caf\xe9 au lait"}',  # Latin-1, not UTF-8
             json.dumps({"text": "x" * 5000}).encode(),  # over max_payload_bytes
             *(json.dumps(g).encode() for g in good[1:])]
    path = tmp_path / "wiki.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    src = SourceConfig(name="wiki", inputs=[str(path)], format="jsonl", id_field="id", url_field="url",
                       metadata_fields=["title", "lang", "absent"])
    kept, dropped, _ = ingest(tmp_path, src, max_payload_bytes=4096)
    assert [r["record_id"] for r in kept] == [g["id"] for g in good]
    assert kept[0]["url"] == good[0]["url"] and kept[0]["host"] == "wiki.example.org"
    assert json.loads(kept[2]["metadata"]) == {"title": "T2", "lang": "en"}
    assert Counter(r["reason"] for r in dropped) == {
        "bad_json": 1, "not_an_object": 1, "missing_text_field": 1, "text_not_string": 1, "empty_payload": 1,
        "not_utf8": 1, "payload_too_large": 1}
    assert all(r["source"] == "wiki" and r["warc_file"] == str(path) for r in dropped)


def test_an_over_long_line_is_skipped_in_pieces_and_the_next_lines_kept(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as fh:
        fh.write(json.dumps({"text": "before"}).encode() + b"\n")
        fh.write(b'{"text": "' + b"a" * (40 << 20) + b'"}\n')  # 40 MiB in one line, the limit is 1 MiB
        fh.write(json.dumps({"text": "after"}).encode() + b"\n")
    kept, dropped, _ = ingest(tmp_path, SourceConfig(name="j", inputs=[str(path)], format="jsonl"),
                              max_payload_bytes=1 << 20)
    assert [r["html"] for r in kept] == ["before", "after"]
    assert [r["reason"] for r in dropped] == ["payload_too_large"] and dropped[0]["bytes"] > 40 << 20


def test_parquet_row_groups_are_units_and_bad_files_are_counted(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    table = pa.table({"content": [prose(i, 2) for i in range(100)], "doc": [f"d{i}" for i in range(100)]})
    pq.write_table(table, d / "a.parquet", row_group_size=10)
    pq.write_table(pa.table({"other": ["x"] * 3}), d / "b.parquet")
    (d / "c.parquet").write_bytes(b"PAR1 this is not parquet")
    src = SourceConfig(name="p", inputs=["file://" + str(d / "*.parquet")], format="parquet", text_field="content",
                       id_field="doc")
    kept, dropped, units = ingest(tmp_path, src, shard_max_docs=25)
    assert units == 5 + 1 + 1  # a.parquet: 10 row groups of 10 rows in runs of <= 25 rows; b; c
    assert [r["record_id"] for r in kept] == [f"d{i}" for i in range(100)]
    assert [r["warc_offset"] for r in kept] == list(range(100))  # the row number in the file
    assert Counter(r["reason"] for r in dropped) == {"missing_text_field": 3, "read_error": 1}


def test_fsspec_memory_urls_and_the_html_format(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/notes.txt", ("\n\n".join(prose(i, 9) for i in range(3))).encode())
    fs.pipe("/pages/page-without-suffix", b"<html><body><article><p>" + prose(9).encode() + b"</p></article></html>")
    kept, _, _ = ingest(tmp_path / "m", SourceConfig(name="notes", inputs=["memory://corpus/*.txt"], format="text",
                                                     text_split="paragraph"))
    assert len(kept) == 9 and kept[0]["warc_file"] == "memory:///corpus/notes.txt"
    kept, _, _ = ingest(tmp_path / "h", SourceConfig(name="pages", inputs=["memory://pages/*"], format="html"))
    assert len(kept) == 1 and kept[0]["content_type"] == "text/html" and kept[0]["source"] == "pages"


def test_real_books_and_wikitext_when_the_shared_corpora_are_here(tmp_path):
    books = shared_path("corpora", "english", "gutenberg", "train")
    wiki = shared_path("corpora", "english", "wikitext2", "valid.txt")
    kept, dropped, _ = ingest(tmp_path / "b", SourceConfig(name="books", inputs=[str(books / "*.txt.gz")],
                                                           format="text"))
    assert len(kept) == len(list(books.glob("*.txt.gz"))) and not dropped
    assert min(len(r["html"]) for r in kept) > 10_000
    kept, _, _ = ingest(tmp_path / "w", SourceConfig(name="wiki", inputs=[str(wiki)], format="text",
                                                     text_split="paragraph"))
    # WikiText's blank lines hold a space: a line of white space ends a paragraph too
    blocks = [b for b in "\n".join(line if line.strip() else "" for line in
                                   wiki.read_text(encoding="utf-8").splitlines()).split("\n\n") if b.strip()]
    assert len(kept) == len(blocks) > 1000


def test_sources_must_be_unique_and_weights_shares(tmp_path):
    base = {"paths": {"work_dir": str(tmp_path)}, "ingest": {"inputs": ["x.warc.gz"]}}
    with pytest.raises(ConfigError, match="unique"):
        parse_config({**base, "sources": [{"name": "web", "inputs": ["a.txt"], "format": "text"}]})
    with pytest.raises(ConfigError, match="add up to 1.2"):
        parse_config({**base, "sources": [{"name": "a", "inputs": ["a"], "weight": 0.6},
                                          {"name": "b", "inputs": ["b"], "weight": 0.6}]})
    with pytest.raises(ConfigError, match="weight or epochs"):
        parse_config({**base, "sources": [{"name": "a", "inputs": ["a"], "weight": 0.5, "epochs": 2}]})
    cfg = parse_config({**base, "sources": [{"name": "books", "inputs": ["b/*.txt"], "format": "text"}]},
                       base=tmp_path)
    books = cfg.all_sources()[-1]
    assert books.inputs == [str(tmp_path / "b/*.txt")]
    assert books.skips("language") and books.skips("quality") and not books.skips("dedup")
    assert books.dedup_priority == 1 and cfg.all_sources()[0].dedup_priority == 0


# -- the mixture -------------------------------------------------------------------------------------------------


def synthetic_shards(seed=0, shards=6):
    """Training shards of three sources of very different sizes and document lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(shards):
        names = rng.choice(["web", "books", "wiki"], size=400, p=[0.8, 0.05, 0.15]).tolist()
        scale = {"web": 300, "books": 6000, "wiki": 800}
        lengths = np.array([max(2, int(rng.exponential(scale[n]))) for n in names])
        out.append((f"part-{s:05d}-train.arrow", [f"{s}-{i}" for i in range(400)], names, lengths))
    return out


def test_weights_are_realised_within_one_percent():
    shards = synthetic_shards()
    for weights in ({"web": 0.5, "books": 0.3, "wiki": 0.2}, {"web": 0.2, "books": 0.7, "wiki": 0.1}):
        repeats, mixes = build_mixture(shards, weights, {}, seed=3)
        for m in mixes:
            assert abs(m.share - weights[m.name]) < 0.01, (m.name, m.share)
    # a source with epochs keeps them; the weighted one takes its share of the rest
    repeats, mixes = build_mixture(shards, {"books": 0.4}, {"wiki": 3}, seed=3)
    got = {m.name: m for m in mixes}
    assert abs(got["books"].share - 0.4) < 0.01 and got["wiki"].epochs == 3 and got["web"].epochs == 1
    wiki = [(r, n) for (name, _, srcs, _), r in zip(shards, (repeats[s[0]] for s in shards))
            for r, n in zip(r, srcs) if n == "wiki"]
    assert {r for r, _ in wiki} == {3}


def test_down_sampling_keeps_a_fixed_subset_and_up_sampling_repeats_all():
    lengths = np.full(1000, 10)
    ids = [f"d{i}" for i in range(1000)]
    half = choose_repeats(lengths, ids, 0.5, seed=1)
    assert set(half.tolist()) == {0, 1} and half.sum() == 500
    assert (choose_repeats(lengths, ids, 0.5, seed=1) == half).all()
    more = choose_repeats(lengths, ids, 2.25, seed=1)
    assert set(more.tolist()) == {2, 3} and more.sum() == 2250
    assert plan_epochs({"a": 100, "b": 300}, {"a": 0.5}, {}) == {"b": 1.0, "a": 3.0}


def write_mixed_token_dataset(out: Path, weights):
    """A real token dataset (tasks.token_shards) of three sources with the mixture's repeats."""
    from tasks.mixture import build_mixture, write_mixture
    from tasks.token_shards import write_token_manifest, write_token_shard
    from tasks.shards import ShardFile

    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text("{}")
    files, shards = [], []
    rng = np.random.default_rng(5)
    for s in range(3):
        for split in ("train", "val"):
            n = 60 if split == "train" else 6
            names = rng.choice(["web", "books", "wiki"], size=n, p=[0.6, 0.2, 0.2]).tolist()
            ids = [rng.integers(1, 50, size=int(rng.integers(5, 120))).tolist() for _ in range(n)]
            doc_ids = [f"{split}{s}-{i}" for i in range(n)]
            name = f"part-{s:05d}-{split}.arrow"
            _, sha = write_token_shard(out / name, doc_ids, [len(x) for x in ids], ids, separator=0, vocab_size=64,
                                       sources=names)
            files.append(ShardFile(name, n, (out / name).stat().st_size, sha))
            if split == "train":
                shards.append((name, doc_ids, names, np.array([len(x) + 1 for x in ids])))
    repeats, mixes = build_mixture(shards, weights, {}, seed=0)
    write_mixture(out, repeats)
    write_token_manifest(out, files, tokenizer=out / "tokenizer.json", vocab_size=64, separator_id=0,
                         encoder="tokenizers", tokenizer_sha256="x")
    return mixes


def test_the_weighted_loader_realises_the_shares_resumes_exactly_and_is_world_size_invariant(tmp_path):
    from model.data import TrainLoader, TokenSplit

    weights = {"web": 0.3, "books": 0.5, "wiki": 0.2}
    write_mixed_token_dataset(tmp_path / "ds", weights)
    split = TokenSplit(tmp_path / "ds", "train")
    source_of = {}
    for i, name in enumerate(split.names):
        from tasks.token_shards import read_token_shard
        _, _, table = read_token_shard(split.dir / name)
        source_of.update({(i, d): s for d, s in enumerate(table["source"].to_pylist())})
    # one pass of the loader uses each document its repeat count: the shares hold for what training sees
    loader = TrainLoader(tmp_path / "ds", batch_size=1, seq_len=16, seed=2, buffer_docs=4)
    per_pass = sum(int((r * np.diff(split.shard(i)[1])).sum()) for i, r in enumerate(split.repeats))
    used = Counter()
    while loader.epoch == 0:  # documents the packer took in one pass (cropping is counted apart, tokens_cropped)
        for ref, _ in loader._plan_row():
            used[source_of[ref]] += loader._length(ref)
    total = sum(used.values())
    assert abs(total - per_pass) < 4 * 130  # the pass, but for the few documents in the buffer at its end
    for name, w in weights.items():
        assert abs(used[name] / total - w) < 0.03, (name, used[name] / total)

    def batches(loader, n):
        return [torch_cat(next(loader)) for _ in range(n)]

    a = TrainLoader(tmp_path / "ds", batch_size=2, seq_len=16, seed=2, buffer_docs=4)
    first = batches(a, 5)
    state = a.state_dict()
    rest = batches(a, 5)
    b = TrainLoader(tmp_path / "ds", batch_size=2, seq_len=16, seed=2, buffer_docs=4)
    b.load_state_dict(state)
    assert all((x == y).all() for x, y in zip(rest, batches(b, 5)))
    ranks = [TrainLoader(tmp_path / "ds", batch_size=1, seq_len=16, seed=2, buffer_docs=4, rank=r, world_size=2)
             for r in range(2)]
    for whole in first:
        rows = [torch_cat(next(r)) for r in ranks]
        assert (rows[0][0] == whole[0]).all() and (rows[1][0] == whole[1]).all()


def torch_cat(pair):
    import torch

    return torch.cat([pair[0], pair[1][:, -1:]], dim=1)


def test_validation_reports_each_source_and_their_sum_is_the_whole(tmp_path):
    import torch

    from model.data import ValLoader
    from model.gpt import GPT, GPTConfig
    from model.train import Dist, validate

    write_mixed_token_dataset(tmp_path / "ds", {"web": 0.3, "books": 0.5, "wiki": 0.2})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, depth=1, d_model=32, seq_len=16))
    d = Dist(rank=0, local_rank=0, world=1, device=torch.device("cpu"))
    tbytes = torch.ones(64, dtype=torch.int64)
    tbytes[0] = 0
    val = validate(model, tmp_path / "ds", batch_size=4, seq_len=16, d=d, tbytes=tbytes, separator=0,
                   autocast=torch.autocast("cpu", enabled=False))
    names = ValLoader(tmp_path / "ds", batch_size=4, seq_len=16).sources
    assert sorted(names) == ["books", "web", "wiki"]
    for name in names:
        assert f"val_bpb/{name}" in val and 0 < val[f"val_bpb/{name}"] < 20
    assert min(val[f"val_bpb/{n}"] for n in names) <= val["val_bpb"] <= max(val[f"val_bpb/{n}"] for n in names)


def test_parquet_rows_are_checked_column_wise_like_jsonl_lines(tmp_path):
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"content": [None, "  \n", "x" * 5000, "kept text", "more text"],
                             "doc": [1, 2, 3, 4, 5],
                             "link": [None, None, None, "https://Example.org/a", "not a url"],
                             "title": ["a", "b", "c", "T", None]}), path)
    pq.write_table(pa.table({"content": [1, 2]}), tmp_path / "numbers.parquet")
    src = SourceConfig(name="p", inputs=[str(tmp_path / "*.parquet")], format="parquet", text_field="content",
                       id_field="doc", url_field="link", metadata_fields=["title"])
    kept, dropped, _ = ingest(tmp_path / "out", src, max_payload_bytes=4096)
    assert [r["html"] for r in kept] == ["kept text", "more text"]
    assert [r["record_id"] for r in kept] == ["4", "5"] and [r["warc_offset"] for r in kept] == [3, 4]
    assert kept[0]["host"] == "example.org" and json.loads(kept[0]["metadata"]) == {"title": "T"}
    assert kept[1]["metadata"] is None and kept[0]["doc_id"] != kept[1]["doc_id"]
    assert Counter(r["reason"] for r in dropped) == {"missing_text_field": 1, "empty_payload": 1,
                                                     "payload_too_large": 1, "text_not_string": 2}


@pytest.mark.slow
def test_a_2_gib_line_in_a_compressed_file_costs_a_counted_skip_not_the_memory(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bomb.jsonl.gz"
    piece = b"a" * (1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(json.dumps({"text": "before"}).encode() + b"\n" + b'{"text": "')
        for _ in range(2048):  # 2 GiB of one line, ~2 MB on disk
            fh.write(piece)
        fh.write(b'"}\n' + json.dumps({"text": "after"}).encode() + b"\n")
    assert path.stat().st_size < 20 << 20  # the file is small; the line is not
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.tasks.test_sources import ingest
from tasks.config import SourceConfig
from pathlib import Path
kept, dropped, _ = ingest(Path({str(tmp_path / "out")!r}), SourceConfig(name="j", inputs=[{str(path)!r}],
                          format="jsonl"))
# VmHWM is this program's peak: ru_maxrss would also count the parent's pages the fork copied before exec
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"kept": [r["html"] for r in kept], "drops": [(r["reason"], r["bytes"]) for r in dropped],
                   "rss": peak}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["kept"] == ["before", "after"]
    [(reason, size)] = out["drops"]
    assert reason == "payload_too_large" and size > 2 << 30
    assert out["rss"] < 600 << 20  # the default 10 MiB cap, read past in 1 MiB pieces


def test_a_truncated_file_keeps_what_came_before_and_a_lost_connection_is_raised(tmp_path):
    from tasks.readers import _guarded
    from tasks.shards import DropLog

    path = tmp_path / "cut.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"".join(json.dumps({"text": prose(i, 6)}).encode() + b"\n" for i in range(400)))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # cut in the middle, as a killed download leaves it
    kept, dropped, _ = ingest(tmp_path / "out", SourceConfig(name="j", inputs=[str(path)], format="jsonl"))
    assert 50 < len(kept) < 400 and [r["reason"] for r in dropped] == ["read_error"]
    assert "EOFError" in dropped[0]["detail"]

    def reader():
        yield "first"
        raise ConnectionResetError("Connection reset by peer")

    drops = DropLog()
    with pytest.raises(ConnectionResetError):
        list(_guarded(reader(), drops, "s3://bucket/x.jsonl"))
    assert not drops.rows  # not counted as a damaged file: the unit fails and is retried
    missing = ingest(tmp_path / "gone", SourceConfig(name="j", inputs=[str(path)], format="jsonl"))
    assert missing[0]  # the same file, still readable up to the cut


def test_line_endings_and_encodings_real_files_come_in(tmp_path):
    """WikiText as Windows writes it (CRLF) gives the same paragraphs; as UTF-16 or Latin-1 it is counted, not
    guessed at."""
    wiki = shared_path("corpora", "english", "wikitext2", "valid.txt").read_text(encoding="utf-8")
    (tmp_path / "unix.txt").write_text(wiki, encoding="utf-8", newline="\n")
    (tmp_path / "dos.txt").write_text(wiki, encoding="utf-8", newline="\r\n")
    (tmp_path / "wide.txt").write_text(wiki[:20_000], encoding="utf-16")
    (tmp_path / "latin.txt").write_bytes("Café au lait, señor; naïve façade.\n\nÀ bientôt.".encode("latin-1"))

    def paragraphs(name):
        return ingest(tmp_path / f"out-{name}", SourceConfig(name="w", inputs=[str(tmp_path / name)], format="text",
                                                             text_split="paragraph"))

    unix, _, _ = paragraphs("unix.txt")
    dos, _, _ = paragraphs("dos.txt")
    assert len(unix) == len(dos) > 1000
    assert [r["html"] for r in dos] == [r["html"] for r in unix]  # line endings made \n, as text mode does
    for name in ("wide.txt", "latin.txt"):
        kept, dropped, _ = paragraphs(name)
        assert not kept and dropped and {r["reason"] for r in dropped} == {"not_utf8"}, name
