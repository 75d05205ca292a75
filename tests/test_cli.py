import json
import subprocess
import sys

import pytest

TINY_TRAIN = ["--steps=4", "--batch_size=4", "--eval_every=2", "--eval_examples=8", "--d_model=16",
              "--task_kwargs.vocab_size=32", "--task_kwargs.seq_len=16", "--task_kwargs.num_kv_pairs=2"]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "longrecall", *args], capture_output=True, text=True, timeout=timeout)


def test_ls_lists_every_kind_and_json():
    out = cli("ls")
    assert out.returncode == 0 and "attention" in out.stdout and "mqar" in out.stdout
    rows = json.loads(cli("ls", "mixers", "--json").stdout)
    growth = {row["name"]: row["state_growth"] for row in rows}
    assert growth["attention"] == "linear" and growth["sliding_window"] == "bounded" and growth["s4d"] == "constant"


def test_ls_state_bytes_measures_the_state_at_a_length():
    out = cli("ls", "mixers", "--state-bytes", "--widths", "16,32", "--length", "40", "--mixers", "attention,s4d,gla",
              "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)["rows"]}
    # attention's cache after 40 tokens: keys and values (2 * 40 * D float32) + int32 positions per head
    # + one int64 length; the constant states do not depend on the length
    assert rows["attention"]["D=16"] == 2 * 40 * 16 * 4 + 40 * 2 * 4 + 8
    assert rows["s4d"]["D=32"] == 2 * rows["s4d"]["D=16"] and rows["gla"]["state_growth"] == "constant"
    table = cli("ls", "mixers", "--state-bytes", "--widths", "16", "--length", "8", "--mixers", "gla")
    assert "| `gla` | constant |" in table.stdout
    bad = cli("ls", "mixers", "--state-bytes", "--widths", "16,x")
    assert bad.returncode != 0 and "--widths" in bad.stderr + bad.stdout


def test_check_passes_and_unknown_mixer_is_named():
    out = cli("check", "sliding_window", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(r["passed"] for r in json.loads(out.stdout))
    bad = cli("check", "atention")
    assert bad.returncode == 2 and "Did you mean: attention" in bad.stdout


def test_train_prints_accuracy_and_writes_metrics(tmp_path):
    out = cli("train", "--mixer", "s4d", *TINY_TRAIN, f"--out_dir={tmp_path}", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "held-out accuracy" in out.stdout and "by distance" in out.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["config"]["layers"] == ["s4d", "s4d"]


@pytest.mark.parametrize(
    "args,message",
    [(["--stpes=3"], "Did you mean: steps"), (["--mixer", "sliding_windw"], "Did you mean: sliding_window"),
     (["--steps=-1"], "steps")],
)
def test_train_bad_config_exits_2_with_message(args, message):
    out = cli("train", *args)
    assert out.returncode == 2 and message in out.stderr


def test_help_has_worked_examples():
    for command in ("ls", "check", "train", "bench"):
        out = cli(command, "--help")
        assert out.returncode == 0 and "examples:" in out.stdout


def test_bench_quick_writes_json_and_markdown(tmp_path):
    out = cli("bench", "--quick", "--mixers", "s4d", "--modes", "forward,step_loop,step_latency",
              "--threads", "1", "--out", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    modes = {r["mode"] for r in report["results"]}
    assert modes == {"forward", "step_loop", "step_latency"}
    assert all("error" not in r and r.get("peak_rss_mb", 0) >= 0 for r in report["results"])
    assert "| s4d |" in (tmp_path / "bench.md").read_text()


def test_python_m_and_console_script_agree():
    import shutil

    script = shutil.which("longrecall") or str((__import__("pathlib").Path(sys.executable).parent / "longrecall"))
    out = subprocess.run([script, "ls", "tasks", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "mqar" in {row["name"] for row in json.loads(out.stdout)}


def test_report_without_matplotlib_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """`longrecall report` with matplotlib missing: one line naming the extra, exit code 2, no traceback."""
    from longrecall.arena.store import Store
    from longrecall.cli import main

    with Store.open(tmp_path / "s.db"):
        pass
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    code = main(["report", str(tmp_path / "s.db"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'longrecall[plot]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
