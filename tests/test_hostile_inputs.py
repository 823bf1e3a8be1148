"""Hostile and careless input (issue 27, parts 3-7): every CLI refuses it with one clear line and
exit 2 (file, line, key named; no traceback), read-only commands leave files byte-identical,
`export inspect` never follows a symlink nor blocks on a FIFO, export sweeps its own stale temp
folders, and no secret or home path reaches a package's metadata.

Each row runs the real CLI in-process (`main([...])`) on real files, except where a hang must be
bounded (the FIFO case runs a subprocess with a timeout).
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

from data.contract.inputs import MAX_TASK_CHARS

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
    from eval.calibrate import main
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
@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from export.fmadapter import main
    from export.synthetic import synthetic_standin_run
    root = tmp_path_factory.mktemp("pkg")
    run = synthetic_standin_run(root / "run")
    assert main(["--adapter", str(run), "--name", "tiny", "--out", str(root / "out"), "--quiet",
                 "--allow-stand-in"]) == 0
    return root / "out" / "tiny.fmadapter"


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
