"""The 1/P plateau ablation of the recipe study (docs/results.md, "Why RetNet, Mamba-2 and Gated
DeltaNet stay at 1/P"): one recipe cell (width 64, MQAR T=64, 4 pairs, vocab 256, answers loss) with
one part of a mixer or of the block removed.

    python configs/plateau_ablation.py gdn_nogate            # lr 3e-3
    python configs/plateau_ablation.py mamba_nogate 1e-3

Variants (the unmodified cells are the recipe store's own runs):
    gdn_nogate       gated_deltanet(use_gate=False): RMSNorm read-out without the SiLU output gate
    gdn_nodecay      gated_deltanet with log alpha = 0 (the gate kept): DeltaNet plus the output gate
    gdn_fla_init     gated_deltanet, every Linear in the mixer re-drawn from N(0, 0.02) (fla's init)
    gdn_noconv       gated_deltanet without the block's short convolution (its own q/k/v convs kept)
    retnet_nogate    retnet without the swish gate: out_proj(GroupNorm(retention))
    mamba2_nogate    mamba2 with the gated RMSNorm's gate removed: rmsnorm(y) instead of rmsnorm(y * SiLU(z))
    mamba2_noconv    mamba2 without the block's short convolution (its own conv kept)
    mamba_nogate     mamba with y * SiLU(z) replaced by y
    mamba_noconv     mamba without the block's short convolution (its own conv kept)
    deltanet_noconv  deltanet without the block's short convolution (its own q/k/v convs kept)
    mom_noconv       mom without the block's short convolution (its own convs kept)

The patches below are ablations, not mechanisms: they change this process's classes only.  Each run
stops at 0.9 held-out accuracy or after 2,500 steps and prints its evaluations (every 250 steps).
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F

import longrecall.mixers  # noqa: F401  (registers the mixers)
import longrecall.train as training
from longrecall.config import TrainConfig
from longrecall.modules import RMSNorm

VARIANTS = {
    "gdn_nogate": ("gated_deltanet", {"use_gate": False}),
    "gdn_nodecay": ("gated_deltanet", {}),
    "gdn_fla_init": ("gated_deltanet", {}),
    "gdn_noconv": ("gated_deltanet", {}),
    "retnet_nogate": ("retnet", {}),
    "mamba2_nogate": ("mamba2", {}),
    "mamba2_noconv": ("mamba2", {}),
    "mamba_nogate": ("mamba", {}),
    "mamba_noconv": ("mamba", {}),
    "deltanet_noconv": ("deltanet", {}),
    "mom_noconv": ("mom", {}),
}


def after_build(edit):
    """Apply ``edit(model)`` to the model the training loop builds."""
    build = training.make_model

    def make_model(config, vocab_size):
        model = build(config, vocab_size)
        edit(model)
        return model

    training.make_model = make_model


def patch(name: str) -> None:
    if name == "gdn_nodecay":
        from longrecall.mixers.gated_deltanet import GatedDeltaNet

        GatedDeltaNet.log_decay = lambda self, x: None  # the delta rule without decay, as DeltaNet
    elif name == "gdn_fla_init":
        def fla_init(model):
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for block in model.blocks:
                    for module in block.mixer.modules():
                        if isinstance(module, torch.nn.Linear):
                            module.weight.normal_(0, 0.02, generator=generator)
        after_build(fla_init)
    elif name == "retnet_nogate":
        from longrecall.mixers.retnet import RetNet

        def ungated(self, o, x):
            y = self.group_norm(o.reshape(-1, o.shape[-1]).to(x.dtype)).reshape(o.shape)
            return self.out_proj(y)
        RetNet._output = ungated
    elif name == "mamba2_nogate":
        def drop_gate(model):
            for block in model.blocks:
                norm = block.mixer.norm
                norm.forward = lambda x, gate=None, norm=norm: RMSNorm.forward(norm, x, None)
        after_build(drop_gate)
    elif name == "mamba_nogate":
        import longrecall.mixers.mamba as mamba

        mamba.F = types.SimpleNamespace(softplus=F.softplus, silu=torch.ones_like)  # y * 1 instead of y * SiLU(z)


def main(name: str, lr: float) -> None:
    if name not in VARIANTS:
        raise SystemExit(f"variant must be one of {', '.join(VARIANTS)}, got {name!r}")
    mixer, kwargs = VARIANTS[name]
    patch(name)
    config = TrainConfig(
        layers=[mixer, mixer], mixer_kwargs=kwargs, d_model=64, task="mqar",
        task_kwargs={"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4}, loss_on="answers", lr=lr,
        steps=2500, batch_size=32, warmup_steps=100, short_conv=0 if name.endswith("noconv") else 4,
        eval_every=250, eval_examples=512, early_stop_accuracy=0.9, target_accuracy=0.99, threads=1,
        out_dir=f"runs/plateau_ablation/{name}_{lr:g}",
    )
    metrics = training.train(config, progress=False, resume=False, log=lambda *a: None)
    print(name, f"lr={lr:g}", metrics["convergence"], [(e["step"], round(e["accuracy"], 3)) for e in metrics["evals"]])


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 3e-3)
