"""Bring your own data and gold: Apple-toolkit files as Apple writes them (system turn optional,
the instructions in the user turn), other planners' key names, and a round trip through training,
evaluation with the data's own prompt, export and data.sft --format apple."""
import json

import pytest

from data.contract import (PROMPT_HASH, ContractError, DiscoveryResult, FieldMapError,
                           PromptTemplate, find_task, compile_input_pattern, parse_assistant,
                           parse_field_map, planner_messages)
from data.formats import FormatError, load_rows, prompt_record, row_tasks
from train.inputs import sft_data_record

# The other project's instruction block: its whole prompt sits in the user turn, the task last.
INSTRUCTIONS = ("You help people plan. Read the task and reply with JSON: title, summary, and "
                "questions (seven of them, each with question, detail, requiresExternalAction).\n"
                "Ask one thing per question.\n\nTask the user entered: ")

# Hand-written for this test: four tasks (none near a ruler task), seven questions each.
TASKS = {
    "Repaint the kitchen cabinets": [
        "Are the cabinet doors solid wood or laminate", "Which colour do you want them painted",
        "Can the doors come off their hinges", "Do you own a paint sprayer",
        "How many days can the kitchen be out of use", "Should the hardware be replaced too",
        "Is there any grease build-up to remove first"],
    "Organise a neighbourhood book swap": [
        "Where could the swap be held", "Which weekend suits most neighbours",
        "How many people do you expect", "Will children's books have their own table",
        "Who can help you set up the tables", "What happens to books nobody takes",
        "How will you tell the neighbours about it"],
    "Learn to bake sourdough bread": [
        "Do you already have a sourdough starter", "How often do you want to bake",
        "Does your oven reach a high temperature", "Do you own a Dutch oven",
        "Which flour can you buy nearby", "How much time do you have on weekdays",
        "Do you prefer a mild or a sour loaf"],
    "Repair a dripping bathroom tap": [
        "Is the tap a mixer or two separate taps", "Can you turn off the water under the sink",
        "Do you know the tap's brand", "Does it drip from the spout or the handle",
        "Which tools do you have at home", "How old is the tap",
        "Would you rather replace the whole tap"],
}


def their_answer(task: str, questions=None) -> dict:
    qs = questions or TASKS[task]
    return {"title": task, "summary": f"A plan to {task.lower()}.",
            "questions": [{"question": q + "?", "detail": "It changes the plan.",
                           "requiresExternalAction": i == 0} for i, q in enumerate(qs)]}


def their_line(task: str, **answer) -> list[dict]:
    return [{"role": "user", "content": INSTRUCTIONS + task},
            {"role": "assistant", "content": json.dumps(answer or their_answer(task))}]


@pytest.fixture
def theirs(tmp_path):
    path = tmp_path / "theirs.jsonl"
    path.write_text("".join(json.dumps(their_line(t)) + "\n" for t in TASKS))
    return path


# ---- 1. the shapes Apple's format takes --------------------------------------------------------
def test_apple_lines_with_or_without_system_turn_and_earlier_turns(theirs, tmp_path):
    rows, fmt = load_rows(theirs, "apple")
    assert fmt == "apple" and len(rows) == 4
    assert [m["role"] for m in rows[0]["prompt"]] == ["user"]
    assert rows[0]["prompt"][0]["content"] == INSTRUCTIONS + "Repaint the kitchen cabinets"
    assert json.loads(rows[0]["completion"][0]["content"])["title"] == \
        "Repaint the kitchen cabinets"
    # A system turn, and a conversation with an earlier exchange: the prompt is everything
    # before the last assistant turn, as written.
    system = [{"role": "system", "content": "Be brief."}] + their_line("Repair a dripping bathroom tap")
    multi = their_line("Learn to bake sourdough bread") + their_line("Repaint the kitchen cabinets")
    path = tmp_path / "shapes.jsonl"
    path.write_text(json.dumps(system) + "\n" + json.dumps(multi) + "\n")
    rows, _ = load_rows(path)          # auto finds the message arrays
    assert [m["role"] for m in rows[0]["prompt"]] == ["system", "user"]
    assert [m["role"] for m in rows[1]["prompt"]] == ["user", "assistant", "user"]
    assert [t.text for t in row_tasks(rows)] == ["Repair a dripping bathroom tap",
                                                 "Repaint the kitchen cabinets"]


@pytest.mark.parametrize("roles, why", [
    (["user", "user", "assistant"], "got user, user, assistant"),
    (["assistant"], "got assistant"),
    (["system", "user"], "got system, user"),
    (["user", "assistant", "system", "assistant"], "got user, assistant, system, assistant"),
])
def test_other_shapes_are_errors_naming_file_and_line(tmp_path, roles, why):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps([{"role": r, "content": "x"} for r in roles]) + "\n")
    with pytest.raises(FormatError, match=rf"bad.jsonl:1: expected messages system, user, "
                                          rf"assistant \(the system turn optional.*{why}"):
        load_rows(path, "apple")


