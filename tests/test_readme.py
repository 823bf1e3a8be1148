"""Every command the README shows is run here, so the README cannot drift from the code.

The README's fenced shell blocks are parsed; each command must have an entry in PLAN, and every
PLAN entry must still be in the README. The commands then run in README order, as subprocesses,
in a copy of the repository (so `eval.ruler freeze` or `runs/...` never touch the checkout), with
a fake Messages API server standing in for Anthropic. What differs from a user's run is listed
per command and kept small:
- `extra` arguments appended to shrink a run (a few steps, a few tasks) — never to change what
  the README's own arguments mean;
- placeholders made real: `my_tasks.txt`, `new_tasks.txt`, `path/to/cases/`, Apple's assets
  folder (a synthetic AFM checkpoint) and the hub id `Qwen/Qwen2.5-3B-Instruct` (the tiny
  stand-in: there is no model hub here);
- commands that need hardware this machine lacks (a multi-GPU accelerate config) run their
  training command in one process, and the accelerate config file is loaded by accelerate itself.
`make demo` is run by test_quickstart_demo below; `make test` is what CI runs; the two-process
accelerate command and the distill_to_device recipe have their own end-to-end tests.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
KEY = "sk-ant-readme-test-key"
QWEN = "Qwen/Qwen2.5-3B-Instruct"
SHELL_STARTS = ("make ", "python ", "accelerate ", "export ", "FMDISTILL_")


def readme_commands(text: str | None = None) -> list[str]:
    """The shell commands of the README's fenced blocks, continuation lines joined, comments cut."""
    text = text if text is not None else (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith(SHELL_STARTS):
                out.append(_strip_comment(line))
    return out


def _strip_comment(line: str) -> str:
    # A `#` starts a comment only outside quotes (notes like --note "why" stay intact).
    quote = None
    for i, c in enumerate(line):
        if c in "\"'" and quote in (None, c):
            quote = None if quote else c
        elif c == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


@dataclass
class Step:
    how: str                         # run | env | elsewhere
    extra: list[str] = field(default_factory=list)
    note: str = ""                   # why it differs from a user's run, if it does
    timeout: int = 300


SFT_SHRINK = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
              "--device", "cpu", "--precision", "fp32", "--max_length", "512",
              "--gradient_checkpointing", "false", "--progress", "false"]
ORPO_SHRINK = ["--max_steps", "2", "--device", "cpu", "--precision", "fp32",
               "--max_length", "640", "--progress", "false"]
AFM_SHRINK = ["--max_steps", "1", "--device", "cpu", "--precision", "fp32", "--max_length", "1024",
              "--per_device_train_batch_size", "1", "--lora_r", "8", "--save_strategy", "no",
              "--val_file", "null", "--output_dir", "runs/sft-afm-readme", "--progress", "false"]

