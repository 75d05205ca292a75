"""Linear time-invariant state spaces: HiPPO-LegS and its NPLR form, bilinear discretisation, the dense
Krylov kernel and carried-state terms (LSSL), S4's Cauchy kernel, ``diagonal`` (the diagonal complex core of
S4D, DSS and H3; used as a module: ``diagonal.plan``, ``diagonal.apply``, ...), and ``naive`` (the spec)."""

from . import diagonal
from .cache import ParamCache
from .cauchy import cauchy, dplr_kernel, roots_of_unity
from .dense import Blocks, bilinear, dense_ssm, krylov, krylov_kernel, ssm_blocks
from .hippo import NPLR, dplr_to_real, hippo_legs, legs_nplr, output_from_real
from .naive import krylov_kernel_naive, ssm_recurrence_naive

__all__ = ["NPLR", "hippo_legs", "legs_nplr", "dplr_to_real", "output_from_real", "bilinear", "krylov",
           "krylov_kernel", "Blocks", "ssm_blocks", "dense_ssm", "cauchy", "dplr_kernel", "roots_of_unity",
           "krylov_kernel_naive", "ssm_recurrence_naive", "ParamCache", "diagonal"]