def test_unsupported_message_keys_are_named(tmp_path):
    path = tmp_path / "tools.jsonl"
    line = their_line("Repaint the kitchen cabinets")
    line[1]["tool_calls"] = []
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(FormatError, match=r"tools.jsonl:1: message 1 .*key 'tool_calls' is not "
                                          "supported"):
        load_rows(path, "apple")


# ---- 2. key names ------------------------------------------------------------------------------
def test_other_planners_key_names_read_as_the_contract():
    ours = DiscoveryResult.from_dict(their_answer("Repaint the kitchen cabinets"))
    assert ours.task_title == "Repaint the kitchen cabinets"
    assert ours.questions[0].title == "Are the cabinet doors solid wood or laminate?"
    assert ours.questions[0].description == "It changes the plan."
    assert ours.questions[0].requires_external_action and not ours.questions[1].requires_external_action
    # The harness's spelling and the canonical one give the same result; output is canonical.
    assert DiscoveryResult.from_dict(ours.to_dict("camel")) == ours
    assert set(ours.to_dict("camel")) == {"taskTitle", "taskDescription", "questions"}
    # Model output in their names, fenced, through eval's lenient parser.
    parsed = parse_assistant("Sure:\n```json\n" + json.dumps(their_answer(
        "Repaint the kitchen cabinets")) + "\n```")
    assert parsed.ok and parsed.result == ours


def test_disagreeing_spellings_are_ambiguous():
    d = their_answer("Repaint the kitchen cabinets")
    d["taskTitle"] = d["title"]                       # the same value twice is fine
    assert DiscoveryResult.from_dict(d).task_title == "Repaint the kitchen cabinets"
    d["taskTitle"] = "Paint the cupboards"
    with pytest.raises(ContractError, match=r"x.jsonl:3: ambiguous: keys 'taskTitle' and 'title'"):
        DiscoveryResult.from_dict(d, where="x.jsonl:3")
    d = their_answer("Repaint the kitchen cabinets")
    d["questions"][4]["title"] = "Something else?"
    with pytest.raises(ContractError, match=r"questions\[4\]: ambiguous: keys 'title' and "
                                            "'question'"):
        DiscoveryResult.from_dict(d)
    # A field map names the key to read, which settles it.
    assert DiscoveryResult.from_dict(d, field_map=parse_field_map("questions[].title=question")
                                     ).questions[4].title == \
        "How many days can the kitchen be out of use?"


def test_field_map_reads_any_other_naming():
    d = {"heading": "Repaint the kitchen cabinets", "blurb": "Paint them.",
         "asks": [{"ask": f"Question {i}?", "why": "w"} for i in range(7)]}
    fmap = parse_field_map("taskTitle=heading,taskDescription=blurb,questions=asks,"
                           "title=ask,questions[].description=why")
    r = DiscoveryResult.from_dict(d, field_map=fmap)
    assert (r.task_title, r.task_description, r.questions[6].title) == \
        ("Repaint the kitchen cabinets", "Paint them.", "Question 6?")
    with pytest.raises(ContractError, match="missing key 'taskTitle'"):
        DiscoveryResult.from_dict(d)
    with pytest.raises(FieldMapError, match="entry 'headline': unknown contract key"):
        parse_field_map("headline=title")
    with pytest.raises(FieldMapError, match="expected CANONICAL=THEIRS"):
        parse_field_map("taskTitle")


def test_import_gold_writes_canonical_and_quarantines_ambiguous(tmp_path, capsys):
    from data.import_gold import main
    src = tmp_path / "gold.jsonl"
    ok = dict(their_answer("Repair a dripping bathroom tap"), input="Repair a dripping bathroom tap")
    bad = dict(their_answer("Learn to bake sourdough bread"), input="Learn to bake sourdough bread",
               taskTitle="Bake bread")
    src.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "out.jsonl"
    assert main([str(src), "--out", str(out)]) == 1     # one case quarantined
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["gold"]["taskTitle"] == "Repair a dripping bathroom tap"
    assert rec["gold"]["questions"][0]["title"] == "Is the tap a mixer or two separate taps?"
    assert "title" not in rec and "summary" not in rec
    (q,) = [json.loads(x) for x in (tmp_path / "out.quarantine.jsonl").read_text().splitlines()]
    assert q["reason"].startswith(f"{src}:2: ambiguous: keys 'taskTitle' and 'title'")
    assert main([str(src), "--out", str(out), "--field-map", "nonsense"]) == 2
    assert "expected CANONICAL=THEIRS" in capsys.readouterr().err


