"""Resume runs no code from a checkpoint: a crafted DeepSpeed file whose unpickling would create a marker is refused
as damaged (the previous checkpoint is used), also by the universal conversion; DeepSpeed's own records load."""

import pickle
import shutil
import sys

import pytest
import torch

from medscale.trainer.dsio import weights_only_loads
from tests.trainer.conftest import logged_losses, mae_args, run_cmd, torchrun_cmd


class _Crafted:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _craft(path, marker):
    """Replace a checkpoint file by one that runs code when unpickled (a dict of tensors around the payload)."""
    torch.save({"module": {"w": torch.zeros(2)}, "payload": _Crafted(marker)}, path, pickle_protocol=2)


def test_the_crafted_file_runs_code_when_unpickled_and_nothing_under_the_guard(tmp_path):
    path, marker = tmp_path / "states.pt", tmp_path / "MARKER"
    _craft(path, marker)
    torch.load(path, weights_only=False)  # what DeepSpeed's own loader does: the payload runs
    assert marker.read_text() == "code ran"
    marker.unlink()
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError, match="exec"):
        torch.load(path, weights_only=False)  # the caller's weights_only=False is overruled
    assert not marker.exists() and torch.load.__module__ == "torch.serialization"  # restored afterwards


def test_deepspeeds_own_records_load_under_the_guard(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    states = {"loss_scaler": LossScaler(1.0), "dynamic": DynamicLossScaler(2.0**16, 1000, 1.0, 2, False),
              "zero_stage": ZeroStageEnum.gradients, "address": fragment_address(numel=4, start=2),
              "exp_avg": torch.arange(4.0)}
    torch.save(states, tmp_path / "optim.pt")
    with weights_only_loads():
        loaded = torch.load(tmp_path / "optim.pt", weights_only=False)
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and loaded["address"] == fragment_address(4, 2)
    assert loaded["loss_scaler"].cur_scale == 1.0 and loaded["dynamic"].cur_scale == 2.0**16
    assert torch.equal(loaded["exp_avg"], torch.arange(4.0))


@pytest.mark.slow
def test_a_crafted_checkpoint_is_damaged_and_the_previous_one_resumes(straight_run, train_corpus, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "MARKER"
    shutil.copytree(straight_run, run_dir)  # complete checkpoints at steps 3 and 6
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        _craft(run_dir / "checkpoints" / "step-00000006" / "ds" / name, marker)
    done = run_cmd(torchrun_cmd(*mae_args(train_corpus, run_dir, "train.max_steps=6", "train.checkpoint_every=3")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists()
    assert "skipping damaged checkpoint" in done.stderr and "holds exec outside the allow-list" in done.stderr
    resumed, straight = logged_losses(run_dir), logged_losses(straight_run)
    assert [float(resumed[s]).hex() for s in range(1, 7)] == [float(straight[s]).hex() for s in range(1, 7)]


@pytest.mark.slow
def test_the_universal_conversion_refuses_a_crafted_checkpoint(straight_run, train_corpus, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "MARKER"
    shutil.copytree(straight_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000003")
    _craft(run_dir / "checkpoints" / "step-00000006" / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    done = run_cmd([sys.executable, *mae_args(train_corpus, run_dir, "train.max_steps=8")])  # 2 ranks -> 1
    assert done.returncode == 2 and not marker.exists(), done.stderr[-3000:]
    assert "conversion to a universal checkpoint failed" in done.stderr and "Traceback" not in done.stderr
    assert "holds exec outside the allow-list" in done.stderr
