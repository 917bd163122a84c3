"""The delta-rule math: naive per-step recurrences (the correctness reference) and the optional fla kernels.

The chunkwise-parallel forms live inside the mixer templates (`mixerlab/mixers/*.py`), because a candidate
is one self-contained file that edits them; tests hold every fast form against `naive`.
"""

from .naive import delta_rule_recurrent, gated_delta_rule_recurrent

__all__ = ["delta_rule_recurrent", "gated_delta_rule_recurrent"]
