"""Issue 17 options on the tiny stand-in: report_to, Liger refusal, packing keeps the loss mask."""
import pytest

from conftest import tiny_sft_config
from train.config import ConfigError, load_config
from train.orpo import ORPORunConfig
from train.prefs import PrefsRunConfig
from train.sft import SFTRunConfig, build_trainer, run_sft


@pytest.fixture(scope="module")
def small_data(sft_data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("eco-sft")
    for name, n in (("train.jsonl", 8), ("val.jsonl", 2)):
        lines = (sft_data_dir / name).read_text().splitlines()[:n]
        (d / name).write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize("cls", [SFTRunConfig, ORPORunConfig, PrefsRunConfig])
def test_every_stage_takes_report_to_and_rejects_a_bad_tracker(cls):
    assert cls().report_to == "none"
    assert load_config(cls, None, {"report_to": "tensorboard"}).report_to == "tensorboard"
    with pytest.raises(ConfigError, match="key 'report_to' must be one of .*tensorboard"):
        load_config(cls, None, {"report_to": "tensorbored"})


def test_a_tracker_that_is_not_installed_is_named():
    import importlib.util

    from train.common import check_report_to
    check_report_to("none")
    check_report_to("tensorboard")  # pinned in the dev extra
    missing = [t for t in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(t) is None]
    for t in missing:
        with pytest.raises(ConfigError, match=f"report_to: {t} needs the '{t}' package"):
            check_report_to(t)


def test_liger_is_refused_off_cuda(standin_dir, small_data, tmp_path):
    cfg = tiny_sft_config(standin_dir, small_data, tmp_path / "run", max_steps=1,
                          use_liger_kernel=True, device="cpu")
    with pytest.raises(ConfigError, match="use_liger_kernel: true needs a CUDA device.*'cpu'"):
        build_trainer(cfg)


@pytest.mark.slow
def test_tensorboard_writes_event_files_into_the_run_folder(standin_dir, small_data, tmp_path):
    out = run_sft(tiny_sft_config(standin_dir, small_data, tmp_path / "tb", max_steps=2,
                                  logging_steps=1, val_file=None, save_strategy="no",
                                  report_to="tensorboard"))
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert any("loss" in t for t in acc.Tags()["scalars"])


def _label_counts(trainer):
    """(answer tokens learned, real tokens) over one pass of the training dataloader."""
    learned = real = 0
    for batch in trainer.get_train_dataloader():
        learned += int((batch["labels"] != -100).sum())
        if "attention_mask" in batch:
            real += int(batch["attention_mask"].sum())
        else:
            real += int(batch["input_ids"].numel())
    return learned, real


def test_packing_keeps_the_completion_mask(standin_dir, small_data, tmp_path):
    padded, _ = build_trainer(tiny_sft_config(standin_dir, small_data, tmp_path / "a",
                                              max_steps=1, val_file=None))[:2]
    packed, _ = build_trainer(tiny_sft_config(standin_dir, small_data, tmp_path / "b",
                                              max_steps=1, val_file=None, packing=True))[:2]
    learned_padded, _ = _label_counts(padded)
    learned_packed, _ = _label_counts(packed)
    assert learned_packed == learned_padded > 0
    batch = next(iter(packed.get_train_dataloader()))
    pos = batch["position_ids"][0].tolist()
    # Position ids restart at 0 where each packed sequence begins.
    assert pos[0] == 0 and pos.count(0) >= 2


def test_throughput_bench_measures_one_lora_step_on_the_tiny_shape():
    import importlib.util

    from conftest import REPO
    spec = importlib.util.spec_from_file_location("train_throughput",
                                                  REPO / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.one_step_figures("tiny", "cpu", batch=1, seq=32, steps=1)
    assert r["tok_s"] > 0 and r["params_b"] > 0 and r["mfu"] is None  # no honest CPU peak
    bench.print_table([r])
