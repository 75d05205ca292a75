"""Build, train and save a small Hugging Face Llama that reads RULER-style passkey prompts, for the
README's worked example of ``longrecall kv-eval`` (nothing is downloaded: the tokenizer is one token
per printable character, built here; the model is trained here from scratch).

    python configs/kv_eval_demo.py runs/kv_eval_demo            # about 5-10 min on 2 cores
    longrecall kv-eval --model runs/kv_eval_demo --tasks passkey --lengths 256,512 \\
        --policies window:0.25,streaming:0.25,h2o:0.25,snapkv/prefill:0.25 --protocols agnostic,aware

Training: passkey prompts of 200-512 characters (needle at a random depth), the loss on the answer's
characters only, AdamW lr 1e-3, batch 16, up to ``--steps`` steps, stopping when a held-out set of
64 prompts is answered exactly at 95% or more.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time

import torch


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2, **{c: i + 3 for i, c in enumerate(string.printable[:95])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def batch(tokenizer, rng: random.Random, size: int, lengths=(200, 512)) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) padded to the longest: labels are -100 except the answer's characters."""
    from longrecall.text_tasks import render

    rows = []
    for _ in range(size):
        example = render("passkey", rng.randint(*lengths), tokenizer, rng, depth=rng.random())
        question = example.questions[0]
        prompt = tokenizer.encode(example.context + " " + question.text, add_special_tokens=False)
        answer = tokenizer.encode(" " + question.answers[0] + ".", add_special_tokens=False)
        rows.append((prompt, answer))
    width = max(len(p) + len(a) for p, a in rows)
    inputs = torch.full((size, width), tokenizer.pad_token_id)
    labels = torch.full((size, width), -100)
    for i, (prompt, answer) in enumerate(rows):
        ids = prompt + answer
        inputs[i, :len(ids)] = torch.tensor(ids)
        labels[i, len(prompt):len(ids)] = torch.tensor(answer)
    return inputs, labels


def exact(model, inputs, labels) -> float:
    with torch.no_grad():
        logits = model(inputs).logits[:, :-1]
    target = labels[:, 1:]
    scored = target != -100
    right = (logits.argmax(-1) == target) | ~scored
    return right.all(1).float().mean().item()


def main(out: str, steps: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    tokenizer = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    held_out = batch(tokenizer, random.Random(12345), 64)
    rng, tick = random.Random(0), time.perf_counter()
    for step in range(1, steps + 1):
        inputs, labels = batch(tokenizer, rng, 16)
        loss = model(inputs, labels=labels).loss  # shifted inside: position t predicts t + 1
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0:
            model.eval()
            score = exact(model, *held_out)
            model.train()
            print(f"step {step}: loss {loss.item():.3f}, held-out exact answers {score:.3f} "
                  f"({time.perf_counter() - tick:.0f} s)", flush=True)
            if score >= 0.95:
                break
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(sys.argv[1:])
    main(args.out, args.steps)
