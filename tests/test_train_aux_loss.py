"""The mixers' auxiliary losses in training (TrainConfig.aux_loss_weight): compressive's reconstruction."""

import pytest
import torch

from longrecall.config import ConfigError, TrainConfig
from longrecall.models import LanguageModel
from longrecall.train import train

KWARGS = {"compressive": {"segment_len": 4, "mem_len": 4, "cmem_len": 4, "compression_rate": 2}}


def test_auxiliary_loss_trains_the_compression_only():
    torch.manual_seed(0)
    model = LanguageModel(32, 16, ["compressive", "attention"], mixer_kwargs=KWARGS)
    x = torch.randint(32, (2, 24))
    aux = model.auxiliary_loss(x)
    assert aux is not None and aux.item() > 0
    aux.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"blocks.0.mixer.compress_weight"}
    assert LanguageModel(32, 16, ["attention"]).auxiliary_loss(x) is None


def test_aux_loss_weight_is_checked():
    with pytest.raises(ConfigError, match="aux_loss_weight"):
        TrainConfig(aux_loss_weight=-1.0)
    config = TrainConfig(layers=["attention"], aux_loss_weight=0.5, steps=1, d_model=16)
    with pytest.raises(ValueError, match="aux_loss_weight"):
        train(config, progress=False, log=lambda *a: None)


def test_training_with_the_reconstruction_loss_records_it(tmp_path):
    def run(weight, out):
        config = TrainConfig(layers=["compressive", "compressive"], mixer_kwargs=KWARGS["compressive"], d_model=16,
                             task_kwargs={"vocab_size": 32, "seq_len": 32, "num_kv_pairs": 2}, steps=4,
                             batch_size=4, eval_every=4, eval_examples=8, aux_loss_weight=weight, threads=1,
                             out_dir=str(tmp_path / out))
        return train(config, progress=False, log=lambda *a: None)

    with_aux, without = run(1.0, "a"), run(0.0, "b")
    assert all("aux_loss" in h for h in with_aux["history"])
    assert not any("aux_loss" in h for h in without["history"])
    # the first step's task loss is the same (same init and batch): the auxiliary loss only adds a term
    assert with_aux["history"][0]["loss"] == without["history"][0]["loss"]
