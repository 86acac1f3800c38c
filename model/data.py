"""Training and validation batches from a tokenize dataset: memory-mapped, rank-disjoint, resumable.

The shards (``tasks.token_shards``) are memory-mapped once; a batch copies only the tokens it holds.

Training rows (``TrainLoader``) are ``seq_len + 1`` tokens long (inputs and targets shifted by one) and every row
starts at a document start, packed as nanochat's BOS-aligned best fit does: from a buffer of documents, take the
longest one that fits the rest of the row, again and again; when none fits, crop the shortest to fill the row
exactly. There is no padding; the cropped tail of a document is not used (``tokens_cropped`` counts it).

Order: epoch ``e`` visits the shards in a permutation seeded by (seed, e), and each shard's documents in a
permutation seeded by (seed, e, shard). With a mixture (``tasks.mixture``: the sources' weights) a document is in
that permutation as many times as its repeat count (0: a down-sampled document is not used), so one epoch is one
pass over the mixture and every source gets its share throughout, not in blocks. Every rank packs that one global
sequence of rows (packing needs only the
documents' lengths, read from the index) and keeps rows ``r, r + world_size, ...``, copying only their tokens; so
ranks never share a row or a document, and the rows of a global batch are the same whatever the world size: one
process with gradient accumulation sees exactly what N ranks see together. The tokenize stage spreads every source
over every shard, so no rank reads one source's contiguous slice. ``state_dict()`` holds the cursor and the
documents in the packing buffer (identical on every rank), so ``load_state_dict`` resumes on exactly the next
batch, with the same or another world size.

Validation (``ValLoader``) reads the val split's tokens once, in shard order, as one stream cut into rows that
overlap by one token, so every token but the first is a target exactly once; rank ``r`` takes rows
``r, r + world_size, ...``; the last row is padded with target ``IGNORE`` (-1).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from tasks.mixture import read_mixture
from tasks.token_shards import read_token_manifest, read_token_shard

IGNORE = -1
STATE_VERSION = 1


def _rng(*parts: Any) -> np.random.Generator:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


class TokenSplit:
    """One split of a token dataset: its shards memory-mapped, read as numpy views."""

    def __init__(self, dataset_dir: str | Path, split: str) -> None:
        self.dir = Path(dataset_dir)
        self.manifest = read_token_manifest(self.dir)
        info = self.manifest["splits"].get(split)
        if not info or not info["docs"]:
            raise ValueError(f"{self.dir}: the {split} split is empty (raise tokenize.val_fraction or add data)"
                             if split == "val" else f"{self.dir}: the {split} split is empty")
        self.split = split
        self.names = [s["name"] for s in info["shards"]]
        self.docs = np.array([s["docs"] for s in info["shards"]], dtype=np.int64)
        self.tokens = int(info["tokens"])
        self.bytes = int(info["bytes"])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.separator_id = int(self.manifest["separator_id"])
        mixture = read_mixture(self.dir) if split == "train" else None
        # uses per pass of each shard's documents, or None: each once
        self.repeats = [mixture[n] for n in self.names] if mixture is not None else None
        if self.repeats is not None and not any(r.any() for r in self.repeats):
            raise ValueError(f"{self.dir}: the mixture uses none of the {split} split's documents")
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat tokens, document offsets) of shard ``i``, views into its memory map."""
        if i not in self._open:
            tokens, offsets, _ = read_token_shard(self.dir / self.names[i])
            self._open[i] = (tokens, offsets)
        return self._open[i]

    def document(self, i: int, d: int) -> np.ndarray:
        tokens, offsets = self.shard(i)
        return tokens[offsets[d]:offsets[d + 1]]


