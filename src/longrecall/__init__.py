"""longrecall: long-range memory in sequence models, on one ruler.

    from longrecall import MQAR, LanguageModel, TrainConfig, get_mixer

The names below are the public API; tests/test_public_api.py pins them. ``longrecall.train`` stays the
training module (``longrecall.train.train(config)``), so the ``train`` function is not re-exported here.
"""

__version__ = "0.1.0"  # set before the imports below: train.py imports it

from . import mixers, policies, tasks  # noqa: F401 - importing registers every mixer, policy and task
from .config import TrainConfig
from .contract import run_contract
from .models import LanguageModel, ModelState
from .policies.base import Policy
from .protocol import Mixer, state_nbytes
from .registry import MIXERS, POLICIES, TASKS, get_mixer, get_policy, get_task
from .tasks import Batch, Task
from .tasks.copy import Copy
from .tasks.delayed_copy import DelayedCopy
from .tasks.fact_update import FactUpdate
from .tasks.induction import Induction
from .tasks.listops import ListOps
from .tasks.mqar import MQAR
from .tasks.multi_hop import MultiHop
from .tasks.niah import NIAH
from .tasks.order_recall import OrderRecall
from .tasks.passkey import Passkey
from .tasks.selective_copy import SelectiveCopy
from .tasks.set_disjointness import SetDisjointness

__all__ = [
    # the model and the three things it is built from or measured on
    "LanguageModel", "ModelState", "Mixer", "Policy", "Task", "Batch",
    # the registries (every mixer, KV-cache policy and task by its key) and their lookups
    "MIXERS", "POLICIES", "TASKS", "get_mixer", "get_policy", "get_task",
    # the tasks, one class per registry key
    "Copy", "DelayedCopy", "FactUpdate", "Induction", "ListOps", "MQAR", "MultiHop", "NIAH", "OrderRecall",
    "Passkey", "SelectiveCopy", "SetDisjointness",
    # training and measuring
    "TrainConfig", "run_contract", "state_nbytes",
]