PLAN: dict[str, Step] = {
    "make demo": Step("elsewhere", note="test_quickstart_demo runs what the target runs"),
    "make test": Step("elsewhere", note="CI (.ci/run) runs it"),
    "export ANTHROPIC_API_KEY=...": Step("env"),
    "python -m data.distill --tasks my_tasks.txt --out runs/data/gold.jsonl --concurrency 8":
        Step("run"),
    "python -m data.distill --tasks my_tasks.txt --out runs/data/gold.jsonl --batch": Step("run"),
    "python -m data.import_gold path/to/cases/ --out runs/data/imported.jsonl": Step("run"),
    "python -m data.sft": Step("run"),
    "python -m data.sft --gold runs/data/gold.jsonl --out runs/data/sft": Step("run"),
    "python -m train.standin": Step("run"),
    "python -m train.standin --base smollm2-135m": Step("run", timeout=900),
    "python -m recipes.quickstart --base smollm2-135m": Step(
        "elsewhere", note="tens of minutes on 2 CPU cores; tests/test_smollm2.py runs each of "
                          "its stages on SmolLM2 and test_quickstart_demo the recipe on the toy"),
    "python -m train.sft --config configs/smollm2-sft.yaml": Step(
        "run", ["--max_steps", "1", "--per_device_train_batch_size", "1", "--val_file", "null",
                "--progress", "false"], timeout=600),
    "python -m train.sft --config configs/tiny-sft.yaml": Step("run", ["--max_steps", "6"]),
    "python -m train.sft --config configs/sft.yaml": Step("run", SFT_SHRINK, "3B -> stand-in"),
    "python -m train.sft --config configs/sft.yaml --learning_rate 1e-4 --resume_from_checkpoint "
    "latest": Step("run", ["--max_steps", "3", *SFT_SHRINK[2:]], "resumes the run above"),
    "python -m train.sft --help": Step("run"),
    "python -m prefs.build --student-adapter runs/sft-tiny --out runs/data/prefs":
        Step("run", ["--limit", "6", "--samples", "1", "--max-new-tokens", "300"]),
    f"python -m prefs.build --gold runs/data/gold.jsonl --student-base {QWEN} --student-adapter "
    "runs/sft-qwen3b --samples 4 --temperature 0.8 --judge anthropic":
        Step("run", ["--max-new-tokens", "64", "--out", "runs/data/prefs-anthropic"]),
    "python -m train.orpo --config configs/tiny-orpo.yaml": Step("run", ["--max_steps", "2"]),
    "python -m train.orpo --config configs/orpo.yaml": Step("run", ORPO_SHRINK, "3B -> stand-in"),
    "python -m train.prefs --config configs/tiny-dpo.yaml": Step("run", ["--max_steps", "2"]),
    "FMDISTILL_PAIRS_DIR=runs/data/prefs jupyter lab notebooks/inspect_pairs.ipynb":
        Step("run", note="executed headless (jupyter execute), not opened in JupyterLab"),
    "python -m eval.ruler verify": Step("run"),
    'python -m eval.ruler freeze --note "why"': Step("run"),
    "python -m eval.ruler build --tasks new_tasks.txt --out-dir runs/ruler-draft": Step("run"),
    "python -m eval.judge --candidates runs/candidates.jsonl --judge offline --out "
    "runs/judged.jsonl": Step("run"),
    "python -m eval.judge --candidates runs/candidates.jsonl --judge anthropic --swap --samples 3":
        Step("run"),
    "python -m eval.judge export-records --cache .cache/anthropic/responses.sqlite --out "
    "runs/verdicts.jsonl": Step("run"),
    "python -m eval.score --records runs/judged.jsonl --by experiment": Step("run"),
    "python -m eval.calibrate --verdicts runs/verdicts.jsonl --out runs/offline-weights.json":
        Step("run"),
    "python -m eval.run --base standin --adapter runs/sft-tiny --pipeline single --judge offline "
    '--label sft-tiny --note "hypothesis: SFT on the bundled references beats the base"':
        Step("run"),
    f"python -m eval.run --base {QWEN} --adapter runs/sft-qwen3b --pipeline overgen-prune "
    '--judge anthropic --swap --label sft-3b-prune --lever sft --note "..."':
        Step("run", ["--max-new-tokens", "64"], "3B -> stand-in"),
    "python -m eval.log list": Step("run"),
    "python -m eval.log show 3 --cases": Step("run"),
    'python -m eval.log invalidate 3 --reason "trained on a leaked ruler task"': Step("run"),
    "python -m eval.dashboard --out runs/dashboard.html": Step("run"),
    "python -m eval.run --base smollm2-135m --adapter runs/sft-smollm2 --guided --label "
    'smol-sft-guided --note "guided decoding: the schema holds it to exactly 7 questions"':
        Step("run", ["--max-new-tokens", "48"], timeout=600),
    "python -m export.fmadapter --adapter runs/sft-afm --name discovery_planner --out dist/":
        Step("run", note="runs/sft-afm is a synthetic AFM-shaped adapter"),
    "python -m export.fmadapter --adapter runs/sft-tiny --name tiny_conformance --out dist/ "
    "--allow-stand-in": Step("run"),
    "python -m export.fmadapter inspect dist/discovery_planner.fmadapter": Step("run"),
    "python -m export.fmadapter inspect dist/tiny_conformance.fmadapter --to-peft runs/roundtrip":
        Step("run"),
    "python -m train.sft --config configs/afm-sft.yaml --model_name_or_path "
    "/path/to/toolkit/assets": Step("run", AFM_SHRINK, "synthetic AFM text v7 assets"),
    "python -m recipes.distill_to_device --tasks my_tasks.txt --config configs/recipe.yaml "
    "[--yes] [--out runs/recipe]": Step("elsewhere", note="tests/test_recipe_distill.py, tiny "
                                        "config; recipe.yaml is loaded by test_configs_load"),
    "accelerate launch --config_file configs/accelerate/ddp.yaml -m train.sft --config "
    "configs/sft.yaml": Step("run", SFT_SHRINK, "multi-GPU: one process here"),
    "accelerate launch --config_file configs/accelerate/fsdp.yaml -m train.sft --config "
    "configs/afm-sft.yaml": Step("run", AFM_SHRINK, "multi-GPU: one process here"),
    "accelerate launch --multi_gpu --num_processes 2 -m train.sft --config configs/tiny-sft.yaml":
        Step("elsewhere", note="tests/test_multiprocess.py runs exactly this"),
    "python bench/distill_concurrency.py": Step("run", timeout=400),
    "python bench/generation.py --threads 1": Step("run", timeout=400),
    "python bench/export.py": Step("run", timeout=400),
    "python bench/offline_judge.py --threads 1": Step("run", ["--repeat", "1"], timeout=400),
}


