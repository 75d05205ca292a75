import json

import pytest
import torch

from longrecall.checkpoint import load_weights, read_manifest
from longrecall.config import TrainConfig
from longrecall.models import LanguageModel
from longrecall.train import TrainingDiverged, make_model, train

TINY = dict(vocab_size=32, seq_len=16, num_kv_pairs=2)


def tiny(**kwargs) -> TrainConfig:
    base = dict(d_model=16, steps=6, batch_size=8, eval_every=3, eval_examples=16, warmup_steps=2, task_kwargs=TINY)
    return TrainConfig(**{**base, **kwargs})


def losses(metrics):
    return [h["loss"] for h in metrics["history"]]


def test_same_seed_same_losses_and_different_seed_differs():
    a, b = train(tiny(), progress=False), train(tiny(), progress=False)
    c = train(tiny(seed=1), progress=False)
    assert losses(a) == losses(b)
    assert losses(a) != losses(c)


def test_checkpoint_files_and_round_trip(tmp_path):
    straight = train(tiny(out_dir=str(tmp_path / "a")), progress=False)
    manifest = read_manifest(tmp_path / "a")
    assert manifest["step"] == 6 and (tmp_path / "a" / manifest["weights"]).exists()
    assert not list((tmp_path / "a").glob(".*tmp"))  # no temporary files left behind

    model = make_model(tiny(), TINY["vocab_size"])
    load_weights(tmp_path / "a", model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["final_eval"]["accuracy"] == straight["final_eval"]["accuracy"]


def test_resume_continues_exactly(tmp_path, monkeypatch):
    reference = train(tiny(), progress=False)
    out = str(tmp_path / "run")
    import longrecall.train as train_module

    calls = {"n": 0}

    class Stop(Exception):
        pass

    original = train_module.make_task

    def make_task_that_dies(config, **overrides):
        task = original(config, **overrides)
        build = task.build

        def dying_build(n, seed):
            calls["n"] += 1
            if calls["n"] == 5 and n == config.batch_size:  # dies in step 4, after the step-3 checkpoint
                raise Stop
            return build(n, seed)

        object.__setattr__(task, "build", dying_build)
        return task

    monkeypatch.setattr(train_module, "make_task", make_task_that_dies)
    with pytest.raises(Stop):
        train(tiny(out_dir=out), progress=False)
    monkeypatch.setattr(train_module, "make_task", original)
    assert read_manifest(out)["step"] == 3
    resumed = train(tiny(out_dir=out), progress=False)
    assert losses(resumed) == losses(reference)


def test_resume_refuses_a_different_config(tmp_path):
    train(tiny(out_dir=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match="different config"):
        train(tiny(out_dir=str(tmp_path), lr=1e-2), progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = LanguageModel.loss

    def poisoned(self, inputs, targets):
        calls["n"] += 1
        loss, logits, labels = real_loss(self, inputs, targets)
        return (loss * float("nan") if calls["n"] >= 5 else loss), logits, labels

    monkeypatch.setattr(LanguageModel, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 4.*checkpoint \(step 3\)"):
        train(tiny(out_dir=str(tmp_path)), progress=False)
    assert read_manifest(tmp_path)["step"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_attention_learns_tiny_mqar():
    """A clear loss drop and accuracy well above chance (1/16 values), not a brittle threshold."""
    config = tiny(steps=300, batch_size=32, eval_every=300, eval_examples=256, lr=3e-3, warmup_steps=20,
                  task_kwargs=dict(vocab_size=32, seq_len=16, num_kv_pairs=2))
    metrics = train(config, progress=False)
    first, last = metrics["history"][0]["loss"], metrics["history"][-1]["loss"]
    assert last < 0.6 * first
    assert metrics["final_eval"]["accuracy"] > 3 / 16


def test_ssm_dynamics_and_norms_are_not_weight_decayed():
    from longrecall.train import param_groups

    model = LanguageModel(20, 16, ["mamba", "s4d"])
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    for expected in ("blocks.0.mixer.A_log", "blocks.0.mixer.D", "blocks.1.mixer.log_A_real", "blocks.1.mixer.log_dt",
                     "blocks.0.mixer_norm.weight"):
        assert expected in no_decay_names
    assert "blocks.0.mixer.in_proj.weight" in {names[id(p)] for p in decay["params"]}


# ----------------------------------------------------------------------------- the training recipe


def test_loss_on_all_reads_every_next_token_and_keeps_the_answers():
    from longrecall.tasks.base import IGNORE_INDEX
    from longrecall.train import make_task, training_targets

    batch = make_task(tiny()).build(4, 0)
    assert torch.equal(training_targets(batch, "answers"), batch.targets)
    every = training_targets(batch, "all")
    assert (every[:, -1] == IGNORE_INDEX).all() or (batch.targets[:, -1] != IGNORE_INDEX).all()
    scored = batch.targets != IGNORE_INDEX
    assert torch.equal(every[scored], batch.targets[scored])  # the answers, where the task scores one
    assert torch.equal(every[:, :-1][~scored[:, :-1]], batch.inputs[:, 1:][~scored[:, :-1]])  # next tokens elsewhere


def test_loss_on_all_trains_and_evaluates_on_answers_only():
    answers = train(tiny(), progress=False)
    every = train(tiny(loss_on="all"), progress=False)
    assert losses(answers) != losses(every)
    # evaluation scores the same answer positions in both (same held-out set, same count)
    assert every["final_eval"]["scored"] == answers["final_eval"]["scored"]
    assert all(0.0 <= h["accuracy"] <= 1.0 for h in every["history"])


def test_schedule_decays_over_max_steps_and_a_stopped_run_is_a_prefix():
    from longrecall.train import lr_lambda

    short, long_ = tiny(steps=20, warmup_steps=2), tiny(steps=20, max_steps=80, warmup_steps=2)
    assert lr_lambda(short)(19) == pytest.approx(short.min_lr_ratio, abs=0.02)
    assert lr_lambda(long_)(19) > 0.8  # the horizon is max_steps: barely decayed at `steps`
    assert lr_lambda(long_)(79) == pytest.approx(long_.min_lr_ratio, abs=0.01)


def _stub_status(monkeypatch, verdicts):
    """Make convergence.status answer from ``verdicts`` (a list consumed per call), and let every plateau
    stop (these tiny models sit at chance, where rule version 3 would train on to max_steps)."""
    import longrecall.convergence as convergence

    calls = []

    def fake(history, evals, target, **kwargs):
        calls.append(history[-1]["step"])
        return verdicts.pop(0) if verdicts else "plateau"

    monkeypatch.setattr(convergence, "status", fake)
    monkeypatch.setattr(convergence, "stops_on_plateau", lambda evals, chance: True)
    return calls


def test_a_plateau_at_chance_trains_on_to_max_steps(monkeypatch):
    """Rule version 3: a plateau whose accuracy never left chance is not a reason to stop early; the
    same plateau above chance is."""
    import longrecall.convergence as convergence

    monkeypatch.setattr(convergence, "status", lambda *a, **k: "plateau")
    monkeypatch.setattr(convergence, "NEAR_CHANCE_MARGIN", 1.0)  # 5x chance decides (the margin: test_convergence)
    at_chance = train(tiny(steps=6, max_steps=12, eval_every=3), progress=False)
    chance = at_chance["final_eval"]["chance"]
    assert max(e["accuracy"] for e in at_chance["evals"]) < convergence.NEAR_CHANCE_MULTIPLE * chance
    assert at_chance["steps"] == 12 and at_chance["stop_reason"] == "max_steps"
    assert at_chance["convergence_detail"]["near_chance"] is True
    monkeypatch.setattr(convergence, "NEAR_CHANCE_MULTIPLE", 0.0)  # every accuracy counts as above chance
    above = train(tiny(steps=6, max_steps=12, eval_every=3), progress=False)
    assert above["steps"] == 6 and above["stop_reason"] == "plateau"


def test_a_learning_run_extends_one_eval_interval_at_a_time(monkeypatch):
    calls = _stub_status(monkeypatch, ["learning", "learning", "plateau"])
    metrics = train(tiny(steps=6, max_steps=30, eval_every=3), progress=False)
    assert calls == [6, 9, 12]  # asked at steps, then after each extension interval
    assert metrics["steps"] == 12 and metrics["stop_reason"] == "plateau"
    assert [e["step"] for e in metrics["evals"]] == [3, 6, 9, 12]


def test_an_extension_stops_at_max_steps(monkeypatch):
    _stub_status(monkeypatch, ["learning"] * 100)
    metrics = train(tiny(steps=6, max_steps=10, eval_every=3), progress=False)
    assert metrics["steps"] == 10 and metrics["stop_reason"] == "max_steps"


def test_without_max_steps_a_run_stops_at_steps_and_reports_its_status():
    metrics = train(tiny(), progress=False)
    assert metrics["steps"] == 6 and metrics["stop_reason"] == "budget"
    assert metrics["convergence"] in ("learning", "plateau", "converged")
    assert metrics["convergence_detail"]["status"] == metrics["convergence"]


def test_an_extended_run_killed_mid_extension_resumes_exactly(tmp_path, monkeypatch):
    import longrecall.train as train_module

    config = dict(steps=6, max_steps=15, eval_every=3)
    _stub_status(monkeypatch, ["learning", "learning", "plateau"])
    reference = train(tiny(**config), progress=False)
    assert reference["steps"] == 12

    out = str(tmp_path / "run")
    original = train_module.make_task
    calls = {"n": 0}

    class Stop(Exception):
        pass

    def make_task_that_dies(cfg, **overrides):
        task = original(cfg, **overrides)
        build = task.build

        def dying_build(n, seed):
            if n == cfg.batch_size:
                calls["n"] += 1
                if calls["n"] == 11:  # in step 11, after the step-9 checkpoint (inside the extension)
                    raise Stop
            return build(n, seed)

        object.__setattr__(task, "build", dying_build)
        return task

    _stub_status(monkeypatch, ["learning", "learning", "plateau"])
    monkeypatch.setattr(train_module, "make_task", make_task_that_dies)
    with pytest.raises(Stop):
        train(tiny(out_dir=out, **config), progress=False)
    monkeypatch.setattr(train_module, "make_task", original)
    assert read_manifest(out)["step"] == 9
    _stub_status(monkeypatch, ["plateau"])  # after the resume, only the step-12 decision is left
    resumed = train(tiny(out_dir=out, **config), progress=False)
    assert losses(resumed) == losses(reference)
    assert resumed["steps"] == 12 and resumed["stop_reason"] == "plateau"


def test_a_run_killed_after_deciding_to_stop_does_not_train_on(tmp_path, monkeypatch):
    """The stop decision is saved with the checkpoint: a resume finds it and trains nothing more."""
    import longrecall.train as train_module

    out = tmp_path / "run"
    real_write, real_stop = train_module._write_metrics, train_module.stop_reason

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # killed between the final checkpoint and the metrics

    monkeypatch.setattr(train_module, "stop_reason", lambda config, step, *a: "early_stop" if step == 3 else None)
    monkeypatch.setattr(train_module, "_write_metrics", die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(out_dir=str(out)), progress=False)
    assert read_manifest(out)["stopped"] == "early_stop" and read_manifest(out)["step"] == 3
    monkeypatch.setattr(train_module, "_write_metrics", real_write)
    monkeypatch.setattr(train_module, "stop_reason", real_stop)
    resumed = train(tiny(out_dir=str(out)), progress=False)
    assert resumed["steps"] == 3 and resumed["status"] == "early_stopped"


def test_a_plateau_stop_the_current_rule_calls_learning_continues_exactly(tmp_path, monkeypatch):
    """A run stopped on a plateau under an earlier convergence rule resumes and trains on when the
    current rule finds it still learning, ending with the losses of a run trained under that rule."""
    config = dict(steps=6, max_steps=15, eval_every=3)
    _stub_status(monkeypatch, ["learning", "plateau"])
    reference = train(tiny(**config), progress=False)
    assert reference["steps"] == 9

    out = str(tmp_path / "run")
    _stub_status(monkeypatch, ["plateau"])  # the earlier rule: stop at `steps`
    stopped = train(tiny(out_dir=out, **config), progress=False)
    assert stopped["steps"] == 6 and read_manifest(out)["stopped"] == "plateau"
    calls = _stub_status(monkeypatch, ["learning", "plateau"])  # the current rule: learning at 6
    messages = []
    resumed = train(tiny(out_dir=out, **config), progress=False, log=messages.append)
    assert calls == [6, 9] and any("would not stop this run" in m for m in messages)
    assert losses(resumed) == losses(reference) and resumed["stop_reason"] == "plateau"
    # a plateau the current rule also calls a plateau trains nothing more
    _stub_status(monkeypatch, ["plateau"])
    again = train(tiny(out_dir=out, **config), progress=False)
    assert again["steps"] == 9 and losses(again) == losses(reference)


def test_compile_option_trains_or_falls_back_to_the_same_losses(monkeypatch):
    """``compile=True`` with torch.compile failing falls back to eager: the same losses."""
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    messages = []
    eager = train(tiny(), progress=False)
    fallback = train(tiny(compile=True), progress=False, log=messages.append)
    assert losses(fallback) == losses(eager)
    assert any("training eagerly" in m for m in messages)


def test_every_run_of_a_process_is_compiled(monkeypatch):
    """An arena worker trains run after run in one process: each run's model must be compiled, not only
    the first few (dynamo's recompile limit, here 1, would leave later ones eager without the reset)."""
    import torch._dynamo

    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=counting_backend, dynamic=False))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    seen = []
    for width in (16, 24, 32):  # three models: the loss function's guards fail for each new one
        before = len(graphs)
        train(tiny(compile=True, d_model=width, steps=2), progress=False)
        seen.append(len(graphs) - before)
    assert all(n > 0 for n in seen), seen


def test_final_metrics_carry_the_tasks_chance_accuracy():
    metrics = train(tiny(), progress=False)
    assert metrics["final_eval"]["chance"] == 1 / 16  # vocabulary 32: 16 values
    assert "chance" not in metrics["evals"][-1]  # the history is left as evaluated


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tmp_path):
    """Resuming reads the optimizer file with weights_only=True: a pickled object (which could run
    code when unpickled) is refused with an error naming the file, and nothing is executed."""
    import pickle

    from longrecall.checkpoint import UnsafeCheckpointError

    out = tmp_path / "run"
    train(tiny(out_dir=str(out), steps=3), progress=False)
    optimizer_file = out / read_manifest(out)["optimizer"]
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    state = torch.load(optimizer_file, weights_only=True)
    state["extra"] = Payload()
    optimizer_file.write_bytes(pickle.dumps(state, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=optimizer_file.name):
        train(tiny(out_dir=str(out), steps=3), progress=False)
    assert not marker.exists()
