"""longrecall: long-range memory in sequence models, on one ruler.

    from longrecall import get_mixer, list_mixers, LanguageModel, MQAR
"""

__version__ = "0.1.0"

from . import mixers, policies, tasks  # noqa: E402,F401  (importing registers every mixer, policy and task)
from .contract import run_contract  # noqa: E402
from .models import LanguageModel, ModelState  # noqa: E402
from .protocol import Mixer, state_nbytes  # noqa: E402
from .registry import MIXERS, POLICIES, TASKS, get_mixer, get_policy, get_task  # noqa: E402
from .tasks import Batch  # noqa: E402
from .tasks.mqar import MQAR  # noqa: E402


def list_mixers() -> list[str]:
    return MIXERS.names()


def list_tasks() -> list[str]:
    return TASKS.names()


def list_policies() -> list[str]:
    return POLICIES.names()


__all__ = [
    "Batch", "LanguageModel", "MIXERS", "MQAR", "Mixer", "ModelState", "POLICIES", "TASKS", "get_mixer",
    "get_policy", "get_task", "list_mixers", "list_policies", "list_tasks", "run_contract", "state_nbytes",
]