class TrainLoader:
    """Endless (inputs, targets) batches of shape (batch_size, seq_len) for one DDP rank; see the module doc."""

    def __init__(self, dataset_dir: str | Path, *, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, buffer_docs: int = 256, split: str = "train",
                 device: str | torch.device = "cpu") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        if batch_size < 1 or seq_len < 1 or buffer_docs < 1:
            raise ValueError("batch_size, seq_len and buffer_docs must be positive")
        self.data = TokenSplit(dataset_dir, split)
        self.batch_size, self.seq_len, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.seed, self.buffer_docs = seed, buffer_docs
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        self._rows = torch.empty((batch_size, seq_len + 1), dtype=torch.int64, pin_memory=pin)
        self._rows_np = self._rows.numpy()
        # cursor: epoch, position in the epoch's shard order, this rank's next document index in that shard
        self.epoch, self.shard_pos, self.doc_pos = 0, 0, 0
        self.buffer: list[tuple[int, int]] = []
        self._lengths: list[int] = []  # token counts of the buffered documents
        self.batches = 0
        self.tokens_cropped = 0
        self._plan_epoch()

    # -- the document stream -----------------------------------------------------------------------------------

    def _plan_epoch(self) -> None:
        self._shard_order = _rng("shards", self.seed, self.epoch).permutation(len(self.data.names))
        self._doc_order = None

    def _next_doc(self) -> tuple[int, int]:
        while True:
            if self.shard_pos == len(self._shard_order):
                self.epoch, self.shard_pos, self.doc_pos = self.epoch + 1, 0, 0
                self._plan_epoch()
            shard = int(self._shard_order[self.shard_pos])
            if self._doc_order is None:
                rng = _rng("docs", self.seed, self.epoch, shard)
                if self.data.repeats is None:
                    self._doc_order = rng.permutation(int(self.data.docs[shard]))
                else:  # each document as many times as the mixture uses it
                    self._doc_order = rng.permutation(np.repeat(np.arange(int(self.data.docs[shard])),
                                                                self.data.repeats[shard]))
            if self.doc_pos < len(self._doc_order):
                doc = int(self._doc_order[self.doc_pos])
                self.doc_pos += 1
                return shard, doc
            self.shard_pos, self.doc_pos, self._doc_order = self.shard_pos + 1, 0, None

    def _length(self, ref: tuple[int, int]) -> int:
        offsets = self.data.shard(ref[0])[1]
        return int(offsets[ref[1] + 1] - offsets[ref[1]])

    def _fill_buffer(self) -> None:
        while len(self.buffer) < self.buffer_docs:
            ref = self._next_doc()
            self.buffer.append(ref)
            self._lengths.append(self._length(ref))

    # -- packing -----------------------------------------------------------------------------------------------

    def _plan_row(self) -> list[tuple[tuple[int, int], int]]:
        """The next global row: [(document, tokens taken from its start)], best fit, the last one maybe cropped."""
        plan, filled, width = [], 0, self.seq_len + 1
        while filled < width:
            self._fill_buffer()
            lengths = np.array(self._lengths)
            space = width - filled
            fits = np.where(lengths <= space, lengths, -1)
            pick = int(np.argmax(fits)) if fits.max() > 0 else int(np.argmin(lengths))
            length = self._lengths.pop(pick)
            take = min(length, space)
            plan.append((self.buffer.pop(pick), take))
            self.tokens_cropped += length - take
            filled += take
        return plan

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        for i in range(self.batch_size * self.world_size):
            plan = self._plan_row()
            if i % self.world_size == self.rank:  # this rank's row: copy its tokens out of the memory maps
                row, filled = self._rows_np[i // self.world_size], 0
                for ref, take in plan:
                    row[filled:filled + take] = self.data.document(*ref)[:take]
                    filled += take
        self.batches += 1
        rows = self._rows.to(self.device, non_blocking=True) if self.device.type != "cpu" else self._rows.clone()
        return rows[:, :-1], rows[:, 1:]

    # -- resume ------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The packer's position, the same on every rank: save rank 0's."""
        return {"version": STATE_VERSION, "seed": self.seed, "seq_len": self.seq_len, "shards": list(self.data.names),
                "epoch": self.epoch, "shard_pos": self.shard_pos, "doc_pos": self.doc_pos,
                "buffer": [list(r) for r in self.buffer], "batches": self.batches,
                "tokens_cropped": self.tokens_cropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("version", "seed", "seq_len", "shards"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume: the saved loader has {key}={state.get(key)!r}, this one "
                                 f"{mine[key]!r}")
        self.epoch, self.shard_pos, self.doc_pos = state["epoch"], state["shard_pos"], state["doc_pos"]
        self._plan_epoch()
        self.buffer = [(int(s), int(d)) for s, d in state["buffer"]]
        self._lengths = [self._length(ref) for ref in self.buffer]
        self.batches, self.tokens_cropped = state["batches"], state["tokens_cropped"]


def replay_training(dataset_dir: str | Path, *, seq_len: int, seed: int, buffer_docs: int,
                    checkpoints: list[tuple[int, dict[str, Any]]]) -> list[dict[tuple[int, int], tuple[int, int]]]:
    """Which training documents fed each checkpoint, replayed exactly: for each (tokens trained, saved loader
    state), {(shard, document): (rows it was packed into, tokens of it used)} over the first ``tokens // seq_len``
    global rows. Packing needs only the documents' lengths, so no token is read. The replay must arrive where the
    saved loader stood (cursor and buffer); otherwise it raises, because the count would not be exact."""
    loader = TrainLoader(dataset_dir, batch_size=1, seq_len=seq_len, seed=seed, buffer_docs=buffer_docs)
    uses: dict[tuple[int, int], list[int]] = {}
    out: list[dict[tuple[int, int], tuple[int, int]]] = []
    done = 0
    for tokens, state in sorted(checkpoints, key=lambda c: c[0]):
        rows = tokens // seq_len
        for _ in range(rows - done):
            for ref, take in loader._plan_row():
                used = uses.setdefault(ref, [0, 0])
                used[0] += 1
                used[1] += take
        done = rows
        here = {"epoch": loader.epoch, "shard_pos": loader.shard_pos, "doc_pos": loader.doc_pos,
                "buffer": [list(r) for r in loader.buffer]}
        saved = {k: state.get(k) for k in here}
        if saved != here:
            raise ValueError(f"replaying {rows} rows of {dataset_dir} does not reach the saved loader position "
                             f"(epoch {saved['epoch']}, shard {saved['shard_pos']}, document {saved['doc_pos']}); "
                             "was the token dataset changed?")
        out.append({ref: (n, t) for ref, (n, t) in uses.items()})
    return out


def unigram_bpb(dataset_dir: str | Path, source: str | None = None, smoothing: float = 0.5) -> float | None:
    """Bits per byte, on the val split's documents of ``source`` (all of them: None), of a unigram model of the
    train split as the mixture uses it (each document counted as often as it repeats; add-``smoothing`` counts):
    what a model scores that learned the training data's token frequencies and nothing else. A trained model that
    scores about this has learned nothing else yet, so no change to its data can show beyond those frequencies
    (``crucible ablate`` prints both). Each document's tokens include the separator before it. None: no such
    documents, or a split without any."""
    splits = read_token_manifest(Path(dataset_dir))["splits"]
    if not all((splits.get(split) or {}).get("docs") for split in ("train", "val")):
        return None
    train, val = TokenSplit(dataset_dir, "train"), TokenSplit(dataset_dir, "val")
    counts = np.zeros(train.vocab_size, np.float64)
    for i in range(len(train.names)):
        tokens, offsets = train.shard(i)
        weights = None if train.repeats is None else np.repeat(train.repeats[i], np.diff(offsets))
        counts += np.bincount(tokens, weights=weights, minlength=train.vocab_size)[:train.vocab_size]
    log_p = np.log((counts + smoothing) / (counts.sum() + smoothing * train.vocab_size))
    nll, nbytes = 0.0, 0
    for name in val.names:
        tokens, offsets, table = read_token_shard(val.dir / name)
        mine = np.ones(table.num_rows, bool) if source is None or "source" not in table.column_names else \
            np.array([s == source for s in table.column("source").to_pylist()], bool)
        nll -= float(log_p[tokens[np.repeat(mine, np.diff(offsets))]].sum())
        nbytes += int(table.column("bytes").to_numpy()[mine].sum())
    return nll / (np.log(2) * nbytes) if nbytes else None


class ValLoader:
    """The val split once, in order, as (inputs, targets) batches; padding targets are ``IGNORE``."""

    def __init__(self, dataset_dir: str | Path, *, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, split: str = "val") -> None:
        self.data = TokenSplit(dataset_dir, split)
        self.batch_size, self.seq_len, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.rows = max(1, -(-(self.data.tokens - 1) // seq_len))  # rows of seq_len targets covering the stream
        self._starts = np.concatenate([[0], np.cumsum([self.data.shard(i)[0].size
                                                       for i in range(len(self.data.names))])])
        # every document's first token in the stream, and its source's index in ``sources``
        starts, codes, names = [], [], {}
        for i, name in enumerate(self.data.names):
            _, offsets, table = read_token_shard(self.data.dir / name)
            starts.append(offsets[:-1].astype(np.int64) + int(self._starts[i]))
            found = table.column("source").to_pylist() if "source" in table.column_names else [None] * table.num_rows
            codes.append(np.array([names.setdefault(s or "", len(names)) for s in found], dtype=np.int64))
        self.sources = list(names)
        self._doc_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._doc_source = np.concatenate(codes) if codes else np.zeros(0, np.int64)

    def _read(self, start: int, stop: int, out: np.ndarray) -> int:
        """Copy stream tokens [start, stop) into ``out``; returns how many there were."""
        stop = min(stop, int(self._starts[-1]))
        n = 0
        i = int(np.searchsorted(self._starts, start, side="right") - 1)
        while start + n < stop:
            tokens = self.data.shard(i)[0]
            lo = start + n - int(self._starts[i])
            take = min(len(tokens) - lo, stop - start - n)
            out[n:n + take] = tokens[lo:lo + take]
            n += take
            i += 1
        return n

    def __len__(self) -> int:
        mine = len(range(self.rank, self.rows, self.world_size))
        return -(-mine // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, targets, _ in self.with_sources():
            yield inputs, targets

    def with_sources(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(inputs, targets, source): ``source[i, j]`` is the index in ``self.sources`` of the document target
        ``[i, j]`` belongs to (-1 for padding), for validation per source."""
        mine = list(range(self.rank, self.rows, self.world_size))
        for b in range(0, len(mine), self.batch_size):
            rows = np.full((len(mine[b:b + self.batch_size]), self.seq_len + 1), IGNORE, dtype=np.int64)
            where = np.full((len(rows), self.seq_len), -1, dtype=np.int64)
            for row, src, r in zip(rows, where, mine[b:b + self.batch_size]):
                got = self._read(r * self.seq_len, r * self.seq_len + self.seq_len + 1, row)
                row[got:] = IGNORE
                positions = r * self.seq_len + 1 + np.arange(max(got - 1, 0))
                src[:len(positions)] = self._doc_source[np.searchsorted(self._doc_starts, positions, "right") - 1]
            batch = torch.from_numpy(rows)
            inputs = batch[:, :-1].clamp(min=0)  # a padded input position only predicts an ignored target
            yield inputs, batch[:, 1:], torch.from_numpy(where)
