"""The OpenAI API as each server really speaks it, and whether its outputs change under load.

``conformance`` sends real requests for each feature of the API and grades the answers
against the documented shape (:mod:`.checks`); ``batch_invariance`` sends the same greedy
prompts alone and among concurrent users (:mod:`.invariance`).
"""

from .invariance import Invariance, batch_invariance
from .matrix import TOOL_ARGS, Conformance, conformance

__all__ = ["TOOL_ARGS", "Conformance", "Invariance", "batch_invariance", "conformance"]
