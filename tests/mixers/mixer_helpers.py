"""What every mixer test builds: a model from a fixed seed, cast to float64, and seeded random inputs.

Imported by its bare name, ``from mixer_helpers import ...`` (see tests/conftest.py). Each test file keeps its
own ``make()``, which holds the mechanism's small defaults and moves weights off their init, and binds
``rand_x`` to its width and length: ``rand_x = rand_x_for(D_MODEL, T=13)``.
"""

import torch

F64 = torch.float64


def seeded(cls, d_model: int, *, dtype=F64, seed: int = 0, **kwargs):
    """``cls(d_model, **kwargs)`` built right after ``torch.manual_seed(seed)``, then cast to ``dtype``."""
    torch.manual_seed(seed)
    return cls(d_model, **kwargs).to(dtype)


def random_inputs(batch: int, T: int, d: int, *, dtype=F64, seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    """``scale`` times a (batch, T, d) standard normal from its own generator: the global seed is untouched."""
    return scale * torch.randn(batch, T, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand_x_for(d_model: int, T: int):
    """A test file's ``rand_x(batch=2, T=T, dtype=F64, seed=1, scale=1.0, d=d_model)``: :func:`random_inputs`."""

    def rand_x(batch=2, T=T, dtype=F64, seed=1, scale=1.0, d=d_model):
        return random_inputs(batch, T, d, dtype=dtype, seed=seed, scale=scale)

    return rand_x
