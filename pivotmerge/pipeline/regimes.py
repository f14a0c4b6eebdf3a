"""One experiment across several regimes: `regimes` maps a name to overrides (dotted keys of the run config:
which sources, how the pivot is made, how experts start); each regime runs the whole pipeline in its own run
folder `<run>/regimes/<name>/`, all sharing the cache (a regime that differs only in how experts start reuses
the other's data, features, pivot and joint projector). Seeds run outermost, so that every regime has a
first seed before any has a second; the regime map (eval/regime_map.py) is rewritten after every regime, so
an interrupted run already shows what it has, and the same command resumes from the cache.

`report.only=true` rebuilds the map from the run folder named by `eval.report.from` (a path) or from the
newest run folder of the experiment that has regimes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from pivotmerge.errors import ConfigError

REGIMES_DIR = "regimes"
TIMES_FILE = "regime_times.json"   # wall seconds per regime x seed of a run folder (record_time)


def regime_configs(cfg) -> dict[str, object]:
    """name -> the run config of that regime (the experiment's config with the regime's overrides)."""
    regimes = OmegaConf.to_container(cfg.regimes, resolve=True)
    if not isinstance(regimes, dict) or not regimes:
        raise ConfigError(f"regimes must map names to overrides ({{name: {{dotted.key: value}}}}), got {regimes!r}")
    out = {}
    for name, overrides in regimes.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"regimes.{name} must map dotted config keys to values, got {overrides!r}")
        regime_cfg = cfg.copy()
        with open_dict(regime_cfg):
            regime_cfg.regimes = None
            regime_cfg.paths.output_dir = str(Path(cfg.paths.output_dir) / REGIMES_DIR / name)
            for key, value in overrides.items():
                if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                    raise ConfigError(f"regimes.{name} overrides {key!r}, which the config does not have")
                OmegaConf.update(regime_cfg, key, value, merge=False)
        out[name] = regime_cfg
    return out


def run_regimes(cfg, run_one):
    """Every regime x seed through `run_one(cfg, mllm=...)` (the runner), then the map."""
    from pivotmerge import preflight

    configs = regime_configs(cfg)
    for regime_cfg in configs.values():   # every regime's config is checked before any work starts
        preflight.check(regime_cfg)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.report.only:
        return write_map(cfg, map_source(cfg, output_dir), list(configs))
    seeds = [int(s) for s in (cfg.seeds or [cfg.seed])]
    ablated = ablation_seeds(cfg, seeds)
    mllm, ctx = None, None
    started = time.perf_counter()
    for seed in seeds:
        for number, (name, regime_cfg) in enumerate(configs.items(), start=1):
            print(f"\n######## regime {name} ({number}/{len(configs)}), seed {seed} ########", flush=True)
            one = regime_cfg.copy()
            with open_dict(one):
                one.seed, one.seeds = seed, None
                if seed not in ablated:
                    one.merge_variants = {}
            regime_started = time.perf_counter()
            ctx = run_one(one, mllm=mllm)
            mllm = ctx._mllm
            record_time(output_dir, name, seed, time.perf_counter() - regime_started)
            write_map(cfg, output_dir, list(configs))
    print(f"\nregimes: {len(configs)} x {len(seeds)} seed(s) in {time.perf_counter() - started:.0f}s", flush=True)
    return ctx


def record_time(output_dir: Path, name: str, seed: int, seconds: float) -> None:
    """Wall seconds of each regime x seed of this run folder, in `regime_times.json` (a resumed run has its
    own folder: there a regime's time is what was left to do): the map's budget, measured."""
    path = Path(output_dir) / TIMES_FILE
    times = json.loads(path.read_text()) if path.is_file() else []
    times.append({"regime": name, "seed": int(seed), "seconds": round(seconds, 1)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(times, indent=2))


def ablation_seeds(cfg, seeds: list[int]) -> list[int]:
    """The seeds that also run `merge_variants` (the reference's component ablation): the first
    `ablation_seeds` of them (null: all). The ablation is read per regime on the items both rows have; every
    seed is needed only for the ranking, and the variants are 20-45 % of a regime's cold time (README)."""
    count = cfg.get("ablation_seeds")
    if count is None:
        return seeds
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"ablation_seeds={count!r} must be a whole number >= 0 (how many of the first seeds run "
                          "merge_variants) or null (all)")
    return seeds[:count]


def map_source(cfg, output_dir: Path) -> Path:
    source = str(cfg.eval.report["from"])
    if source not in ("latest", "all"):
        return Path(source)
    runs = sorted((p.parent for p in output_dir.parent.glob(f"*/{REGIMES_DIR}") if p.parent != output_dir),
                  key=lambda p: p.name)
    if not runs:
        raise ConfigError(f"report.only=true found no run folder with {REGIMES_DIR}/ under {output_dir.parent}")
    return runs[-1]


def load_regime_map(run_dir: Path, names: list[str], notes: dict | None = None, merge_variants: dict | None = None):
    """The regime map of a run folder from its stores alone: each regime's results and VAL checks."""
    from eval.regime_map import ablations_of, build_regime_map, read_val_checks
    from eval.store import RESULTS_DIR, read_rows

    folders = {name: Path(run_dir) / REGIMES_DIR / name for name in names}
    rows = {name: read_rows([folder / RESULTS_DIR]) for name, folder in folders.items()}
    return build_regime_map({name: r for name, r in rows.items() if r}, descriptions=notes or {},
                            ablations=ablations_of(merge_variants or {}),
                            val={name: read_val_checks(folder) for name, folder in folders.items()})


def write_map(cfg, run_dir: Path, names: list[str]):
    from eval.regime_map import write_regime_map

    regime_map = load_regime_map(run_dir, names, _container(cfg.get("regime_notes")),
                                 _container(cfg.get("merge_variants")))
    out = Path(cfg.paths.output_dir) / "report"
    paths = write_regime_map(regime_map, out)
    print(f"[  regime] map of {len(regime_map.regimes)} regime(s): {paths['md']}", flush=True)
    return paths


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}
