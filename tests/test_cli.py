"""Bad input to the trainers gives a clear message, never a silent change or a raw traceback: data
files, flags, the output folder (one run at a time, never mixed) and resuming from a damaged log
or checkpoint."""
import dataclasses
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import grpo
import rrpo
import run
import srpo

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Data files
# ---------------------------------------------------------------------------------------------


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rows_without_a_question_or_answer_are_skipped_and_counted(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [
        {"question": "1+1?", "answer": "2"},
        {"question": "2+2?", "answer": None},  # would train with the gold answer "None"
        {"question": None, "answer": "4"},  # would train on "Problem: None"
        {"question": "3+3?"},
        {"question": "4+4?", "answer": "#### "},  # no answer can be read from it
        {"question": " ", "answer": "5"},
    ])
    with pytest.warns(UserWarning, match=r"skipped 5 of 6 rows .* \(rows 2, 3, 4, 5, 6\)"):
        examples = run.load_examples(str(path), True, grpo.Config())
    assert examples == [{"question": "1+1?", "answer": "2"}]


def test_a_dataset_without_a_usable_row_is_refused(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"question": "2+2?", "answer": None}, {"question": None, "answer": "4"}])
    with pytest.raises(SystemExit, match=r"None of the 2 rows .* has both a question \('question'\) and a "
                                         r"readable answer \('answer'\)"):
        run.load_examples(str(path), True, grpo.Config())


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", r"'.*empty.jsonl' holds no rows"),
    ("blank.json", b"\n\n", r"'.*blank.json' holds no rows"),
    ("torn.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "ans\n',
     r"'.*torn.jsonl' line 2 is not valid JSON .*fix or delete that line"),
    ("latin1.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": "caf\xe9?", "answer": "2"}\n',
     r"'.*latin1.jsonl' line 2 is not UTF-8 text: save the file as UTF-8"),
    ("list.json", b'[{"question": "1+1?", "answer": "2"},\n {"question": "2+2?" "answer": "4"}]',
     r"'.*list.json' line 2 is not valid JSON"),
    ("numbers.jsonl", b'{"question": "1+1?", "answer": "2"}\n3\n', r"'.*numbers.jsonl' line 2 is not a JSON object"),
    ("zero.parquet", b"", r"Cannot read '.*zero.parquet' as a parquet file .*write it again"),
])
def test_unreadable_data_files_name_the_file_the_line_and_the_fix(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        run.load_examples(str(tmp_path / name), True, grpo.Config())


def test_a_parquet_file_without_rows_is_refused_and_one_with_rows_is_read(tmp_path):
    import pyarrow
    import pyarrow.parquet

    no_strings = pyarrow.array([], pyarrow.string())
    empty = pyarrow.table({"question": no_strings, "answer": no_strings})
    pyarrow.parquet.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(SystemExit, match=r"'.*empty.parquet' holds no rows"):
        run.load_examples(str(tmp_path / "empty.parquet"), True, grpo.Config())
    pyarrow.parquet.write_table(pyarrow.table({"problem": ["1+1?"], "answer": [2.0]}), tmp_path / "d.parquet")
    assert run.load_examples(str(tmp_path / "d.parquet"), True, grpo.Config()) == [{"question": "1+1?", "answer": "2"}]


def test_a_json_list_and_a_byte_order_mark_are_read(tmp_path):
    (tmp_path / "d.json").write_bytes(b'\xef\xbb\xbf[{"question": "1+1?", "answer": "2"}, {"question": "2+2?", '
                                      b'"answer": 4}]')
    assert run.load_examples(str(tmp_path / "d.json"), True, grpo.Config()) == [
        {"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}]


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


def refused(config_class, argv, capsys) -> str:
    """parse_config's error message for argv; asserts argparse's exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        run.parse_config(config_class, argv=argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("config_class, flag, value, rule", [
    (grpo.Config, "--steps", "0", "at least 1"),
    (grpo.Config, "--group-size", "1", "at least 2"),
    (grpo.Config, "--prompts-per-step", "0", "at least 1"),
    (grpo.Config, "--mini-batches", "0", "at least 1"),
    (grpo.Config, "--micro-batch", "0", "at least 1"),
    (grpo.Config, "--updates-per-batch", "0", "at least 1"),
    (grpo.Config, "--temperature", "0", "above 0"),
    (grpo.Config, "--top-p", "1.5", "above 0 and at most 1"),
    (grpo.Config, "--max-new-tokens", "0", "at least 1"),
    (grpo.Config, "--max-thought-tokens", "0", "at least 1"),
    (grpo.Config, "--max-thoughts", "0", "at least 1"),
    (grpo.Config, "--lr", "-1e-6", "at least 0"),
    (grpo.Config, "--lr", "nan", "a finite number at least 0"),
    (grpo.Config, "--weight-decay", "-0.1", "at least 0"),
    (grpo.Config, "--warmup-steps", "-1", "at least 0"),
    (grpo.Config, "--beta", "-0.1", "at least 0"),
    (grpo.Config, "--clip-eps", "0", "above 0"),
    (grpo.Config, "--eval-every", "-1", "at least 0"),
    (grpo.Config, "--eval-size", "-1", "at least 0"),
    (grpo.Config, "--save-every", "-5", "at least 0"),
    (rrpo.ResetConfig, "--oracle-noise", "1.5", "at least 0 and at most 1"),
    (srpo.SRPOConfig, "--loc-temperature", "0", "above 0"),
    (srpo.SRPOConfig, "--loc-max-new-tokens", "0", "at least 1"),
    (evaluate.Config, "--top-p", "0", "above 0 and at most 1"),
    (evaluate.Config, "--temperature", "0", "above 0"),
    (evaluate.Config, "--limit", "0", "at least 1"),
    (evaluate.Config, "--samples", "-1", "at least 0"),
    (evaluate.Config, "--batch-size", "0", "at least 1"),
    (evaluate.Config, "--max-new-tokens", "0", "at least 1"),
    (evaluate.Config, "--max-thoughts", "0", "at least 1"),
])
def test_a_flag_out_of_range_is_refused_with_its_rule(config_class, flag, value, rule, capsys):
    message = refused(config_class, [f"{flag}={value}"], capsys)  # = lets argparse read "-1e-6" as a value
    assert re.search(rf"error: {re.escape(flag)} [-\w.]+: must be {re.escape(rule)}$", message.strip()), message


def test_every_bad_flag_gets_its_own_line(capsys):
    message = refused(grpo.Config, ["--group-size", "1", "--temperature", "0", "--micro-batch", "0"], capsys)
    assert "--group-size 1: must be at least 2\n" in message
    assert "--temperature 0.0: must be above 0\n" in message
    assert "--micro-batch 0: must be at least 1" in message


def test_every_numeric_option_declares_its_range():
    """So that a new option cannot skip the checks: only the seed takes any integer."""
    for config_class in (grpo.Config, rrpo.ResetConfig, srpo.SRPOConfig):
        for f in dataclasses.fields(config_class):
            if f.type in (int, float, int | None, float | None) and f.name != "seed":
                assert any(f.metadata.get(k) is not None for k in ("at_least", "above", "at_most")), f.name


def test_reset_budgets_are_refused_as_flags(capsys):
    assert "must be even and --max-fresh >= --group-size (got 7 and 12)" in refused(
        rrpo.ResetConfig, ["--group-size", "7"], capsys)
    assert "(got 8 and 6)" in refused(srpo.SRPOConfig, ["--group-size", "8", "--max-fresh", "6"], capsys)


def test_zero_is_a_value_not_unset():
    """`x or default` read --lr 0 as unset (1e-6) and --max-new-tokens 0 as 96."""
    cfg = run.parse_config(grpo.Config, argv=["--lr", "0", "--eval-size", "0", "--save-every", "0"])
    assert (cfg.lr, cfg.eval_size, cfg.save_every) == (0.0, 0, 0)
    assert run.parse_config(grpo.Config, argv=[]).lr == 1e-4  # unset: the baby model's default


def test_out_naming_a_file_and_resume_with_overwrite_are_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert "is a file" in refused(grpo.Config, ["--out", str(tmp_path / "notes.txt")], capsys)
    assert "contradict" in refused(grpo.Config, ["--resume", "--overwrite"], capsys)


def test_bad_flags_exit_2_before_the_model_loads():
    """A model that does not exist would fail the run at load time: the flags fail first."""
    result = subprocess.run([sys.executable, "grpo.py", "--model", "no-such-model-7B", "--group-size", "1",
                             "--temperature", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--group-size 1: must be at least 2" in result.stderr
    assert "--temperature 0.0: must be above 0" in result.stderr
    assert "Traceback" not in result.stderr and "no-such-model" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The output folder: one run at a time, never mixed
# ---------------------------------------------------------------------------------------------


def test_a_used_out_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "rollouts").mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"is not empty \(checkpoint-2, metrics.jsonl, notes.txt, rollouts\): "
                                         r"pass --resume .* --overwrite"):
        run.claim_out(out, resume=False, overwrite=False)
    run.claim_out(out, resume=True, overwrite=False).close()
    assert (out / "metrics.jsonl").exists()
    run.claim_out(out, resume=False, overwrite=True).close()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]  # only the run's files are deleted


def test_two_runs_on_one_out_are_refused_while_the_first_holds_it(tmp_path):
    first = run.claim_out(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(SystemExit, match="in use by another run"):
        run.claim_out(tmp_path / "run", resume=True, overwrite=False)
    first.close()
    run.claim_out(tmp_path / "run", resume=False, overwrite=False).close()  # only the lock file is there


def test_the_lock_is_released_when_its_run_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, run\n"
                               f"lock = run.claim_out({str(tmp_path / 'run')!r}, False, False)\n"
                               "print('locked', flush=True)\ntime.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match="in use by another run"):
            run.claim_out(tmp_path / "run", resume=True, overwrite=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    run.claim_out(tmp_path / "run", resume=True, overwrite=False).close()


def test_a_new_run_into_a_used_out_stops_before_loading_anything(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0, "eval_acc": 0.5}\n')
    cfg = run.parse_config(grpo.Config, argv=["--model", "no-such-model-7B", "--out", str(out)])
    with pytest.raises(SystemExit, match="is not empty"):
        grpo.train(cfg)
    assert (out / "metrics.jsonl").read_text() == '{"step": 0, "eval_acc": 0.5}\n'


def fake_checkpoint(out: Path, cfg, step=1) -> Path:
    """A checkpoint folder as save_checkpoint writes it, with one small weights file."""
    from safetensors.torch import save_file

    checkpoint = out / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    save_file({"weight": torch.arange(1000.0)}, checkpoint / "model.safetensors")
    torch.save({"optimizer": {}, "step": step, "samples_seen": 0, "config": dataclasses.asdict(cfg)},
               checkpoint / "trainer_state.pt")
    return checkpoint


def test_resume_refuses_another_seed_model_dataset_or_method(tmp_path):
    saved = grpo.Config(out=str(tmp_path), seed=0, dataset="gsm8k")
    fake_checkpoint(tmp_path, saved)
    assert run.load_resume_state(grpo.Config(out=str(tmp_path), seed=0, dataset="gsm8k"))[1]["step"] == 1
    for changed, message in [(dict(seed=1), "--seed 1 here, 0 in the checkpoint"),
                             (dict(model="Qwen2.5-1.5B"), "--model Qwen2.5-1.5B here, toy in the checkpoint"),
                             (dict(dataset="math500"), "--dataset math500 here, gsm8k in the checkpoint")]:
        with pytest.raises(SystemExit, match=f"differs from the one in .*{message}"):
            run.load_resume_state(grpo.Config(out=str(tmp_path), **{"seed": 0, "dataset": "gsm8k", **changed}))
    with pytest.raises(SystemExit, match=r"--reset random here, none \(GRPO\) in the checkpoint"):
        run.load_resume_state(rrpo.ResetConfig(out=str(tmp_path), seed=0, dataset="gsm8k"))


def test_resume_from_damaged_weights_names_the_checkpoint(tmp_path):
    cfg = grpo.Config(out=str(tmp_path))
    weights = fake_checkpoint(tmp_path, cfg) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])  # cut short, as by a full disk
    with pytest.raises(SystemExit, match=r"'.*checkpoint-1' is not a readable checkpoint .*Delete it to resume "
                                         "from the one before"):
        run.load_resume_state(cfg)
    weights.unlink()
    with pytest.raises(SystemExit, match="no .safetensors weights"):
        run.load_resume_state(cfg)


# ---------------------------------------------------------------------------------------------
# The metrics log at resume
# ---------------------------------------------------------------------------------------------


def write_log(out: Path, steps, torn="") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward_mean": s / 10}) + "\n" for s in steps) + torn)
    return path


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path):
    path = write_log(tmp_path, range(5), torn='{"step": 5, "reward_me')
    with pytest.warns(UserWarning, match="dropped its last line"):
        log = run.MetricsLog(tmp_path, rank=0, first_step=4)
    log({"step": 4})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_a_damaged_line_inside_the_log_is_named(tmp_path):
    path = write_log(tmp_path, range(3))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(SystemExit, match=r"metrics.jsonl' line 2 is damaged"):
        run.MetricsLog(tmp_path, rank=0, first_step=2)


def test_a_kill_while_the_log_is_rewritten_loses_no_step(tmp_path, monkeypatch):
    path = write_log(tmp_path, range(7))
    before = path.read_text()

    def killed_halfway(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:len(text) // 2])
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        run.MetricsLog(tmp_path, rank=0, first_step=4)
    monkeypatch.undo()
    assert path.read_text() == before
    run.MetricsLog(tmp_path, rank=0, first_step=4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# End to end, tiny model
# ---------------------------------------------------------------------------------------------


def test_save_every_0_keeps_the_final_checkpoint_and_eval_size_0_evaluates_nothing(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    data = write_rows(tmp_path / "d.jsonl", [{"question": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(6)])
    out = tmp_path / "run"
    monkeypatch.setattr(grpo, "evaluate", lambda *args, **kwargs: pytest.fail("evaluated with --eval-size 0"))
    cfg = run.parse_config(grpo.Config, argv=[
        "--model", str(tiny_model_dir), "--dataset", str(data), "--out", str(out), "--steps", "2",
        "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--save-every", "0",
        "--eval-size", "0", "--temperature", "1.0"])
    grpo.train(cfg)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[0]["eval_acc"] is None and all("eval_acc" not in r for r in records[1:])
