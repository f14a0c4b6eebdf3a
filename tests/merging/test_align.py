"""The post-alignment transformation (`align`): permuted experts come back exactly, the function never changes,
and every method accepts it through the pipeline's one option."""
import pytest
import torch

from pivotmerge.merging.align import ALIGN_MODES, align_experts, hidden_pairs, permute_hidden
from pivotmerge.merging.calibration import projector_forward
from pivotmerge.merging.errors import MergeConfigError, MergeInputError
from pivotmerge.merging.registry import available
from pivotmerge.models.projector import build_projector
from tests.helpers.merging import merge


def _projector(kind: str, seed: int, d_in: int = 6, d_out: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().to(torch.float64) for k, v in build_projector(kind, d_in, d_out).state_dict().items()}


def _shuffled(state: dict, seed: int) -> dict:
    """`state` with every hidden layer's units permuted at random (the same function)."""
    generator = torch.Generator().manual_seed(seed)
    for pair in hidden_pairs(state):
        width = state[f"{pair[0]}.weight"].shape[0]
        state = permute_hidden(state, pair, torch.randperm(width, generator=generator))
    return state


def _inputs(rows: int = 256, d_in: int = 6) -> torch.Tensor:
    return torch.randn(rows, d_in, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "mlp3x_gelu"])
@pytest.mark.parametrize("mode", ["weights", "activations"])
def test_a_permuted_expert_is_mapped_back_exactly(kind, mode):
    pivot = _projector(kind, 0)
    expert = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=v.dtype)
              for k, v in pivot.items()}
    shuffled = _shuffled(expert, seed=3)
    assert any(not torch.equal(shuffled[k], expert[k]) for k in expert)
    (aligned,) = align_experts(pivot, [shuffled], mode, inputs=_inputs())
    for key in expert:
        assert torch.equal(aligned[key], expert[key]), key


@pytest.mark.parametrize("mode", ALIGN_MODES)
def test_alignment_keeps_the_function_and_leaves_the_pivot_alone(mode):
    pivot = _projector("mlp3x_gelu", 0)
    stranger = _projector("mlp3x_gelu", 5)   # no shared start: its units are unrelated to the pivot's
    x = _inputs(64)
    aligned_pivot, aligned_stranger = align_experts(pivot, [pivot, stranger], mode, inputs=_inputs())
    for key in pivot:
        assert torch.equal(aligned_pivot[key], pivot[key])
    torch.testing.assert_close(projector_forward(aligned_stranger, x), projector_forward(stranger, x))
    if mode != "none":   # it did move units, and it moved them towards the pivot
        assert any(not torch.equal(aligned_stranger[k], stranger[k]) for k in stranger)
        distance = lambda s: sum(float((s[k] - pivot[k]).norm() ** 2) for k in pivot)  # noqa: E731
        assert distance(aligned_stranger) < distance(stranger)


def test_average_of_an_expert_and_its_permuted_copy_returns_the_expert_once_aligned():
    pivot = _projector("mlp2x_gelu", 0)
    expert = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(2), dtype=v.dtype)
              for k, v in pivot.items()}
    copies = align_experts(pivot, [expert, _shuffled(expert, seed=9)], "weights")
    merged = merge("average", pivot, copies)
    for key in expert:
        torch.testing.assert_close(merged[key], expert[key])
    unaligned = merge("average", pivot, [expert, _shuffled(expert, seed=9)])
    assert not torch.allclose(unaligned["0.weight"], expert["0.weight"])


def test_a_linear_projector_has_nothing_to_align():
    pivot, expert = _projector("linear", 0), _projector("linear", 1)
    (aligned,) = align_experts(pivot, [expert], "weights")
    assert all(torch.equal(aligned[k], expert[k]) for k in expert)


def test_bad_alignment_requests_are_one_line():
    pivot = _projector("mlp2x_gelu", 0)
    with pytest.raises(MergeConfigError, match="align='rotate' is not an alignment"):
        align_experts(pivot, [pivot], "rotate")
    with pytest.raises(MergeInputError, match="align=activations needs calibration inputs"):
        align_experts(pivot, [pivot], "activations")


@pytest.mark.parametrize("method", available())
def test_every_method_accepts_align_in_preflight(method, tmp_path, tiny_model_cfg):
    """`align` is one option for every method: a variant may set it, preflight checks its value."""
    from pivotmerge import preflight
    from pivotmerge.errors import ConfigError
    from tests.helpers.compose import compose_cfg

    variant = f"+merge_variants={{{method}_aligned: {{base: {method}, align: weights}}}}"
    cfg = compose_cfg(tmp_path, tiny_model_cfg, ["merge=[average]", "stages=[merge]", variant])
    preflight.check(cfg)
    bad = compose_cfg(tmp_path, tiny_model_cfg, ["merge=[average]", "stages=[merge]",
                                                 f"+merge_variants={{x: {{base: {method}, align: twist}}}}"])
    with pytest.raises(ConfigError, match="merge.x.align='twist' is not an alignment"):
        preflight.check(bad)
