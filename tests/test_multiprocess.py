"""Training runs unchanged under `accelerate launch` (two CPU processes, gloo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_process_sft_writes_once_from_the_main_process(standin_dir, sft_data_dir, tmp_path):
    out = tmp_path / "ddp-run"
    accelerate = Path(sys.executable).with_name("accelerate")
    # accelerate 1.15's `launch --cpu` starts a single process (its multi-CPU mode goes through
    # mpirun); `--multi_gpu` uses torch's elastic launcher, and the config's `device: cpu` makes
    # the processes join a gloo group on the CPU.
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "train.sft", "--config", "configs/tiny-sft.yaml",
           "--model_name_or_path", str(standin_dir),
           "--train_file", str(sft_data_dir / "train.jsonl"),
           "--val_file", str(sft_data_dir / "val.jsonl"),
           "--output_dir", str(out), "--max_steps", "3", "--save_strategy", "no",
           "--per_device_train_batch_size", "2", "--progress", "false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["metrics"]["world_size"] == 2 and run["metrics"]["global_step"] == 3
    assert (out / "adapter_model.safetensors").exists() and (out / "loss_curve.png").exists()
    # Only the main process reports and writes: one announcement, no per-rank leftovers.
    assert proc.stdout.count("adapter written to") == 1
    assert not list(out.glob("*.tmp")) and not list(out.glob(".run.json*"))
