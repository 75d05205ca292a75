"""Memory mechanisms, one file each (the file name is the registry key); the imports below register them."""

# (a) foundation: attention baselines and state-space layers
from . import attention, mamba, s4d, sliding_window  # noqa: F401 - imported to register

# isort: split
# (a) linear attention, delta rules and selective recurrences (matrix-valued fixed-size memories)
from . import based, deltanet, gated_deltanet, gla, linear_attention, mamba2, mlstm, mom, retnet, rwkv6, titans  # noqa: F401 - imported to register

# isort: split
# (a) structured state spaces, long convolutions and classic RNNs (issue 13)
from . import base_conv, dss, gru, h3, hyena, lem, lru, lssl, lstm, multires, s4, stu  # noqa: F401 - imported to register

# isort: split
# (b) memory-augmented transformers (issue 14)
from . import ahn, compressive, infini, memorizing, rat, transformer_xl  # noqa: F401 - imported to register
