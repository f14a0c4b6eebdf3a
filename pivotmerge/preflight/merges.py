"""The selected merge methods' options: each method (and each merge_search candidate) runs once on a tiny
synthetic problem, so the method's own validation is the rule."""
from omegaconf import OmegaConf

from pivotmerge.errors import ConfigError
from pivotmerge.preflight.schema import PreflightError


def check_merges(cfg, n_experts: int) -> None:
    """Build and run every selected method (and merge_search candidate) on a synthetic problem."""
    import torch
    from hydra.utils import instantiate

    from pivotmerge.merging import MergeError
    from pivotmerge.merging.align import ALIGN_MODES
    from pivotmerge.merging.calibration import compute_stats, needs_of
    from pivotmerge.merging.registry import accepted_extras
    from pivotmerge.pipeline.merge import ALIGN_KEY, candidate_options, expand_variants

    methods = expand_variants(cfg)   # raises ConfigError on a bad variant
    search = cfg.merge_search
    grids = (search.grids or {}) if search.enabled else {}
    generator = torch.Generator().manual_seed(0)
    pivot = {"0.weight": torch.randn(5, 4, generator=generator), "0.bias": torch.randn(5, generator=generator),
             "2.weight": torch.randn(3, 5, generator=generator), "2.bias": torch.randn(3, generator=generator)}
    experts = [{k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in pivot.items()}
               for _ in range(max(2, n_experts))]
    stats = [compute_stats(e, torch.randn(16, 4, generator=generator), sample_tokens=16) for e in experts]
    for name, method_cfg in methods.items():
        if "_target_" not in method_cfg:
            raise PreflightError(f"config merge.{name} has no _target_: select methods with merge=[...] from "
                                 "conf/merge/")
        options = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items() if not k.startswith("_")}
        align = options.pop(ALIGN_KEY, cfg.align)
        if align not in ALIGN_MODES:
            raise PreflightError(f"config merge.{name}.align={align!r} is not an alignment; use one of "
                                 f"{', '.join(ALIGN_MODES)}")
        method_cfg = OmegaConf.create({k: v for k, v in method_cfg.items() if k != ALIGN_KEY})
        grid = grids.get(name)
        candidates = candidate_options(options, OmegaConf.to_container(grid, resolve=True), int(search.budget)) \
            if grid else [options]
        for candidate in candidates:
            try:
                fn = instantiate(OmegaConf.merge(method_cfg, candidate))
            except Exception as exc:   # hydra wraps import errors and bad keyword arguments
                raise PreflightError(f"config merge.{name}: cannot build {method_cfg._target_!r} "
                                     f"({str(exc).splitlines()[0]})") from exc
            accepted = accepted_extras(fn)
            kwargs = {"calibration_loss": lambda state: 0.0} if "calibration_loss" in accepted else {}
            if "calibration" in accepted:   # synthetic statistics: the method's own checks are what is tested
                fisher = "fisher" in needs_of(fn)
                kwargs["calibration"] = [s if not fisher else type(s)(s.grams, s.counts, s.inputs, {
                    k: torch.rand(v.shape, generator=generator) for k, v in pivot.items()}) for s in stats]
            try:
                fn(pivot, experts, **kwargs)
            except (MergeError, ConfigError) as exc:
                where = (f"merge_search.grids.{name} candidate {candidate}" if candidate is not options
                         else f"merge.{name}")
                raise PreflightError(f"config {where}: {exc}") from exc


__all__ = ["check_merges"]
