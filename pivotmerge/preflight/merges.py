"""The selected merge methods' options: each method (and each merge_search candidate) runs once on a tiny
synthetic problem, so the method's own validation is the rule."""
from omegaconf import OmegaConf

from pivotmerge.errors import ConfigError
from pivotmerge.preflight.schema import PreflightError


def check_merges(cfg, n_experts: int) -> None:
    """Run every selected method (and merge_search candidate) on a synthetic problem."""
    import torch

    from pivotmerge.merging import MergeError
    from pivotmerge.merging.align import ALIGN_MODES
    from pivotmerge.merging.calibration import compute_stats
    from pivotmerge.merging.call import merge
    from pivotmerge.merging.registry import import_target
    from pivotmerge.merging.spec import spec_of
    from pivotmerge.pipeline.merge import ALIGN_KEY, candidate_options, expand_variants, search_grid

    methods = expand_variants(cfg)   # raises ConfigError on a bad variant
    search = cfg.merge_search
    generator = torch.Generator().manual_seed(0)
    pivot = {"0.weight": torch.randn(5, 4, generator=generator), "0.bias": torch.randn(5, generator=generator),
             "2.weight": torch.randn(3, 5, generator=generator), "2.bias": torch.randn(3, generator=generator)}
    experts = [{k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in pivot.items()}
               for _ in range(max(2, n_experts))]
    stats = [compute_stats(e, torch.randn(16, 4, generator=generator), sample_tokens=16) for e in experts]
    fisher = {k: torch.rand(v.shape, generator=generator) for k, v in pivot.items()}
    for name, method_cfg in methods.items():
        if "_target_" not in method_cfg:
            raise PreflightError(f"config merge.{name} has no _target_: select methods with merge=[...] from "
                                 "conf/merge/")
        options = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items() if not k.startswith("_")}
        align = options.pop(ALIGN_KEY, cfg.align)
        if align not in ALIGN_MODES:
            raise PreflightError(f"config merge.{name}.align={align!r} is not an alignment; use one of "
                                 f"{', '.join(ALIGN_MODES)}")
        try:
            method = import_target(method_cfg._target_, f"merge.{name}")
            spec = spec_of(method)
        except MergeError as exc:
            raise PreflightError(f"config merge.{name}: cannot build {method_cfg._target_!r} ({exc})") from exc
        # synthetic statistics and loss: the method's own checks are what is tested
        extras = {"statistics": [type(s)(s.grams, s.counts, s.inputs, fisher if spec.fisher is not False else None)
                                 for s in stats]} if "calibration" in spec.takes else {}
        if "calibration_loss" in spec.takes:
            extras["calibration_loss"] = lambda state: 0.0
        grid = search_grid(cfg, name, method) if search.enabled else {}
        candidates = candidate_options(options, grid, int(search.budget)) if grid else [options]
        for candidate in candidates:
            try:
                merge(method, pivot, experts, candidate, **extras)
            except (MergeError, ConfigError) as exc:
                where = (f"merge_search.grids.{name} candidate {candidate}" if candidate != options
                         else f"merge.{name}")
                raise PreflightError(f"config {where}: {exc}") from exc


__all__ = ["check_merges"]
