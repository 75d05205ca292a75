"""``longrecall kv-eval`` on a locally saved Hugging Face model with an offline character tokenizer."""

import random
import string

import pytest
import torch

pytest.importorskip("transformers", reason="kv-eval loads a Hugging Face model (the `hf` extra)")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from longrecall.adapters.hf import kv_policy  # noqa: E402
from longrecall.cli import main  # noqa: E402
from longrecall.kv_eval import KVEvalSpec, _answer, kv_eval  # noqa: E402
from longrecall.registry import POLICIES  # noqa: E402
from longrecall.text_tasks import TEXT_TASKS, render  # noqa: E402
from longrecall.validation import ArgumentError  # noqa: E402


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Printable ASCII, one token per character, built without any download."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2, **{c: i + 3 for i, c in enumerate(string.printable[:95])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=98, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=600)
    LlamaForCausalLM(config).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return str(path)


def test_renderings_fit_their_length_and_hold_their_answers():
    tokenizer = char_tokenizer()
    for task in TEXT_TASKS:
        example = render(task, 500, tokenizer, random.Random(1), depth=0.25)
        assert 450 < example.prompt_tokens <= 500
        for question in example.questions:
            assert all(answer in example.context for answer in question.answers)
    with pytest.raises(ArgumentError, match="length"):
        render("niah_multivalue", 50, tokenizer, random.Random(1))
    with pytest.raises(ArgumentError, match="task"):
        render("summarise", 500, tokenizer, random.Random(1))


def test_full_policy_answers_exactly_as_the_model_under_every_protocol(saved):
    spec = KVEvalSpec(model=saved, max_new_tokens=6, decode_tokens=3)
    from longrecall.kv_eval import _load

    model, tokenizer = _load(spec)
    example = render("niah_multikey", 480, tokenizer, random.Random(0))
    with torch.no_grad():
        texts = {p: _answer(model, tokenizer, DynamicCache, example, p, spec)[0] for p in ("agnostic", "aware")}
        assert texts["aware"] == texts["agnostic"]  # the full cache: reading the question with the prompt is the same
        for protocol in ("agnostic", "aware", "reuse", "decode"):
            plain, plain_bytes = _answer(model, tokenizer, DynamicCache, example, protocol, spec)
            with kv_policy(model, POLICIES.get("full")()) as factory:
                managed, managed_bytes = _answer(model, tokenizer, factory, example, protocol, spec)
            assert [text for text, _ in managed] == [text for text, _ in plain]
            assert len(plain) == (4 if protocol == "reuse" else 1)  # reuse asks every key
            with kv_policy(model, POLICIES.get("window")(budget=16)) as factory:
                _, small = _answer(model, tokenizer, factory, example, protocol, spec)
            assert small < managed_bytes


def test_report_rows_and_skipped_prompts(saved, tmp_path):
    spec = KVEvalSpec(model=saved, tasks=["passkey"], lengths=[300, 1000], policies=["window:0.25"],
                      protocols=["agnostic", "reuse"], examples=2, max_new_tokens=6)
    report = kv_eval(spec)
    rows = {(r["length"], r["policy"], r["protocol"]): r for r in report["rows"]}
    assert len(rows) == 2 * 2 * 2
    short, long = rows[(300, "window:0.25", "agnostic")], rows[(1000, "full cache", "agnostic")]
    assert short["examples"] == 2 and short["skipped"] == 0 and short["questions"] == 2
    assert short["reference_accuracy"] == rows[(300, "full cache", "agnostic")]["accuracy"]
    assert long["examples"] == 0 and long["skipped"] == 2 and long["accuracy"] is None  # 1000 > 600 positions
    small = kv_eval(KVEvalSpec(model=saved, tasks=["passkey"], lengths=[300], policies=["window:8KiB"], examples=1,
                               max_new_tokens=4))  # a byte budget: 8 KiB buys 15 tokens per layer and head here
    held = [r["cache_bytes"] for r in small["rows"] if r["policy"] == "window:8KiB"][0]
    per_token = 2 * 2 * (2 * 16 * 4 + 4)  # 2 layers x 2 KV heads x (key, value of 16 floats, int32 position)
    # after the prompt: exactly the tokens the bytes buy, plus each layer's int64 token counter
    assert held == ((8192 - 2 * 8) // per_token) * per_token + 2 * 8
    code = main(["kv-eval", "--model", saved, "--tasks", "passkey", "--lengths", "300", "--policies", "streaming:0.25",
                 "--examples", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "kv_eval.md").exists()
    assert main(["kv-eval", "--model", saved, "--tasks", "summarise", "--out", str(tmp_path / "x")]) == 2


def test_results_go_to_a_results_store_and_its_report(saved, tmp_path):
    from longrecall.arena.store import Store

    store, report = tmp_path / "all.db", tmp_path / "report"
    args = ["kv-eval", "--model", saved, "--tasks", "passkey", "--lengths", "300", "--policies", "window:0.25",
            "--protocols", "agnostic,aware", "--examples", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "o")]
    assert main([*args, "--report", str(report)]) == 2  # a report of what? --store is needed
    assert main([*args, "--store", str(store), "--report", str(report)]) == 0
    with Store.open(store, create=False) as db:
        rows = db.evaluations(source="kv-eval")
    assert len(rows) == 2 * 2  # (full cache, window) x 2 protocols
    model = saved.rstrip("/").rsplit("/", 1)[-1]
    window = {r["protocol"]: r for r in rows if r["system"] == f"{model} + window"}
    full = {r["protocol"]: r for r in rows if r["system"] == f"{model} (full cache)"}
    assert set(window) == set(full) == {"agnostic", "aware"}
    assert window["aware"]["budget"] == 0.25 and window["aware"]["reference_score"] == full["aware"]["score"]
    assert full["aware"]["reference_score"] is None and window["aware"]["state_bytes"] < full["aware"]["state_bytes"]
    assert window["aware"]["metrics"]["questions"] == 1 and window["aware"]["setting"]["examples"] == 1
    assert "kv-eval: passkey" in (report / "report.md").read_text()
    assert main([*args, "--store", str(store)]) == 0  # the same evaluations again replace their rows
    with Store.open(store, create=False) as db:
        assert len(db.evaluations()) == 4
    (tmp_path / "not_a_store").write_text("hello")
    assert main([*args, "--store", str(tmp_path / "not_a_store")]) == 2