# ---- 3. where the task sits ----------------------------------------------------------------------
def test_task_rules_and_templates():
    def task(content, system=None, pattern=None):
        prompt = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": content}]
        return find_task(prompt, compile_input_pattern(pattern))

    t = task(INSTRUCTIONS + "Repaint the kitchen cabinets")
    assert (t.text, t.rule) == ("Repaint the kitchen cabinets", "task-prefix")
    assert (task("Repaint the kitchen cabinets").rule) == "whole-turn"
    assert task("Hello.\nPlease help with:\nRepaint the kitchen cabinets").rule == "last-line"
    t = task("Please start.\nUse the one above.",
             system="Plan things.\nUser task: Repaint the kitchen cabinets")
    assert (t.text, t.rule, t.message) == ("Repaint the kitchen cabinets", "task-prefix", 0)
    # A system prompt describing the job ("Your task: ...") never wins over a one-line user turn.
    t = task("Repaint the kitchen cabinets", system="Your task: ask seven questions.")
    assert (t.text, t.rule, t.message) == ("Repaint the kitchen cabinets", "whole-turn", 1)
    t = task("<goal>Repaint the kitchen cabinets</goal> thanks", pattern=r"<goal>(.*?)</goal>")
    assert (t.text, t.rule) == ("Repaint the kitchen cabinets", "input-pattern")
    with pytest.raises(ValueError, match="exactly one group"):
        compile_input_pattern(r"(a)(b)")
    # The template puts the placeholder where the task sat and renders any task back.
    prompt = their_line("Repaint the kitchen cabinets")[:1]
    tpl = PromptTemplate.from_prompt(prompt, find_task(prompt))
    assert tpl.to_json()[0]["content"] == INSTRUCTIONS + "{input}"
    assert tpl.render("Repaint the kitchen  cabinets") == prompt
    # The contract's own prompt read back as a template keeps the contract's hash.
    ours = planner_messages("Repaint the kitchen cabinets")
    assert PromptTemplate.from_prompt(ours, find_task(ours)).sha256 == PROMPT_HASH


def test_leak_guard_sees_the_task_inside_the_instruction_block(theirs, tmp_path):
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(theirs.read_text() + json.dumps(
        their_line("Renew my passport before an overseas wedding",
                   **their_answer("Repair a dripping bathroom tap"))) + "\n")
    rows, _ = load_rows(leaky, "apple")
    data = sft_data_record(str(leaky), None, rows, 0)
    (leak,) = data["ruler_leaks"]
    assert leak.startswith(f"{leaky}:5: 'Renew my passport before an overseas wedding' ~ ruler")
    assert leak.endswith("(task by task-prefix)")
    assert data["inputs"][0] == "Repaint the kitchen cabinets"
    assert data["prompt"]["source"] == "training data"
    assert data["prompt"]["input_rules"] == {"task-prefix": 5}
    # A pattern that finds nothing is an error naming the row.
    with pytest.raises(FormatError, match=rf"{leaky}:1: cannot find the task: input pattern"):
        prompt_record(rows, r"<task>(.*)</task>")


def test_data_sft_format_apple_refuses_a_leak_naming_the_rule(theirs, tmp_path, capsys):
    from data.sft import main
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(theirs.read_text() + json.dumps(
        their_line("Plan a trip to Paris", **their_answer("Repair a dripping bathroom tap"))) + "\n")
    assert main(["--gold", str(leaky), "--format", "apple", "--out", str(tmp_path / "o")]) == 2
    assert f"{leaky}:5 (task by task-prefix): 'Plan a trip to Paris'" in capsys.readouterr().err


