"""The contrastive methods on the engine: each trains on 2 gloo ranks under torchrun with ZeRO 2 on real data, writes
the run directory (views picture, TensorBoard, export loadable by plain timm), and resumes exactly (MoCo's queue and
momentum encoder, BYOL's EMA target, SwAV's per-rank queue); clear errors before any step."""

import json
import shutil
import sys

import pytest

from tests.trainer.conftest import REPO, logged_losses, run_cmd, torchrun_cmd

PRESET = REPO / "configs" / "contrastive-tiny.yaml"
METHODS = ("simclr", "moco", "mocov3", "byol", "swav")
# small enough for seconds per step on 2 cores; SwAV's queue fills and is used within the 6 steps
SMALL = ["train.moco.queue_size=64", "train.swav.queue_size=16", "train.swav.queue_start_step=1",
         "train.swav.freeze_prototypes_steps=2"]


def _args(corpus, run_dir, method, *extra):
    return ["-m", "medscale", "pretrain", "-c", str(PRESET), f"train.method={method}", f"train.data={corpus}",
            f"train.run_dir={run_dir}", "train.progress=false", "train.log_every=1", "train.warmup_steps=2",
            "loader.batch_size=8", *SMALL, *extra]


@pytest.fixture(scope="module")
def straight_runs(train_corpus, tmp_path_factory):
    """method -> an uninterrupted 6-step run on 2 ranks (ZeRO 2, checkpoints at 3 and 6), made on first use."""
    done = {}

    def get(method):
        if method not in done:
            run_dir = tmp_path_factory.mktemp(method) / "run"
            proc = run_cmd(torchrun_cmd(*_args(train_corpus, run_dir, method, "train.max_steps=6",
                                               "train.checkpoint_every=3")))
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            done[method] = run_dir
        return done[method]
    yield get
    for run_dir in done.values():  # ~600 MB each: gone when the module ends, not kept to the session's end
        shutil.rmtree(run_dir.parent, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_two_ranks_with_zero_2(straight_runs, method):
    run_dir = straight_runs(method)
    losses = logged_losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(v == v and v > 0 for v in losses.values())
    for step in (3, 6):
        folder = run_dir / "checkpoints" / f"step-{step:08d}"
        assert (folder / "COMPLETE").exists() and (folder / "rng-rank1.pt").exists()
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["method"] == method and meta["world_size"] == 2
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert "BatchNorm: per rank (gloo has no SyncBatchNorm" in start["batch_norm"]  # ResNet-18: stated in the log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run_dir / "tb"))
    tb.Reload()
    assert tb.Tags()["images"] == ["views"] and (run_dir / "images" / "step-00000006.png").exists()
    assert [e.step for e in tb.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    # the online backbone, in the card contract: plain timm rebuilds and loads it
    import timm
    import torch
    from safetensors.torch import load_file

    card = json.loads((run_dir / "export" / "card.json").read_text())
    assert card["method"] == method and card["model"] == "resnet18" and card["in_chans"] == 1
    model = timm.create_model(card["model"], pretrained=False, **card["kwargs"]).eval()
    model.load_state_dict(load_file(str(run_dir / "export" / "backbone.safetensors")))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 512)


@pytest.mark.slow
# byol's momentum targets are saved as moco's; every method resumes in-process in test_methods
@pytest.mark.parametrize("method", ["moco", "swav"])
def test_exact_resume_restores_momentum_encoders_queues_and_targets(straight_runs, train_corpus, tmp_path, method):
    """The step-3 checkpoint of the straight run, resumed in a fresh launch, gives its steps 4-6 bit for bit."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight_runs(method), run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000006")  # as if the run had stopped after step 3
    if method == "swav":  # the per-rank queue rides in each rank's own state file
        import torch

        state = torch.load(run_dir / "checkpoints" / "step-00000003" / "rng-rank1.pt", weights_only=True)
        filled = int(state["method"]["queue_filled"])
        assert state["method"]["queue"].abs().sum() > 0 and filled == 2 * 8  # used from step 1: steps 1 and 2
    proc = run_cmd(torchrun_cmd(*_args(train_corpus, run_dir, method, "train.max_steps=6",
                                       "train.checkpoint_every=3")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "resume"] == [3]
    resumed, straight = logged_losses(run_dir), logged_losses(straight_runs(method))
    assert [float(resumed[s]).hex() for s in (4, 5, 6)] == [float(straight[s]).hex() for s in (4, 5, 6)]


@pytest.mark.parametrize("overrides, message", [
    (["train.method=simclr", "loader.augment=mae"], "loader.augment mae does not give simclr the input"),
    (["train.method=byol", "train.zero_stage=3"], "train.zero_stage 3: byol keeps frozen networks"),
    (["train.method=simclr", "train.optimizer=lars"], "train.optimizer lars adapts each tensor as a whole"),
    (["train.method=swav", "train.optimizer=adamz"], "train.optimizer: timm has no optimizer 'adamz'"),
    (["train.method=moco", "train.moco.queue_size=0"], "train.moco.queue_size"),
])
def test_bad_contrastive_config_is_a_clear_error_before_any_step(train_corpus, tmp_path, overrides, message):
    proc = run_cmd([sys.executable, *_args(train_corpus, tmp_path / "run", "simclr", "train.max_steps=2",
                                           *overrides)])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_bf16_is_autocast_over_fp32_weights(train_corpus, tmp_path):
    """The CPU twin of the GPU path: BYOL in bf16 computes in bf16 (its losses are bf16 numbers) while its weights,
    which the EMA target follows, stay fp32 (the export is float32)."""
    import torch
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    proc = run_cmd([sys.executable, *_args(train_corpus, run_dir, "byol", "train.max_steps=3",
                                           "train.checkpoint_every=3", "train.precision=bf16")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = logged_losses(run_dir)
    assert sorted(losses) == [1, 2, 3]
    assert all(float(torch.tensor(v).bfloat16()) == v for v in losses.values())  # computed in bf16
    weights = load_file(str(run_dir / "export" / "backbone.safetensors"))
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}
