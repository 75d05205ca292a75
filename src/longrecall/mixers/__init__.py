"""Memory mechanisms. One file per mechanism; the file name is the registry key.

The import lines below are what registers them: add yours here.
"""

from . import attention, mamba, s4d, sliding_window  # noqa: F401
