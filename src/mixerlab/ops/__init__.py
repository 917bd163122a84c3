"""Math kernels and their references.

- `naive`: per-step delta-rule recurrences, the correctness reference. The chunkwise-parallel forms live
  inside the mixer templates (`mixerlab/mixers/*.py`), because a candidate is one self-contained file that
  edits them; tests hold every fast form against `naive`.
- `depthwise`: depthwise convolution as shifted multiply-adds (fast under torch.compile; `nn.Conv1d` is the
  reference).
- `tril_solve`: the unit-lower-triangular solve of the chunkwise WY step as a Triton kernel (CUDA), wrapped as
  a custom op with autograd, vmap and compile support; `torch.linalg.solve_triangular` is the reference, and
  the batched trainer routes the library's calls there (`fast_triangular_solves`).
- `members`: what the ops' vmap rules share (and `mixers/fla_ops.py`'s, which wraps fla's kernels beside the
  chunkwise forms it falls back to) (the member dimension moved to the front, or folded into the batch).
"""

from .naive import delta_rule_recurrent, gated_delta_rule_recurrent

__all__ = ["delta_rule_recurrent", "gated_delta_rule_recurrent"]