def test_every_readme_command_has_a_plan_and_no_plan_is_stale():
    commands = readme_commands()
    assert len(commands) >= 30
    missing = [c for c in commands if c not in PLAN]
    stale = [c for c in PLAN if c not in commands]
    assert not missing, f"README commands with no test: {missing}"
    assert not stale, f"tested commands no longer in the README: {stale}"


def test_the_makefile_and_ci_run_what_the_readme_says():
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(PY\) -m recipes\.quickstart$", make, re.M)
    assert re.search(r"^test:.*\n(\t.*\n)*\t\$\(PY\) -m pytest", make, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
    multi = (REPO / "tests" / "test_multiprocess.py").read_text()
    assert '"--multi_gpu", "--num_processes", "2"' in multi and "configs/tiny-sft.yaml" in multi


def _sandbox(root: Path, standin: Path) -> Path:
    """A copy of the tracked files, sharing the built stand-in (not the runs or caches)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    work = root / "repo"
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / f)
    (work / ".cache" / "standin").mkdir(parents=True)
    os.symlink(standin, work / ".cache" / "standin" / standin.name)
    for shared in ("bases", "wheels"):        # the fetched SmolLM2 base: fetched once, shared
        (REPO / ".cache" / shared).mkdir(parents=True, exist_ok=True)
        os.symlink(REPO / ".cache" / shared, work / ".cache" / shared)
    return work


def _placeholders(work: Path) -> None:
    from data.corpus import reference_cases
    refs = reference_cases()
    (work / "my_tasks.txt").write_text("# three one-liners\nRepaint a child's bedroom\n"
                                       "Start composting on a balcony\nSell my old car privately\n")
    (work / "new_tasks.txt").write_text("Plan a week of packed school lunches\n"
                                        "Move my aquarium to a new apartment\n")
    cases = work / "path" / "to" / "cases"
    cases.mkdir(parents=True)
    for c in refs[:2]:
        (cases / f"{c.id}.json").write_text(json.dumps(
            {"id": c.id, "input": c.input, **c.gold.to_dict("camel")}))
    from export.synthetic import synthetic_run
    synthetic_run(work / "runs" / "sft-afm")


def _command_argv(cmd: str, work: Path, standin: Path, assets: Path) -> tuple[list[str], dict]:
    env: dict[str, str] = {}
    argv = shlex.split(cmd)
    while argv and re.match(r"^[A-Z_]+=", argv[0]):
        k, v = argv.pop(0).split("=", 1)
        env[k] = v
    argv = [str(standin) if a == QWEN else str(assets) if a == "/path/to/toolkit/assets" else a
            for a in argv]
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "accelerate":
        # The training command after -m, in one process; the config file is checked below.
        i = argv.index("-m")
        argv = [sys.executable, *argv[i:]]
    elif argv[:2] == ["jupyter", "lab"]:
        argv = [str(Path(sys.executable).parent / "jupyter"), "execute", argv[2]]
    if "configs/sft.yaml" in argv or "configs/orpo.yaml" in argv:
        argv += ["--model_name_or_path", str(standin)]
    if "configs/afm-sft.yaml" in argv and "--model_name_or_path" not in argv:
        argv += ["--model_name_or_path", str(assets)]  # the config holds a placeholder path
    return argv, env


def test_every_readme_command_runs(tmp_path, standin_dir):
    from tests.fakes.fake_anthropic import FakeAnthropic
    from train.afm.testing import write_synthetic_assets

    work = _sandbox(tmp_path, standin_dir)
    _placeholders(work)
    assets = write_synthetic_assets(tmp_path / "assets")
    log = []
    with FakeAnthropic(api_key=KEY) as srv:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        env.update(PYTHONPATH=str(work), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS="2")
        for cmd in readme_commands():
            step = PLAN[cmd]
            if step.how == "elsewhere":
                continue
            if step.how == "env":
                env.update(ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=srv.base_url)
                continue
            _before(cmd, work, standin_dir)
            argv, extra_env = _command_argv(cmd, work, standin_dir, assets)
            t0 = time.time()
            proc = subprocess.run([*argv, *step.extra], cwd=work, env={**env, **extra_env},
                                  capture_output=True, text=True, timeout=step.timeout)
            log.append(f"{time.time() - t0:6.1f}s  {cmd}")
            assert proc.returncode == 0, (
                f"README command failed ({proc.returncode}): {cmd}\n{' '.join(argv)}\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            _check(cmd, work, proc.stdout + proc.stderr)
    print("\n".join(log))


def _before(cmd: str, work: Path, standin: Path) -> None:
    """Inputs a command reads that an earlier README step makes in a user's session."""
    runs = work / "runs"
    if cmd.startswith("python -m eval.judge --candidates") and \
            not (runs / "candidates.jsonl").exists():
        # A user's candidates file: here each gold answer, every other one missing a question.
        from data.corpus import ruler_cases
        with open(runs / "candidates.jsonl", "w") as fh:
            for i, c in enumerate(ruler_cases(work / "eval" / "ruler" / "cases")):
                answer = c.gold.to_dict("camel")
                if i % 2:
                    answer["questions"] = answer["questions"][:-1]
                fh.write(json.dumps({"id": c.id, "candidate": answer}) + "\n")
    if cmd.startswith("python -m eval.log show 3"):
        from eval.log import read_experiments
        while len(read_experiments(runs / "experiments.db")) < 3:  # ids 1, 2 come from eval.run
            subprocess.run([sys.executable, "-m", "eval.run", "--base", str(standin), "--label",
                            "third", "--note", "a third row", "--max-new-tokens", "8",
                            "--no-progress"], cwd=work, check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(work)})
    if cmd.startswith("python -m eval.ruler freeze"):
        # What a user freezes: an edited case (here a reworded gold summary).
        case = work / "eval" / "ruler" / "cases" / "ruler-30.json"
        obj = json.loads(case.read_text())
        obj["gold"]["taskDescription"] += " (reworded)"
        case.write_text(json.dumps(obj, ensure_ascii=False, indent=2))
    if cmd.startswith("accelerate launch --config_file"):
        from accelerate.commands.config.config_args import load_config_from_file
        cfg = load_config_from_file(str(work / shlex.split(cmd)[3]))
        assert cfg.distributed_type.value in ("MULTI_GPU", "FSDP")


