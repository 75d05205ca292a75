"""Why an SSM sits at 1/P on MQAR: a bag of values without the key-value binding.

Trains small models on a tiny MQAR (vocabulary 64, T=32, 2 pairs) and reports, besides accuracy,
where the wrong answers come from: a value that *is* in the context (the memory holds the values
but not which key each belongs to: accuracy ~ 1/P) or a token that is not (nothing recalled).
``mambapy`` is the reference Mamba (its own blocks, norms and initialisation, from the `dev` or
`bench` extra), trained on the same batches with the same loss and optimiser, to tell an
implementation bug from a property of the mechanism at this budget.

    python configs/mqar_binding_probe.py  # mamba, mamba2, s4d, linear_attention, gla, attention, mambapy
    python configs/mqar_binding_probe.py --models mamba --steps 3000 --lr 1e-3

Numbers in docs/results.md ("Why Mamba stops at 1/P") come from this script.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from longrecall.models import LanguageModel
from longrecall.tasks.mqar import MQAR
from longrecall.train import EVAL_SEED_BASE, param_groups, train_seed


def reference_mamba(vocab: int, d_model: int):
    """mambapy's Mamba (2 layers, d_state 16, conv 4, expand 2) between an embedding and a head."""
    from mambapy.mamba import Mamba, MambaConfig

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(vocab, d_model)
            self.mamba = Mamba(MambaConfig(d_model=d_model, n_layers=2, d_state=16, d_conv=4, pscan=True))
            self.norm = torch.nn.RMSNorm(d_model)
            self.head = torch.nn.Linear(d_model, vocab, bias=False)
            torch.nn.init.normal_(self.embedding.weight, std=0.02)
            torch.nn.init.normal_(self.head.weight, std=0.02)

        def forward(self, tokens):
            return self.head(self.norm(self.mamba(self.embedding(tokens))))

    return Model()


def ours(name: str, vocab: int, d_model: int, short_conv: int):
    model = LanguageModel(vocab, d_model, [name, name], short_conv=short_conv)
    return lambda tokens: model(tokens)[0], model


def analyse(logits: torch.Tensor, batch, pairs: int) -> dict:
    """Accuracy, and the share of answers that are another value of the same context."""
    predictions = logits.argmax(-1)
    values = batch.inputs[:, 1:2 * pairs:2]  # (N, P): the context's values
    scored = batch.targets != -100
    rows = scored.nonzero()[:, 0]
    predicted, target = predictions[scored], batch.targets[scored]
    in_context = (values[rows] == predicted[:, None]).any(-1)
    correct = predicted == target
    return {"accuracy": correct.float().mean().item(),
            "wrong_but_in_context": (in_context & ~correct).float().mean().item(),
            "not_in_context": (~in_context).float().mean().item()}


def run(name: str, args) -> dict:
    torch.manual_seed(0)
    task = MQAR(vocab_size=args.vocab, seq_len=args.seq_len, num_kv_pairs=args.pairs)
    if name == "mambapy":
        model = reference_mamba(args.vocab, args.d_model)
        forward = model
        groups = model.parameters()
    else:
        forward, model = ours(name, args.vocab, args.d_model, args.short_conv)
        groups = param_groups(model, 0.1)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.1)
    warmup = 50

    def factor(step):  # the train.py schedule: linear warm-up, cosine to 0.1
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, args.steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    held_out = task.build(512, EVAL_SEED_BASE)
    curve = []
    for step in range(args.steps):
        batch = task.build(32, train_seed(0, step))
        logits = forward(batch.inputs)
        scored = batch.targets != -100
        loss = F.cross_entropy(logits[scored], batch.targets[scored])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if (step + 1) % args.eval_every == 0:
            with torch.no_grad():
                curve.append((step + 1, round(analyse(forward(held_out.inputs), held_out, args.pairs)["accuracy"], 3)))
    with torch.no_grad():
        return {"curve": curve, **analyse(forward(held_out.inputs), held_out, args.pairs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mamba,mamba2,s4d,linear_attention,gla,attention,mambapy")
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--short-conv", type=int, default=4)
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"MQAR vocab {args.vocab}, T={args.seq_len}, {args.pairs} pairs; width {args.d_model}, 2 layers, "
          f"{args.steps} steps at batch 32, lr {args.lr}; chance {2 / args.vocab:.3f}, "
          f"bag of values {1 / args.pairs:.3f}")
    print("| model | held-out accuracy by step | final | wrong but a value of the context | not in the context |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        r = run(name, args)
        curve = ", ".join(f"{a:.3f}" for _, a in r["curve"])
        print(f"| {name} | {curve} | {r['accuracy']:.3f} | {r['wrong_but_in_context']:.3f} | "
              f"{r['not_in_context']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
