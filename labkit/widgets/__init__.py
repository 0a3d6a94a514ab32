"""ipywidgets panels: thin views over labkit's plain functions.

Widgets are controls; the functions do the work. Long work runs on a worker thread and
reports through widget values (never an Output context manager from a thread), so the
kernel's UI stays responsive; errors show in the panel's status line, not as a traceback.
``wait()`` joins the worker, for headless use and tests.

One module per panel: ``loader`` (ModelLoader), ``compare`` (ComparePanel), ``bench``
(BenchPanel), ``capacity`` (CapacityPanel), ``sweep`` (SweepPanel), ``memory``
(MemoryMonitor); ``_base`` holds what they share.
"""

from ._base import LOADED
from .bench import BenchPanel
from .capacity import CapacityPanel
from .compare import ComparePanel
from .loader import ModelLoader
from .memory import MemoryMonitor
from .sweep import SweepPanel

__all__ = ["LOADED", "BenchPanel", "CapacityPanel", "ComparePanel", "MemoryMonitor", "ModelLoader", "SweepPanel"]
