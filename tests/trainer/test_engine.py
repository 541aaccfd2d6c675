"""The engine with real parts: 2 gloo ranks under torchrun with ZeRO 2 on real data, exact resume, SIGTERM then
resume, the export loaded by plain timm in a process without medscale, clear errors before any step."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.conftest import ENV, REPO
from tests.trainer.conftest import logged_losses as _losses
from tests.trainer.conftest import mae_args as _args
from tests.trainer.conftest import run_cmd as _run
from tests.trainer.conftest import torchrun_cmd as _torchrun


@pytest.mark.slow
def test_two_ranks_train_and_write_the_run_directory(straight_run):
    losses = _losses(straight_run)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(v == v for v in losses.values())
    checkpoints = sorted(p.name for p in (straight_run / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000006"]
    for name in checkpoints:
        folder = straight_run / "checkpoints" / name
        assert (folder / "COMPLETE").exists() and (folder / "rng-rank0.pt").exists() and (folder / "rng-rank1.pt")
        assert json.loads((folder / "meta.json").read_text())["world_size"] == 2
    assert (straight_run / "images" / "step-00000006.png").exists() and (straight_run / "config.yaml").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight_run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert {"train/lr", "train/images_per_s", "train/data_wait_fraction", "train/grad_norm"} <= \
        set(events.Tags()["scalars"])
    assert events.Tags()["images"] == ["reconstruction"]


@pytest.mark.slow
def test_exact_resume_gives_bit_identical_losses(straight_run, train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    first = _run(_torchrun(*_args(train_corpus, run_dir, "train.max_steps=6", "train.checkpoint_every=3",
                                  "train.stop_at_step=3")))
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(_losses(run_dir)) == [1, 2, 3]
    second = _run(_torchrun(*_args(train_corpus, run_dir, "train.max_steps=6", "train.checkpoint_every=3")))
    assert second.returncode == 0, second.stderr[-3000:]
    resumed, straight = _losses(run_dir), _losses(straight_run)
    assert [float(resumed[s]).hex() for s in range(1, 7)] == [float(straight[s]).hex() for s in range(1, 7)]
    weights = "export/backbone.safetensors"  # the weights too (DeepSpeed's CPU Adam needs its steps replayed)
    assert (run_dir / weights).read_bytes() == (straight_run / weights).read_bytes()


@pytest.mark.slow
def test_resume_never_refuses_a_run_with_checkpoints_and_a_path_starts_a_fresh_run_from_it(straight_run, train_corpus,
                                                                                         tmp_path):
    never = _run([sys.executable, *_args(train_corpus, straight_run, "train.max_steps=6", "train.resume=never")])
    assert never.returncode == 2 and "train.resume=never: " in never.stderr and "newest at step 6" in never.stderr
    source = straight_run / "checkpoints" / "step-00000003"
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    run_dir = tmp_path / "branch"
    branch = _run(_torchrun(*_args(train_corpus, run_dir, "train.max_steps=6", "train.checkpoint_every=3",
                                   f"train.resume={source}")))
    assert branch.returncode == 0, branch.stderr[-3000:]
    branched, straight = _losses(run_dir), _losses(straight_run)
    assert sorted(branched) == [4, 5, 6]  # it went on from step 3, with the weights, optimizer and data position
    assert [float(branched[s]).hex() for s in (4, 5, 6)] == [float(straight[s]).hex() for s in (4, 5, 6)]
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before  # the source is untouched
    bad = _run([sys.executable, *_args(train_corpus, tmp_path / "other", f"train.resume={tmp_path}")])
    assert bad.returncode == 2 and f"train.resume: {tmp_path} is not a complete checkpoint" in bad.stderr


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_and_the_rerun_resumes(train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    cmd = _torchrun(*_args(train_corpus, run_dir, "train.max_steps=200", "train.checkpoint_every=1000"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **ENV), cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "log.jsonl").exists() and len(_losses(run_dir)) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the torchrun agent, which forwards it to every rank
    out, err = proc.communicate(timeout=300)
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert marker["exit_code"] == 75 and (Path(marker["checkpoint"]) / "COMPLETE").exists(), err[-3000:]
    step = marker["step"]
    assert 2 <= step < 200
    again = _run(_torchrun(*_args(train_corpus, run_dir, "train.max_steps=200", f"train.stop_at_step={step + 2}",
                                  "train.checkpoint_every=1000")))
    assert again.returncode == 0, again.stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resume"]
    assert resumed and resumed[-1]["step"] == step
    assert max(_losses(run_dir)) == step + 2


@pytest.mark.slow
def test_the_export_loads_in_plain_timm_without_medscale(straight_run):
    code = ("import json, sys, timm, torch\n"
            "from safetensors.torch import load_file\n"
            f"card = json.load(open({str(straight_run / 'export' / 'card.json')!r}))\n"
            "model = timm.create_model(card['model'], pretrained=False, **card['kwargs']).eval()\n"
            f"model.load_state_dict(load_file({str(straight_run / 'export' / 'backbone.safetensors')!r}))\n"
            "x = torch.randn(2, card['in_chans'], card['image_size'], card['image_size'])\n"
            "print(tuple(model(x).shape), card['step'], 'medscale' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(2,", "192)", "6", "False"]


@pytest.mark.parametrize("override, message", [
    ("train.model=vit_tiniest", "train.model: timm has no model 'vit_tiniest'"),
    ("train.method=dino", "train.method"),
    ("train.zero_stage=4", "train.zero_stage"),
    ("loader.image_size=30", "loader.image_size 30 is not a multiple of train.patch_size 4"),
])
def test_bad_config_is_a_clear_error_before_any_step(train_corpus, tmp_path, override, message):
    done = _run([sys.executable, *_args(train_corpus, tmp_path / "run", "train.max_steps=2", override)])
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_run_directory_of_another_model_is_refused(straight_run, train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run, run_dir)
    done = _run([sys.executable, *_args(train_corpus, run_dir, "train.max_steps=8",
                                        "train.model=vit_small_patch16_224")])
    assert done.returncode == 2, done.stderr[-2000:]
    assert "holds checkpoints of mae vit_tiny_patch16_224" in done.stderr


@pytest.mark.slow
def test_the_deepspeed_launcher_with_zero_3(train_corpus, tmp_path):
    from tests.conftest import _free_port

    run_dir = tmp_path / "run"
    launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(_free_port()),
                "--module", *_args(train_corpus, run_dir, "train.max_steps=4", "train.checkpoint_every=2",
                                   "train.zero_stage=3")[1:]]
    done = _run(launcher)  # the launcher puts --local_rank=N before the command: the entry point accepts it
    assert done.returncode == 0, done.stdout[-3000:]
    assert sorted(_losses(run_dir)) == [1, 2, 3, 4]
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "export" / "backbone.safetensors"))  # gathered from the ZeRO-3 shards
    assert weights["blocks.0.attn.qkv.weight"].shape == (576, 192) and weights["blocks.0.attn.qkv.weight"].abs().sum()


def _two_nodes(args, per_node=lambda node: []):
    """Two torchrun agents joined by c10d rendezvous on this machine, one rank each (`per_node(i)`: extra
    arguments of node i); both must exit 0."""
    from tests.conftest import _free_port

    port = _free_port()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=nodes{port}",
                                *args, *per_node(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, **ENV), cwd=REPO) for i in range(2)]
    codes = [agent.wait(timeout=300) for agent in agents]
    assert codes == [0, 0], [a.stderr.read()[-2000:] for a in agents]


@pytest.mark.slow
def test_two_nodes_by_torchrun_rendezvous(train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    _two_nodes(_args(train_corpus, run_dir, "train.max_steps=3", "train.checkpoint_every=3"))
    meta = json.loads((run_dir / "checkpoints" / "step-00000003" / "meta.json").read_text())
    assert meta["world_size"] == 2 and sorted(_losses(run_dir)) == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("ranks, note, per_step", [(1, "gradient accumulation 1 -> 2", 16),
                                                   (3, "the lr follows the rule", 24)])
def test_resume_on_another_world_size(straight_run, train_corpus, tmp_path, ranks, note, per_step):
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run, run_dir)  # 6 steps of 2 ranks x 8 samples
    cmd = _args(train_corpus, run_dir, "train.max_steps=8", "train.checkpoint_every=8")
    done = _run(_torchrun(*cmd, ranks=ranks) if ranks > 1 else [sys.executable, *cmd])
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resume"][-1]
    assert resumed["step"] == 6 and resumed["world_size"] == ranks and note in resumed["world_size_change"]
    loader = json.loads((run_dir / "checkpoints" / "step-00000008" / "loader.json").read_text())
    assert loader["epoch"] == 0 and loader["consumed"] == 6 * 16 + 2 * per_step  # the data went on exactly once
    assert (run_dir / "checkpoints" / "step-00000006" / "universal" / "COMPLETE").exists()


@pytest.mark.slow
def test_resume_checks_the_model_warns_on_schedule_and_corpus_changes(train_corpus, tmp_path):
    from medscale.dedup.config import DedupConfig
    from medscale.dedup.service import run_dedup

    corpus, run_dir = tmp_path / "corpus", tmp_path / "run"
    shutil.copytree(train_corpus, corpus)
    first = _run([sys.executable, *_args(corpus, run_dir, "train.max_steps=4", "train.stop_at_step=2")])
    assert first.returncode == 0, first.stderr[-3000:]
    card = json.loads((run_dir / "export" / "card.json").read_text())
    assert len(card["manifest_digest"]) == 16
    other = _run([sys.executable, *_args(corpus, run_dir, "train.max_steps=4", "train.mae.decoder_depth=2")])
    assert other.returncode == 2 and "the model changed since this checkpoint (method_options" in other.stderr
    run_dedup(str(corpus), DedupConfig(strategy="every-n", every_n=2, executor="local", progress=False))
    again = _run([sys.executable, *_args(corpus, run_dir, "train.max_steps=4", "train.blr=3e-4")])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train.blr changed since step-00000002: 0.00015 -> 0.0003" in again.stderr
    assert "the corpus changed since step-00000002 (kept samples 790 -> 785" in again.stderr


@pytest.mark.slow
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(straight_run, train_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run, run_dir)  # complete checkpoints at steps 3 and 6
    states = run_dir / "checkpoints" / "step-00000006" / "ds" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:1000])  # marked complete, but its model states are cut short
    done = _run(_torchrun(*_args(train_corpus, run_dir, "train.max_steps=8", "train.checkpoint_every=8")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping damaged checkpoint" in done.stderr and "step-00000003" in done.stderr
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resume"][-1]
    assert resumed["step"] == 3 and resumed["checkpoint"].endswith("step-00000003")
    assert max(_losses(run_dir)) == 8


def _remote_losses(fs, url):
    lines = [json.loads(line) for line in fs.cat_file(f"{url}/log.jsonl").decode().splitlines()]
    return {e["step"]: e["train/loss"] for e in lines if e["event"] == "scalars"}


@pytest.mark.slow
def test_an_s3_run_directory_needs_no_shared_filesystem(straight_run, train_corpus, tmp_path, s3_server):
    """Two nodes with their own local folders write one run to S3 (moto); a third, fresh node resumes it."""
    import s3fs

    url = "s3://medscale-test/runs/mae"
    endpoint = f"train.storage_options.client_kwargs.endpoint_url={s3_server['client_kwargs']['endpoint_url']}"
    args = [*_args(train_corpus, url, "train.max_steps=6", "train.checkpoint_every=3", endpoint)]
    _two_nodes([*args, "train.stop_at_step=3"], lambda i: [f"train.local_dir={tmp_path / f'node{i}'}"])
    fs = s3fs.S3FileSystem(**s3_server)
    assert fs.exists(f"{url}/checkpoints/step-00000003/COMPLETE")
    names = {n.rsplit("/", 1)[-1] for n in fs.find(f"{url}/checkpoints/step-00000003")}
    assert {"rng-rank0.pt", "rng-rank1.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names  # node 1's part
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" not in {  # ... which node 0 never had
        p.name for p in (tmp_path / "node0").rglob("*")}
    again = _run(_torchrun(*args, f"train.local_dir={tmp_path / 'fresh'}"))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed, straight = _remote_losses(fs, url), _losses(straight_run)
    assert [float(resumed[s]).hex() for s in range(1, 7)] == [float(straight[s]).hex() for s in range(1, 7)]
    assert fs.exists(f"{url}/checkpoints/step-00000006/COMPLETE") and fs.exists(f"{url}/export/card.json")
    assert json.loads(fs.cat_file(f"{url}/export/card.json"))["step"] == 6
    assert fs.find(f"{url}/tb") and fs.exists(f"{url}/images/step-00000006.png")
    assert "<redacted>" in fs.cat_file(f"{url}/config.yaml").decode()


@pytest.mark.slow
def test_verbose_shows_the_third_party_chatter_a_normal_run_hides(tmp_path):
    """`-v` shows DeepSpeed's op-build prints (a normal run keeps them out: tests/test_wheel.py checks its run)."""
    corpus = Path(__file__).parents[1] / "core" / "v1" / "corpus"
    loud = _run([sys.executable, "-m", "medscale", "-v", *_args(corpus, tmp_path / "loud", "train.max_steps=1")[2:]])
    assert loud.returncode == 0 and "deepspeed_shm_comm_op built successfully" in loud.stderr, loud.stderr[-3000:]
