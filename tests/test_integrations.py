"""Experiment trackers and training frameworks: TensorBoard, W&B (offline), HF Trainer, Lightning.

Every check reads what the tracker itself wrote (TensorBoard event files through tensorboard's
EventAccumulator, W&B's offline ``.wandb`` transaction log) and compares the values with the
records in ``spectra.jsonl`` or with a dense float64 SVD of the weights. W&B never touches the
network here (WANDB_MODE=offline, WANDB_DIR in a temporary folder).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_cli_run import TINY_RECALL as CLI_TINY_RECALL
from tracker_files import (  # noqa: F401 - offline_trackers is a fixture
    offline_trackers,
    read_tensorboard,
    read_wandb_history,
)

import rankdecay as rd
from rankdecay.cli import main
from rankdecay.integrations.loggers import (
    MissingExtraError,
    UnknownLoggerError,
    metric_scalars,
    parse_loggers,
    spectral_scalars,
)
from rankdecay.models import ModelConfig, TinyTransformer
from rankdecay.runio import read_jsonl

TINY_RECALL = [*CLI_TINY_RECALL, "train.steps=20"]


pytestmark = pytest.mark.usefixtures("offline_trackers")


def _layer_means(records: list[dict[str, Any]], step: int, circuit: str, metric: str) -> dict:
    by_layer: dict[int, list[float]] = {}
    for r in records:
        if r["step"] == step and r.get("circuit") == circuit:
            by_layer.setdefault(r["layer"], []).append(r[metric])
    return {layer: float(np.mean(v)) for layer, v in by_layer.items()}


def _tiny_model(seed: int = 0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(ModelConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2, n_out=11))


# ----------------------------------------------------------------------------- tags


def test_spectral_scalars_against_dense_svd() -> None:
    """Per-head tags equal the effective rank of a dense float64 SVD of W_Q^h W_K^hᵀ; layer tags
    are their means over heads; the ``mean`` tag is the mean over every head."""
    model = _tiny_model()
    records = rd.SpectralMonitor(model, every=1).force_step(0)
    tags = spectral_scalars(records, per_head=True, metrics=None)
    dense: dict[tuple[int, int], float] = {}
    for lh in rd.attention_heads(model):
        for h in range(lh.W_Q.shape[0]):
            A = lh.W_Q[h].detach().double().numpy()
            B = lh.W_K[h].detach().double().numpy()
            s = np.linalg.svd(A @ B.T, compute_uv=False)[: A.shape[1]]
            p = s / s.sum()
            dense[(lh.layer, h)] = float(np.exp(-(p * np.log(p)).sum()))
            tag = f"rankdecay/qk/effective_rank/layer{lh.layer}/head{h}"
            assert tags[tag] == pytest.approx(dense[(lh.layer, h)], rel=1e-9)
    for layer in {k[0] for k in dense}:
        want = np.mean([v for (lay, _), v in dense.items() if lay == layer])
        assert tags[f"rankdecay/qk/effective_rank/layer{layer}"] == pytest.approx(want, rel=1e-9)
    assert tags["rankdecay/qk/effective_rank/mean"] == pytest.approx(np.mean(list(dense.values())))
    # whole-layer matrices: W_Q of layer 0 is [W_Q^1 … W_Q^H], stable rank Σσ²/σ₁²
    WQ = torch.cat(list(rd.attention_heads(model)[0].W_Q.detach().double()), dim=1).numpy()
    s = np.linalg.svd(WQ, compute_uv=False)
    assert tags["rankdecay/w_q/stable_rank/layer0"] == pytest.approx((s**2).sum() / s[0] ** 2)
    assert "rankdecay/wqk/stable_rank/mean" in tags
    # default: no per-head tags, only the default metrics
    default = spectral_scalars(records)
    assert not any("/head" in t for t in default)
    assert "rankdecay/qk/nuclear_norm/mean" not in default
    assert "rankdecay/qk/norm_gap/layer1" in default


def test_metric_scalars_names() -> None:
    row = {"step": 5, "loss": 1.5, "acc": 0.25, "lr": 1e-3, "val_loss": 2.0, "val_acc": 0.5}
    row |= {"qk_rank": 3.0, "grad_norm": 0.1}
    tags = metric_scalars(row, skip={"qk_rank"})
    assert tags == {
        "train/loss": 1.5,
        "train/accuracy": 0.25,
        "train/lr": 1e-3,
        "val/loss": 2.0,
        "val/accuracy": 0.5,
        "train/grad_norm": 0.1,
    }


def test_bad_logger_names_and_missing_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_loggers(" TensorBoard, wandb,tensorboard ") == ("tensorboard", "wandb")
    with pytest.raises(ValueError, match="unknown logger 'tensorbord'; choose from tensorboard"):
        parse_loggers("tensorbord")
    with pytest.raises(TypeError, match="cannot log to a int"):
        rd.SpectralMonitor(_tiny_model(), loggers=[3])
    with pytest.raises(UnknownLoggerError, match="needs a directory"):
        rd.SpectralMonitor(_tiny_model(), loggers=["tensorboard"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import → ImportError
    monkeypatch.setitem(sys.modules, "wandb", None)
    for name, extra in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        with pytest.raises(ImportError) as exc:
            rd.SpectralMonitor(_tiny_model(), loggers=[name], log_dir="unused")
        assert isinstance(exc.value, MissingExtraError)
        assert f"pip install 'rankdecay[{extra}]'" in str(exc.value)


def test_cli_log_to_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """Bad --log-to: one sentence, exit 2, nothing written."""
    out = tmp_path / "r"
    assert main(["run", "recall", "--out", str(out), "--log-to", "tensorbord"]) == 2
    err = capsys.readouterr().err
    assert "unknown logger 'tensorbord'" in err and err.rstrip().endswith("[--log-to]"), err
    assert main(["run", "attention-svm", "--out", str(out), "--log-to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "cannot log to TensorBoard/W&B" in err and err.rstrip().endswith("[--log-to]"), err
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["run", "recall", "--out", str(out), "--log-to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'rankdecay[tensorboard]'" in err and "Traceback" not in err
    assert main(["sweep", "recall", "--out", str(tmp_path / "s"), "--log-to", "tensorboard"]) == 2
    assert "pip install 'rankdecay[tensorboard]'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- SpectralMonitor


def test_monitor_logs_to_summary_writer_and_custom_sink(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    class ListSink:
        def __init__(self) -> None:
            self.calls: list[tuple[int, dict[str, float]]] = []
            self.closed = False

        def log(self, step: int, scalars: dict[str, float]) -> None:
            self.calls.append((step, dict(scalars)))

        def close(self) -> None:
            self.closed = True

    model = _tiny_model()
    writer = SummaryWriter(str(tmp_path / "tb"))
    sink = ListSink()
    monitor = rd.SpectralMonitor(model, every=2, loggers=[writer, sink], log_per_head=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randint(11, (8, 5))
    for step in range(5):
        monitor.step(step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), x[:, 0]).backward()
        opt.step()
    monitor.close()
    assert sink.closed and [s for s, _ in sink.calls] == [0, 2, 4]
    events = read_tensorboard(tmp_path / "tb")  # the user's writer was flushed, still open
    writer.close()
    for step, tags in sink.calls:
        assert tags == spectral_scalars(
            [r for r in monitor.records if r["step"] == step], per_head=True
        )
        for tag in ("rankdecay/qk/rank/layer1/head0", "rankdecay/ov/effective_rank/layer0"):
            assert events[tag][step] == pytest.approx(tags[tag], rel=1e-6)


def test_wandb_mode_offline_without_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rankdecay.integrations.loggers import wandb_mode

    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    with pytest.warns(UserWarning, match="no W&B API key is configured, so W&B logs offline"):
        assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password k" + "0" * 39 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x")
    (tmp_path / ".netrc").unlink()
    assert wandb_mode() == "online"


def test_wandb_sink_keeps_its_run_id(tmp_path: Path) -> None:
    from rankdecay.integrations.loggers import WandbSink

    sink = WandbSink(tmp_path / "run", name="demo", config={"optim.lr": 0.1})
    sink.log(3, {"rankdecay/qk/rank/mean": 2.5})
    sink.close()
    rows = read_wandb_history(tmp_path / "run")
    assert [(r["_step"], r["rankdecay/qk/rank/mean"]) for r in rows] == [(3, 2.5)]
    again = WandbSink(tmp_path / "run", name="demo")  # a resumed run: the same W&B run id
    assert again.run.id == sink.run.id
    again.close()


# ----------------------------------------------------------------------------- rankdecay run / sweep


def test_run_log_to_tensorboard_and_wandb(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["run", "recall", "--out", str(run), "--no-progress", "--log-to", "tensorboard,wandb"]
    for s in TINY_RECALL:
        argv += ["--set", s]
    assert main(argv) == 0
    records = list(read_jsonl(run / "spectra.jsonl"))
    metrics = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl")}
    events = read_tensorboard(run / "tensorboard")
    history = read_wandb_history(run / "wandb")
    wb: dict[int, dict[str, Any]] = {}
    for row in history:
        wb.setdefault(row["_step"], {}).update(row)
    for step in (0, 10, 20):
        for layer, value in _layer_means(records, step, "qk", "effective_rank").items():
            tag = f"rankdecay/qk/effective_rank/layer{layer}"
            assert events[tag][step] == pytest.approx(value, rel=1e-6)
            assert wb[step][tag] == pytest.approx(value, rel=1e-12)
        assert events["val/accuracy"][step] == pytest.approx(metrics[step]["val_acc"], rel=1e-6)
        assert wb[step]["val/loss"] == pytest.approx(metrics[step]["val_loss"])
    for step in (5, 10, 15, 20):
        assert events["train/loss"][step] == pytest.approx(metrics[step]["loss"], rel=1e-6)
        assert wb[step]["train/accuracy"] == pytest.approx(metrics[step]["acc"])
    assert {"rankdecay/wqk/stable_rank/mean", "train/lr"} <= set(events)
    # resuming the finished run with another --log-to is not a config change
    assert main(["run", "--resume", str(run), "--no-progress", "--log-to", "tensorboard"]) == 0


def test_sweep_log_to_reaches_every_run(tmp_path: Path) -> None:
    from rankdecay.sweep import run_sweep

    fixed = [s for s in TINY_RECALL if not s.startswith("train.steps")] + ["train.steps=10"]
    # the ensemble executor trains both runs in this process, as one stacked ensemble
    sweep = {
        "grid": ["weight_decay_attn=0,0.1"],
        "fixed": fixed,
        "seeds": 1,
        "executor": "ensemble",
    }
    result = run_sweep("recall", out=tmp_path / "sweep", loggers="tensorboard", **sweep)
    assert result.counts.get("finished") == 2
    # --log-to is not part of the sweep's identity: the same sweep without it is complete
    again = run_sweep("recall", out=tmp_path / "sweep", **sweep)
    assert again.counts.get("finished") == 2 and again.executed == []
    for row in result.rows:
        events = read_tensorboard(result.out / row["run_dir"] / "tensorboard")
        assert set(events["rankdecay/qk/rank/mean"]) == {0, 10}


# ----------------------------------------------------------------------------- HF Trainer


@pytest.fixture(scope="module")
def hf() -> Any:
    return pytest.importorskip("transformers")


def _bert_trainer(hf: Any, out: Path, report_to: list[str], position: str, **cb: Any) -> Any:
    """A tiny random BERT classifier, 20 steps, with the callback at ``position``."""
    from rankdecay.integrations.transformers import SpectralMonitorCallback

    torch.manual_seed(0)
    cfg = hf.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = hf.BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(50, (40, 8), generator=g)
    data = [{"input_ids": ids[i], "labels": ids[i, 1] % 2} for i in range(len(ids))]
    args = hf.TrainingArguments(
        output_dir=str(out),
        max_steps=20,
        per_device_train_batch_size=8,
        logging_steps=5,
        learning_rate=1e-3,
        report_to=report_to,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    callback = SpectralMonitorCallback(every=10, **cb)
    trainer = hf.Trainer(
        model=model,
        args=args,
        train_dataset=data,
        callbacks=[callback] if position == "end" else None,
    )
    if position == "front":
        trainer.callback_handler.callbacks.insert(0, callback)
    elif position == "added":
        trainer.add_callback(callback)  # after __init__: moved on on_train_begin
    return trainer, callback


@pytest.mark.parametrize("position", ["end", "front", "added"])
def test_hf_trainer_tags_reach_tensorboard(hf: Any, tmp_path: Path, position: str) -> None:
    report_to = ["tensorboard", "wandb"] if position == "end" else ["tensorboard"]
    trainer, callback = _bert_trainer(hf, tmp_path, report_to, position)
    trainer.train()
    wandb_run = None
    if "wandb" in report_to:
        import wandb

        wandb_run = Path(wandb.run.dir).parent  # …/offline-run-<time>-<id>
        wandb.finish()  # the Trainer leaves its W&B run open
    records = list(read_jsonl(tmp_path / "spectra.jsonl"))
    events = read_tensorboard(tmp_path / "runs")
    for step in (10, 20):
        for layer, value in _layer_means(records, step, "ov", "stable_rank").items():
            tag = f"train/rankdecay/ov/stable_rank/layer{layer}"
            assert events[tag][step] == pytest.approx(value, rel=1e-6)
    assert set(events["train/rankdecay/qk/effective_rank/mean"]) == {10, 20}
    logged = [h for h in trainer.state.log_history if "rankdecay/qk/rank/mean" in h]
    assert [h["step"] for h in logged] == [10, 20]
    if wandb_run is not None:
        history = read_wandb_history(wandb_run)
        rows = [r for r in history if "train/rankdecay/qk/rank/mean" in r]
        assert [r["train/global_step"] for r in rows] == [10, 20]
        means = _layer_means(records, 20, "qk", "rank")
        assert rows[-1]["train/rankdecay/qk/rank/layer1"] == pytest.approx(means[1])


def test_hf_trainer_without_reordering_misses_tensorboard(hf: Any, tmp_path: Path) -> None:
    """The control: left behind the integrations, the tags reach log_history but not TensorBoard."""
    trainer, _ = _bert_trainer(hf, tmp_path, ["tensorboard"], "end", move_first=False)
    trainer.train()
    assert any("rankdecay/qk/rank/mean" in h for h in trainer.state.log_history)
    assert not any("rankdecay" in t for t in read_tensorboard(tmp_path / "runs"))


def test_trainer_optimizer_roles_and_low_rank_decay(hf: Any, tmp_path: Path) -> None:
    """Role groups carry their decays and the Trainer's Adam settings; one step with zero
    gradients moves only by LRD: the singular values of W_Q become |σᵢ − lr·strength| exactly."""
    from rankdecay.integrations.transformers import trainer_optimizer

    torch.manual_seed(0)
    cfg = hf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    model = hf.BertForSequenceClassification(cfg)
    args = hf.TrainingArguments(
        output_dir=str(tmp_path), learning_rate=0.01, adam_beta2=0.98, weight_decay=0.1
    )
    opt = trainer_optimizer(model, args, low_rank_decay=0.5)
    decay = {g["role"]: g["weight_decay"] for g in opt.param_groups}
    assert decay["attn_qk"] == decay["mlp"] == 0.1 and decay["norm"] == decay["bias"] == 0.0
    assert all(g["lr"] == 0.01 and g["betas"] == (0.9, 0.98) for g in opt.param_groups)
    opt = trainer_optimizer(model, args, weight_decay={"attn_qk": 0.0, "default": 0.0})
    assert opt.low_rank_decay is None and {g["weight_decay"] for g in opt.param_groups} == {0.0}
    opt = trainer_optimizer(model, args, weight_decay=0.0, low_rank_decay=0.5)
    W = model.bert.encoder.layer[0].attention.self.query.weight
    before = np.linalg.svd(W.detach().double().numpy(), compute_uv=False)
    opt.step()  # no gradients: AdamW leaves every weight alone, LRD subtracts c·polar(W)
    after = np.linalg.svd(W.detach().double().numpy(), compute_uv=False)
    # W − c·U Vᵀ = U (Σ − c) Vᵀ: singular values |σᵢ − c|, c = lr·strength
    want = np.sort(np.abs(before - 0.01 * 0.5))[::-1]
    np.testing.assert_allclose(after, want, rtol=0, atol=1e-6)
    # and the Trainer trains with it (its scheduler drives the lr LRD reads)
    data = [{"input_ids": torch.arange(8) % 50, "labels": torch.tensor(i % 2)} for i in range(8)]
    targs = hf.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=0.01,
    )
    trainer = hf.Trainer(model=model, args=targs, train_dataset=data, optimizers=(opt, None))
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert inner is opt and opt.param_groups[0]["lr"] < 0.01  # linear decay to 0


# ----------------------------------------------------------------------------- Lightning


def test_lightning_callback_logs_through_tensorboard_logger(tmp_path: Path) -> None:
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import TensorBoardLogger

    from rankdecay.integrations.lightning import SpectralMonitorCallback

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _tiny_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    x = torch.randint(11, (32, 6), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, 0]), batch_size=8)
    trainer = L.Trainer(
        max_epochs=2,  # 4 batches an epoch: steps 1…8
        logger=TensorBoardLogger(str(tmp_path)),
        callbacks=[SpectralMonitorCallback(every=3)],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Lit(), loader)
    log_dir = Path(trainer.log_dir)
    records = list(read_jsonl(log_dir / "spectra.jsonl"))
    events = read_tensorboard(log_dir)
    assert set(events["rankdecay/qk/rank/mean"]) == {0, 3, 6}
    for step in (0, 3, 6):
        for layer, value in _layer_means(records, step, "qk", "stable_rank").items():
            assert events[f"rankdecay/qk/stable_rank/layer{layer}"][step] == pytest.approx(value)


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("rankdecay.integrations.transformers", ["transformers"], "hf"),
        ("rankdecay.integrations.lightning", ["lightning", "pytorch_lightning"], "lightning"),
    ],
)
def test_framework_integrations_name_their_extra(
    module: str, blocked: list[str], extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    for name in [m for m in sys.modules if m.split(".")[0] in blocked]:
        monkeypatch.delitem(sys.modules, name)
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # import → ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'rankdecay\[{extra}\]'"):
        importlib.import_module(module)
    monkeypatch.delitem(sys.modules, module, raising=False)  # no half-imported module left
