"""fp32 ZeRO with shared master weights: the master partition is the model's own storage, and training is
bit-identical to DeepSpeed's cloned master, on 2 gloo ranks for stages 1, 2 and 3."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _losses(stage: int, share: bool) -> list:
    """Four steps of a tiny MAE on this rank; the engine with or without the shared master."""
    import deepspeed
    import torch

    from medscale.trainer import zero
    from medscale.trainer.methods import MaeMethod
    from medscale.trainer.options import MaeOptions
    from medscale.trainer.registry import train_config

    torch.manual_seed(0)
    cfg = train_config(zero_stage=stage, patch_size=8, mae=MaeOptions(decoder_dim=64, decoder_depth=1,
                                                                      decoder_heads=4))
    method = MaeMethod(cfg.mae, cfg.model_spec(), 32)
    if share:
        engine = zero.initialize(method, cfg, 4, 2, "fp32", 1e-3)
        shared = [m.untyped_storage().data_ptr() == p.untyped_storage().data_ptr()
                  for m, p in zero._pairs(engine.optimizer)]
        if not shared or not all(shared):
            raise RuntimeError(f"stage {stage}: the master weights are not the model's storage")
    else:
        config = zero.deepspeed_config(cfg, 4, 2, "fp32", 1e-3, sum(p.numel() for p in method.parameters()))
        engine, _, _, _ = deepspeed.initialize(model=method, model_parameters=method.parameter_groups(0.05),
                                               config=config)
        pairs = list(zero._pairs(engine.optimizer))
        if zero.share_fp32_master(engine.optimizer, "0.18.5") or any(  # an untested DeepSpeed: its own copy stays
                m.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for m, p in pairs):
            raise RuntimeError(f"stage {stage}: the master weights were shared on an untested DeepSpeed")
    rank = torch.distributed.get_rank()
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))[rank * 4:(rank + 1) * 4]
    generator = torch.Generator().manual_seed(rank)
    losses = []
    for _ in range(4):
        loss, _ = engine(images, generator)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss).hex())
    return losses


def test_the_shared_master_is_gated_on_the_deepspeed_versions_it_was_tested_with(caplog):
    from medscale.trainer.zero import share_fp32_master, shared_master_tested

    assert shared_master_tested("0.19.8") and shared_master_tested("0.19.0+cpu")
    assert not any(shared_master_tested(v) for v in ("0.18.9", "0.20.0", "1.0", "dev"))
    with caplog.at_level("INFO"):
        assert share_fp32_master(optimizer=None, deepspeed_version="0.20.1") == 0  # nothing of the optimizer touched
    assert "DeepSpeed 0.20.1 is not a version the shared master weights were tested with (0.19 to before 0.20): " \
           "keeping DeepSpeed's own copy" in caplog.text


@pytest.mark.slow
def test_shared_fp32_master_trains_bit_identically_on_two_ranks(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for stage in ("1", "2", "3"):
            assert result[stage]["shared"] == result[stage]["cloned"], (rank, stage)


if __name__ == "__main__":  # one rank of the test above, under torchrun
    sys.path.insert(0, str(REPO))
    from medscale.trainer.distributed import init_distributed

    world = init_distributed()
    out = {str(s): {"shared": _losses(s, True), "cloned": _losses(s, False)} for s in (1, 2, 3)}
    (Path(sys.argv[1]) / f"rank{world.rank}.json").write_text(json.dumps(out))