def test_dedup_compares_the_tasks_not_the_instruction_blocks(theirs, tmp_path, capsys):
    from data.sft import main
    other = [{"role": "system", "content": "Different instructions entirely."},
             {"role": "user", "content": "Task: repaint the kitchen cabinets!"},
             their_line("Repaint the kitchen cabinets")[1]]
    path = tmp_path / "dup.jsonl"
    path.write_text(theirs.read_text() + json.dumps(other) + "\n")
    assert main(["--gold", str(path), "--format", "apple", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "3 train / 1 validation examples from 5 gold records (1 duplicates removed)" in out
    assert f"removed duplicate {path}:5 (task by task-prefix): 'repaint the kitchen cabinets!' " \
           f"duplicates {path}:1 (task by task-prefix)" in out


# ---- 4. round trips ------------------------------------------------------------------------------
def test_data_sft_format_apple_output_rereads_identically(theirs, tmp_path, capsys):
    from data.sft import load_gold, main
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert main(["--gold", str(theirs), "--format", "apple", "--out", str(out1),
                 "--val-fraction", "0.25"]) == 0
    assert "tasks found by rule: task-prefix 4" in capsys.readouterr().out
    original = {c.id: c for _, c in load_gold([theirs], gold_format="apple")}
    written = [out1 / "apple_train.jsonl", out1 / "apple_val.jsonl"]
    reread = {c.id: c for _, c in load_gold(written, gold_format="apple")}
    assert {k: (c.input, c.gold) for k, c in reread.items()} == \
        {k: (c.input, c.gold) for k, c in original.items()}
    # The written answers are canonical; building again from them gives the same files.
    line = json.loads((out1 / "apple_train.jsonl").read_text().splitlines()[0])
    assert set(json.loads(line[-1]["content"])) == {"taskTitle", "taskDescription", "questions"}
    assert main(["--gold", str(out1 / "apple_train.jsonl"), "--gold", str(out1 / "apple_val.jsonl"),
                 "--format", "apple", "--out", str(out2), "--val-fraction", "0.25"]) == 0
    rows = lambda d: sorted((d / "apple_train.jsonl").read_text().splitlines()
                            + (d / "apple_val.jsonl").read_text().splitlines())
    assert rows(out2) == rows(out1)


def test_train_on_their_file_then_evaluate_and_export_with_its_prompt(standin_dir, theirs,
                                                                     tmp_path, monkeypatch,
                                                                     capsys):
    import eval.pipelines
    from conftest import tiny_sft_config
    from eval.run import main as eval_main, run_eval
    from export.package import export_adapter
    from train.sft import main as sft_main, run_sft

    cfg = tiny_sft_config(standin_dir, tmp_path, tmp_path / "run", train_file=str(theirs),
                          val_file=None, data_format="apple", max_steps=2,
                          per_device_train_batch_size=2, save_strategy="no")
    run_dir = run_sft(cfg)
    run = json.loads((run_dir / "run.json").read_text())
    prompt = run["data"]["prompt"]
    assert prompt["source"] == "training data" and prompt["rows"] == 4
    assert prompt["template"] == [{"role": "user", "content": INSTRUCTIONS + "{input}"}]
    assert run["prompt_hash"] == prompt["sha256"] != PROMPT_HASH
    assert run["data"]["inputs"] == list(TASKS)

    # eval.run picks the prompt up from the adapter's run: every ruler task is asked with it.
    seen = []
    real = eval.pipelines.render_messages
    monkeypatch.setattr(eval.pipelines, "render_messages",
                        lambda tok, msgs: seen.append(msgs) or real(tok, msgs))
    common = dict(base=str(standin_dir), db=tmp_path / "db.sqlite", max_new_tokens=8,
                  progress=False, quiet=True)
    s = run_eval(adapter=run_dir, label="theirs", note="own prompt", out_dir=tmp_path / "e1",
                 **common)
    assert len(seen) == 30 and seen[0] == [
        {"role": "user", "content": INSTRUCTIONS + "Plan a trip to Paris"}]
    config = json.loads((tmp_path / "e1" / "experiment.json").read_text())
    assert s["status"] != "invalid" and config["config_hash"]
    import sqlite3
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        (cfg_json, phash), = db.execute("select config_json, prompt_hash from experiments")
    assert phash == prompt["sha256"] and json.loads(cfg_json)["prompt"]["source"] == \
        "training data"
    # The base scored with the same instructions (--prompt-from), and a pipeline that rewrites
    # the contract's prompt refused.
    seen.clear()
    run_eval(prompt_from=run_dir, label="base-theirs", note="base, their prompt",
             out_dir=tmp_path / "e2", **common)
    assert seen[0][0]["content"].startswith(INSTRUCTIONS)
    assert eval_main(["--base", str(standin_dir), "--adapter", str(run_dir), "--pipeline",
                      "overgen-prune", "--label", "x", "--note", "x", "--db",
                      str(tmp_path / "db.sqlite"), "--no-progress"]) == 2

    # Bad keys are exit 2 with the key named (a field map before anything loads).
    for key, value, why in (("field_map", "bogus", "key 'field_map': field map entry 'bogus'"),
                            ("input_pattern", "(a)(b)", "needs exactly one group")):
        assert sft_main(["--config", "configs/tiny-sft.yaml", "--model_name_or_path",
                         str(standin_dir), "--train_file", str(theirs), "--val_file", "",
                         "--data_format", "apple", "--output_dir", str(tmp_path / "bad"),
                         f"--{key}", value]) == 2
        assert why in capsys.readouterr().err

    # Export: provenance says so, and the prompt goes beside the package.
    res = export_adapter(run_dir, "theirs", tmp_path / "dist", allow_stand_in=True, progress=False)
    assert res.metadata["creatorDefined"]["promptHash"] == prompt["sha256"]
    assert res.metadata["creatorDefined"]["promptSource"] == "training data"
    assert json.loads(res.prompt_file.read_text())["template"] == prompt["template"]
