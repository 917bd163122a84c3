"""Math kernels and their references.

- `naive`: per-step delta-rule recurrences, the correctness reference. The chunkwise-parallel forms live
  inside the mixer templates (`mixerlab/mixers/*.py`), because a candidate is one self-contained file that
  edits them; tests hold every fast form against `naive`.
- `depthwise`: depthwise convolution as shifted multiply-adds (fast under torch.compile; `nn.Conv1d` is the
  reference).
- `fla_ops`: flash-linear-attention's chunkwise delta-rule kernels (CUDA) as custom ops with autograd, vmap
  (members folded into the kernel's batch) and compile support; the PyTorch chunkwise forms are the reference
  and the CPU stand-in.
- `tril_solve`: the unit-lower-triangular solve of the chunkwise WY step as a Triton kernel (CUDA), wrapped as
  a custom op with autograd, vmap and compile support; `torch.linalg.solve_triangular` is the reference, and
  the batched trainer routes the library's calls there (`fast_triangular_solves`).
- `members`: what the ops' vmap rules share (the member dimension moved to the front, or folded into the batch).
"""

from .naive import delta_rule_recurrent, gated_delta_rule_recurrent

__all__ = ["delta_rule_recurrent", "gated_delta_rule_recurrent"]
