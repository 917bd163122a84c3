"""benchmarks/speed/step_anatomy.py's profile summary (kernels grouped by kind, shares of the CUDA time) and its
markdown, which must be what the committed JSON renders to. The measurements themselves need a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.speed import step_anatomy

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_kernels_are_grouped_by_what_they_compute() -> None:
    kind = step_anatomy.kernel_kind
    assert kind("void batch_trsm_left_kernel<float, 64, 4, 3, false, true, true>(cub...") == "triangular solve"
    assert kind("backward") == kind("forward") == "triangular solve"  # ops/tril_solve_kernels.py
    assert kind("nvjet_sm90_tst_128x256_64x4_1x2_h_bz_coopA_NNN") == "matmuls"
    assert kind("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_16x6_nt_a...") == "matmuls"
    assert kind("triton_poi_fused__unsafe_view_mul_silu_5") == "fused elementwise and reductions (Inductor)"
    assert kind("void at::native::elementwise_kernel<128, 2>") == "other kernels"


def test_profile_table_shares_add_up_and_say_what_they_cover() -> None:
    kernels = [{"kernel": "triton_poi_fused_silu_1", "ms_per_step": 3.0, "calls_per_step": 2},
               {"kernel": "nvjet_sm90_gemm", "ms_per_step": 1.0, "calls_per_step": 4}]
    partial = step_anatomy.profile_table({"run": "r", "steps": 3, "cuda_ms_per_step": 8.0, "kernels": kernels})
    assert "the 2 kernels listed, 50% of the CUDA time" in partial[0]
    assert "| fused elementwise and reductions (Inductor) | 3.00 | 38% |" in partial
    assert "| matmuls | 1.00 | 12% |" in partial
    whole = step_anatomy.profile_table({"run": "r", "steps": 3, "cuda_ms_per_step": 4.0, "kernels": kernels})
    assert "By kind (all kernels)" in whole[0]
    assert "| `triton_poi_fused_silu_1` | 3.000 | 2 | 75.0% |" in whole


def test_committed_markdown_is_what_the_committed_json_renders_to(tmp_path) -> None:
    results = json.loads((BENCHMARKS / "results" / "step_anatomy.json").read_text())
    step_anatomy.write_markdown(results, tmp_path / "step_anatomy.md")
    assert (tmp_path / "step_anatomy.md").read_text() == (BENCHMARKS / "results" / "step_anatomy.md").read_text()
    profiled = [p for entry in results.values() for run in entry["runs"] for p in run.get("profiles", [])]
    assert profiled, "the committed runs include CUDA profiles"
    for profile in profiled:  # kernels listed never exceed the total they are shares of
        assert sum(k["ms_per_step"] for k in profile["kernels"]) <= profile["cuda_ms_per_step"] * 1.001


def test_a_row_that_fell_back_to_eager_says_so() -> None:
    """A step the compiler refused trains eagerly (BatchedTrainer falls back); its row must not pass for a
    compiled one, and rows recorded before the flag existed read as compiled."""
    row = {"task": "fuzzy_recall", "seq_len": 128, "members": 24, "variant": "delta_net fla", "step_ms": 80.0,
           "member_steps_per_s": 300.0, "tokens_per_s": 4.9e6, "compile_s": 3.0, "peak_gib": 9.0}
    eager, compiled, older = ({**row, "compiled": False}, {**row, "compiled": True}, row)
    lines = step_anatomy.steps_table([eager, compiled, older])
    assert "| delta_net fla (compile failed: eager) | 80.0 |" in lines[2]
    assert all("| delta_net fla | 80.0 |" in line for line in lines[3:])


def test_a_row_spec_names_its_variant_and_compile_mode() -> None:
    """`variant@mode` picks torch.compile's mode for that row; a plain variant keeps the default; a name that is
    no variant stops the run with the list of variants, before any GPU time is spent."""
    assert step_anatomy.parse_variant("delta_net fla") == ("delta_net fla", None)
    assert step_anatomy.parse_variant("one linear@max-autotune") == ("one linear", "max-autotune")
    with pytest.raises(SystemExit, match="unknown variant 'delta_nett'.*delta_net fla"):
        step_anatomy.parse_variant("delta_nett@max-autotune")