def _check(cmd: str, work: Path, output: str) -> None:
    """A few outputs each command must have made, beyond its exit status."""
    runs = work / "runs"
    if cmd.startswith("python -m data.distill"):
        assert len((runs / "data" / "gold.jsonl").read_text().splitlines()) == 3
    elif cmd == "python -m data.sft":
        assert (runs / "data" / "sft" / "train.jsonl").exists()
    elif cmd == "python -m train.sft --help":
        assert "--learning_rate" in output
    elif cmd.startswith("python -m eval.ruler freeze"):
        assert json.loads((work / "eval" / "ruler" / "manifest.json").read_text())[
            "ruler_version"] == 2
    elif cmd.startswith("python -m eval.run --base standin"):
        assert (runs / "eval" / "sft-tiny" / "cases.json").exists()
    elif cmd.startswith("python -m eval.dashboard"):
        assert (runs / "dashboard.html").stat().st_size > 1000
    elif cmd.startswith("python -m export.fmadapter inspect dist/tiny"):
        assert (runs / "roundtrip" / "adapter_model.safetensors").exists()


def test_quickstart_demo(tmp_path, standin_dir):
    """What `make demo` runs: the table, SFT beating the base, and a re-run with no training."""
    out = tmp_path / "quickstart"
    env = {**os.environ, "COLUMNS": "160", "OMP_NUM_THREADS": "2"}
    # The timeouts only bound a hang: a 2-core box that also runs other jobs takes several times
    # the idle minutes, and nothing here races the clock.
    first = subprocess.run([sys.executable, "-m", "recipes.quickstart", "--out", str(out)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "quick start finished" in first.stdout and "W/T/L" in first.stdout
    cards = {k: json.loads((out / "eval" / k / "scorecard.json").read_text())
             for k in ("base", "sft", "orpo")}
    assert cards["sft"]["headline"] > cards["base"]["headline"]
    assert cards["sft"]["spec_pass_rate"] > cards["base"]["spec_pass_rate"]
    # A re-run redoes nothing: every step says so and what they made is untouched (checked by
    # content and mtime, not by a wall-clock bound a loaded box could miss).
    made = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*")
            if p.is_file() and p.suffix in (".safetensors", ".json", ".jsonl", ".bin")}
    again = subprocess.run([sys.executable, "-m", "recipes.quickstart", "--out", str(out)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    for step in ("SFT data", "tiny SFT", "preference pairs", "tiny ORPO", "score base on the ruler",
                 "score sft on the ruler", "score orpo on the ruler"):
        assert f"- {step}: already done, skipped" in again.stdout
    assert re.search(r"- export the best adapter \(\w+\) as a stand-in package: already done, "
                     r"skipped", again.stdout)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in made} == made
