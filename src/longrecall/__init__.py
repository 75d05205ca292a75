"""longrecall: long-range memory in sequence models, on one ruler.

    from longrecall import MQAR, LanguageModel, TrainConfig, get_mixer

The names below are the public API; tests/test_public_api.py pins them. ``longrecall.train`` stays the
training module (``longrecall.train.train(config)``), so the ``train`` function is not re-exported here.
"""

__version__ = "0.1.0"

from . import mixers, policies, tasks  # noqa: E402,F401  (importing registers every mixer, policy and task)
from .config import TrainConfig  # noqa: E402
from .contract import run_contract  # noqa: E402
from .models import LanguageModel, ModelState  # noqa: E402
from .policies.base import Policy  # noqa: E402
from .protocol import Mixer, state_nbytes  # noqa: E402
from .registry import MIXERS, POLICIES, TASKS, get_mixer, get_policy, get_task  # noqa: E402
from .tasks import Batch, Task  # noqa: E402
from .tasks.copy import Copy  # noqa: E402
from .tasks.delayed_copy import DelayedCopy  # noqa: E402
from .tasks.fact_update import FactUpdate  # noqa: E402
from .tasks.induction import Induction  # noqa: E402
from .tasks.listops import ListOps  # noqa: E402
from .tasks.mqar import MQAR  # noqa: E402
from .tasks.multi_hop import MultiHop  # noqa: E402
from .tasks.niah import NIAH  # noqa: E402
from .tasks.order_recall import OrderRecall  # noqa: E402
from .tasks.passkey import Passkey  # noqa: E402
from .tasks.selective_copy import SelectiveCopy  # noqa: E402
from .tasks.set_disjointness import SetDisjointness  # noqa: E402

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
