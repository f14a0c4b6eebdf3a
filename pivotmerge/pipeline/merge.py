"""Stage 5 (merge): every configured method turns (pivot, experts) into one projector, with diagnostics.

`cfg.merge` maps a method name to its config (`conf/merge/<name>.yaml`, a `_partial_` target; the merge
registry, pivotmerge/merging/registry.py), and every merge goes through `pivotmerge.merging.call.merge`.
A method gets what its spec (pivotmerge/merging/spec.py) says it takes: `calibration` (each expert's statistics
from its source's TRAIN split, pivotmerge/pipeline/calibration.py); `calibration_loss` (the caption loss of
fixed rows of `calibration.loss_split`, TRAIN by default; `calibration.loss_kind`: the k-way loss over
each source's captions, the caption NLL, or `kway_guarded`: the k-way loss where the caption NLL is no worse than
the pivot's, see `guarded_loss`). VAL rows serve the option search only
(`merge_search`, the same budget for every method); test data never reaches a merge.

Before a method runs, the experts are mapped into the pivot's frame by `align` (none | weights |
activations; the run's `align`, or the method's own `align` key, e.g. a merge_variants entry):
pivotmerge/merging/align.py. With `merge_diagnostics.lmc` the stage also measures the
loss barriers between pivot and experts (pivotmerge/pipeline/lmc.py).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time

import torch
from omegaconf import OmegaConf, open_dict
from safetensors.torch import save_file

from pivotmerge.errors import ConfigError
from pivotmerge.merging.call import aligned_experts, merge
from pivotmerge.merging.registry import check_options, conf_dir, import_target
from pivotmerge.merging.spec import spec_of
from pivotmerge.models.mllm import projector_swapped
from pivotmerge.pipeline.stage import Stage, entries_run
from pivotmerge.pipeline.train import PROJECTOR_FILE
from pivotmerge.preflight.schema import CalibrationSchema, MergeDiagnosticsSchema, MergeSearchSchema


def calibration_batch(ctx, per_source: int, split: str = "val") -> dict[str, torch.Tensor]:
    """Fixed rows of `split` of every source, first caption template and instruction (same for every method)."""
    from pivotmerge.pipeline.data import instructions

    mllm = ctx.mllm
    features, texts = [], []
    for name, feats in ctx.features.items():
        rows = min(per_source, feats.features[split].shape[0])
        features.append(feats.features[split][:rows])
        texts += [mllm.encode_text(instructions(ctx.cfg)[0], ctx.sources[name].caption(label, 0))
                  for label in feats.labels[split][:rows]]
    return {"features": torch.cat(features), **mllm.collate_text(texts)}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes: equal digests, equal states."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def memoised_by_state(fn):
    """`fn(state)` computed once per distinct state: a search meets the same state more than once (the pivot in
    every candidate's layer search, lam=0.5 x w against lam=1 x w/2, the end point's noise test, the VAL check
    of the chosen candidate), and one forward pass of the LLM costs ~1 s on the 2 cores; a digest ~5 ms."""
    seen: dict[str, object] = {}

    @functools.wraps(fn)
    def memoised(state: dict[str, torch.Tensor]):
        key = state_digest(state)
        if key not in seen:
            seen[key] = fn(state)
        return seen[key]

    return memoised


def make_calibration_loss(ctx, per_source: int, split: str = "val"):
    """state dict -> mean over sources of the per-source caption loss on fixed rows of `split`.

    Averaging per source first keeps every source's weight equal, whatever its caption length.
    """
    batch = calibration_batch(ctx, per_source, split)
    source_of_row = torch.tensor([i for i, feats in enumerate(ctx.features.values())
                                  for _ in range(min(per_source, feats.features[split].shape[0]))])
    mllm = ctx.mllm

    @memoised_by_state
    @torch.no_grad()
    def calibration_loss(state: dict[str, torch.Tensor]) -> float:
        with projector_swapped(mllm, state):
            sums, counts = mllm.answer_logprobs(**batch)
        losses = [-(sums[source_of_row == s].sum() / counts[source_of_row == s].sum()).item()
                  for s in range(len(ctx.features))]
        return sum(losses) / len(losses)

    return calibration_loss


def candidate_options(base: dict, grid: dict, budget: int) -> list[dict]:
    """The first `budget` points of the grid (product in a fixed order), the config's own point first."""
    import itertools

    unknown = [k for k in grid if k not in base]
    if unknown:
        raise ConfigError(f"merge_search grid names options {unknown} that the method does not have; "
                          f"its options: {sorted(base)}")
    points = [dict(base)]
    keys = list(grid)
    for values in itertools.product(*(list(grid[k]) for k in keys)):
        point = {**base, **dict(zip(keys, values))}
        if point not in points:
            points.append(point)
    return points[:budget]


def search_grid(cfg, name: str, fn) -> dict:
    """The option values `merge_search` tries for method `name` (merge function `fn`): `grids.<name>` when
    given; else, for a method picked from conf/merge/ (not a merge_variants entry), `scale_values` over the option
    its spec searches (none for a method without one)."""
    search = cfg.merge_search
    grid = (search.grids or {}).get(name)
    if grid:
        return OmegaConf.to_container(grid, resolve=True)
    option, values = spec_of(fn).search, search.get("scale_values")
    if option and values and name in (cfg.get("merge") or {}):
        return {option: list(values)}
    return {}


def expand_variants(cfg) -> dict:
    """`cfg.merge` plus `cfg.merge_variants` (name -> {base: <conf/merge name>, option: value, ...}).

    A variant starts from the run's own settings of its base method when the run merges with it (so an
    experiment that sets `merge.pivotmerge.lam` changes its variants too), else from conf/merge/<base>.yaml.
    """
    from pivotmerge.merging.registry import available

    methods = dict(cfg.get("merge") or {})
    for name, variant in (cfg.merge_variants or {}).items():
        variant = OmegaConf.to_container(variant, resolve=True)
        base = variant.pop("base", None)
        path = conf_dir() / f"{base}.yaml"
        if base is None or not path.is_file():
            raise ConfigError(f"merge_variants.{name}.base must name a file of conf/merge/ "
                              f"({', '.join(available())}), got {base!r}")
        base_cfg = methods[base] if base in methods else OmegaConf.load(path)
        unknown = [k for k in variant if k not in base_cfg and k != ALIGN_KEY]
        if unknown:
            raise ConfigError(f"merge_variants.{name}: {base} has no option(s) {unknown}")
        align = variant.pop(ALIGN_KEY, None)
        methods[name] = OmegaConf.merge(base_cfg, variant)
        if align is not None:
            with open_dict(methods[name]):
                methods[name][ALIGN_KEY] = align
    return methods


ALIGN_KEY = "align"   # accepted by every method: the pre-merge alignment, not an option of the function


def make_kway_loss(ctx, per_source: int, split: str):
    """state dict -> mean over sources of the k-way cross-entropy of each row's true caption among the captions
    of every label of its source (what `pm_cls_*` scores), on fixed rows of `split`. On shared images with
    captions that teach different things (easy-VQA's views) the caption NLL rewards hedging between the views,
    while this asks what alignment is for: does the image pick its own caption among its source's."""
    from pivotmerge.models.scoring import score_choices
    from pivotmerge.pipeline.data import instructions

    mllm, instruction = ctx.mllm, instructions(ctx.cfg)[0]
    problems = []
    for name, feats in ctx.features.items():
        rows = min(per_source, feats.features[split].shape[0])
        vocabulary = sorted(set(ctx.sources[name].labels()))
        captions = [ctx.sources[name].caption(label, 0) for label in vocabulary]
        truth = torch.tensor([vocabulary.index(label) for label in feats.labels[split][:rows]])
        problems.append((feats.features[split][:rows], captions, truth))

    @memoised_by_state
    @torch.no_grad()
    def per_row(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each source's rows' k-way cross-entropies (the loss is the mean over sources of their means)."""
        out = []
        with projector_swapped(mllm, state):
            for features, captions, truth in problems:
                scores = torch.tensor(score_choices(mllm, features, [instruction] * len(truth),
                                                    [captions] * len(truth)))
                out.append(torch.nn.functional.cross_entropy(scores, truth, reduction="none").double())
        return out

    def kway_loss(state: dict[str, torch.Tensor]) -> float:
        rows = per_row(state)
        return float(sum(r.mean() for r in rows) / len(rows))

    kway_loss.per_row = per_row   # for guarded_loss's noise margin
    return kway_loss


def gain_over_noise(reference_rows: list[torch.Tensor], rows: list[torch.Tensor]) -> tuple[float, float]:
    """(mean gain, its standard error) of `rows` over `reference_rows`, paired row by row, with the loss's
    weighting (each source's mean counts alike): gain = mean over sources of mean(reference - rows)."""
    gain, variance = 0.0, 0.0
    for ref, new in zip(reference_rows, rows):
        d = ref - new
        gain += float(d.mean()) / len(rows)
        variance += (float(d.var()) / len(d) if len(d) > 1 else 0.0) / len(rows) ** 2
    return gain, variance ** 0.5


def guarded_loss(objective, guard, reference: dict[str, torch.Tensor], noise_se: float = 0.0):
    """`objective`, but only where `guard` is no worse than at `reference` (the pivot): elsewhere
    max(objective, objective(reference)) + the guard's excess, so that every such state loses to the reference.

    A search that has the reference among its candidates (PivotMerge's layer search: weight 0) then never
    leaves it for a state that is better on the objective and worse on the guard - with objective = the k-way
    loss and guard = the caption NLL, "never worse than its pivot" holds on both on the calibration rows. The
    guard is measured on every state: its pass scores one caption per row where the k-way loss scores k.

    ``noise_se`` > 0 (needs ``objective.per_row``): the loss also carries ``accepts(state)``, the test a search's
    final state must pass against the reference - a gain on the objective beyond ``noise_se`` standard errors
    of its paired per-row gain. It is a test of the end point, not a penalty along the way: a penalty on every
    state stops a coordinate search at its first small step (v7 as first built kept a near-chance pivot)."""
    limits: list = []
    if noise_se > 0 and not hasattr(objective, "per_row"):
        raise ConfigError("calibration.guard_se > 0 needs a loss with per-row values (loss_kind: kway_guarded)")

    def reference_values() -> list:
        if not limits:
            limits.extend((float(objective(reference)), float(guard(reference))))
        return limits

    def loss(state: dict[str, torch.Tensor]) -> float:
        reference_objective, reference_guard = reference_values()
        excess = float(guard(state)) - reference_guard
        value = float(objective(state))
        return value if excess <= 0 else max(value, reference_objective) + excess

    if noise_se > 0:
        reference_rows: list = []

        def accepts(state: dict[str, torch.Tensor]) -> bool:
            if not reference_rows:
                reference_rows.extend(objective.per_row(reference))
            gain, se = gain_over_noise(reference_rows, objective.per_row(state))
            accepts.last = {"gain": gain, "se": se, "noise_se": noise_se}
            return gain > noise_se * se

        loss.accepts = accepts
    return loss


class MergeInputs:
    """What a merge method may ask for besides (pivot, experts), built once per seed and only when needed:
    `calibration` (per-expert statistics of its TRAIN split; the Fisher too for methods that declare it),
    `calibration_loss` (the caption loss on fixed rows of `calibration.loss_split`), the VAL loss of the
    option search, and the experts aligned into the pivot's frame (per `align` mode)."""

    def __init__(self, ctx, expert_names: list[str], pivot=None, experts=None):
        self.ctx, self.expert_names = ctx, expert_names
        self.pivot, self.experts = pivot, experts
        self._stats = self._stats_keys = self._fisher = self._fisher_keys = None
        self._losses: dict[str, object] = {}
        self._aligned: dict[str, list] = {}

    def aligned(self, mode: str) -> list:
        """The experts in the pivot's frame (pivotmerge/merging/align.py), computed once per mode."""
        statistics = self.stats(False)[0] if mode == "activations" else None
        return aligned_experts(self.pivot, self.experts, mode, statistics, self._aligned)

    def stats(self, fisher: bool):
        from pivotmerge.pipeline.calibration import expert_fisher, expert_statistics

        if self._stats is None:
            self._stats, self._stats_keys = expert_statistics(self.ctx, self.expert_names)
        if not fisher:
            return self._stats, self._stats_keys
        if self._fisher is None:
            self._fisher, self._fisher_keys = expert_fisher(self.ctx, self.expert_names)
        with_fisher = [dataclasses.replace(s, fisher=f) for s, f in zip(self._stats, self._fisher)]
        return with_fisher, {**self._stats_keys, **{f"fisher:{k}": v for k, v in self._fisher_keys.items()}}

    def loss(self, split: str = "val", kind: str = "caption"):
        """The caption NLL (`caption`, what the option search compares), the k-way loss (`kway`) or the k-way
        loss guarded by the caption NLL against the pivot's (`kway_guarded`, `guarded_loss`)."""
        if (split, kind) not in self._losses:
            if kind == "kway_guarded":
                loss = guarded_loss(self.loss(split, "kway"), self.loss(split, "caption"), self.pivot,
                                    float(self.ctx.cfg.calibration.guard_se))
            else:
                make = make_kway_loss if kind == "kway" else make_calibration_loss
                loss = make(self.ctx, int(self.ctx.cfg.calibration.per_source), split)
            self._losses[(split, kind)] = loss
        return self._losses[(split, kind)]

    def for_method(self, fn, options: dict) -> tuple[dict, dict]:
        """(keyword arguments of `merge`, their identity for the cache key) for what method `fn` takes with
        `options` (the Fisher only where those options need it, so other readings keep their keys)."""
        spec = spec_of(fn)
        kwargs, identity = {}, {}
        if "calibration" in spec.takes:
            kwargs["statistics"], identity["calibration"] = self.stats(spec.needs_fisher(options))
        if "calibration_loss" in spec.takes:
            split, kind = str(self.ctx.cfg.calibration.loss_split), str(self.ctx.cfg.calibration.loss_kind)
            kwargs["calibration_loss"] = self.loss(split, kind)
            identity["calibration_loss"] = {"per_source": int(self.ctx.cfg.calibration.per_source), "split": split,
                                            **({"kind": kind} if kind != "caption" else {}),
                                            # noise_test: the margin's first build (a per-state penalty)
                                            # cached merges under the same guard_se; they must not be reused
                                            **({"guard_se": float(self.ctx.cfg.calibration.guard_se),
                                                "noise_test": "end_point"}
                                               if kind == "kway_guarded" and self.ctx.cfg.calibration.guard_se else {}),
                                            "features": {n: a.key for n, a in self.ctx.feature_artifacts.items()}}
        return kwargs, identity


def run(ctx) -> None:
    cfg = ctx.cfg
    if ctx.pivot is None or not ctx.experts:
        raise ConfigError("the merge stage needs the pivot and experts stages: add them to `stages`")
    methods = expand_variants(cfg)
    if not methods:
        print("[   merge] no merge methods selected (merge=[...]): skipped", flush=True)
        return
    pivot = ctx.projector(ctx.pivot)
    expert_names = list(ctx.experts)
    subset = cfg.num_experts_merged
    if subset is not None:
        if not 1 <= int(subset) <= len(expert_names):
            raise ConfigError(f"num_experts_merged={subset} must be between 1 and {len(expert_names)}")
        expert_names = expert_names[:int(subset)]
    ctx.merge_experts = expert_names
    experts = [ctx.projector(ctx.experts[n]) for n in expert_names]
    inputs = MergeInputs(ctx, expert_names, pivot, experts)
    search = cfg.merge_search
    selections = {}
    for name, method_cfg in methods.items():
        if "_target_" not in method_cfg:
            raise ConfigError(f"merge.{name} has no _target_: select methods with merge=[...] from conf/merge/")
        options = {k: v for k, v in OmegaConf.to_container(method_cfg, resolve=True).items()
                   if not k.startswith("_")}
        align = str(options.pop(ALIGN_KEY, cfg.align))
        method_cfg = OmegaConf.create({k: v for k, v in method_cfg.items() if k != ALIGN_KEY})
        fn = import_target(method_cfg._target_, f"merge.{name}")
        check_options(fn, options, f"merge.{name}")
        aligned = inputs.aligned(align)
        held = None
        if search.enabled:
            options, table, held = select_options(ctx, name, method_cfg, options, search, pivot, aligned, inputs,
                                                  align)
            selections[name] = {"chosen": options, "candidates": table}
        kwargs, identity = inputs.for_method(fn, options)
        spec = {"pivot": ctx.pivot.key, "experts": {n: ctx.experts[n].key for n in expert_names},
                "target": method_cfg._target_, "options": options, **identity,
                **({ALIGN_KEY: align} if align != "none" else {})}
        ctx.merged[name] = ctx.produce("merge", name, ctx.store.entry, "merge", spec, functools.partial(
            _merge_into, name, fn, kwargs, options, pivot, aligned, expert_names, align, held=held))
    if selections:
        path = ctx.output_dir / f"selection_seed{int(cfg.seed)}.json"
        path.write_text(json.dumps(selections, indent=2, default=str))
        print(f"[   merge] hyperparameters selected on val splits (budget {search.get('budget')}): {path}")
        if search.val_check:
            _val_check(ctx, inputs)
    if cfg.merge_diagnostics.lmc:
        _connectivity(ctx, pivot, dict(zip(expert_names, experts)), inputs)


VAL_CHECK_KINDS = ("caption", "kway")


def val_losses(ctx, inputs: MergeInputs, artifact) -> tuple[dict[str, float], bool]:
    """The VAL losses of one stored projector on the option search's rows: the caption NLL (what the search
    compares) and the k-way loss (what pm_cls_* scores), each cached under the projector's key; and whether
    any had to be computed."""
    out, ran = {}, False
    for kind in VAL_CHECK_KINDS:
        spec = {"scored": artifact.key, "loss": kind, "split": "val", "per_source": int(ctx.cfg.calibration.per_source),
                "features": {n: a.key for n, a in ctx.feature_artifacts.items()}}
        loss_fn = inputs.loss("val", kind)

        def score(staging, loss_fn=loss_fn):
            (staging / "score.json").write_text(json.dumps({"val_loss": loss_fn(ctx.projector(artifact))}))

        entry = ctx.store.entry("select", spec, score)
        ran = ran or not entry.reused
        out[kind] = round(json.loads((ctx.store.verify("select", entry.key) / "score.json").read_text())["val_loss"], 5)
    return out, ran


def _val_check(ctx, inputs: MergeInputs) -> None:
    """Every selected merge against its pivot on VAL (val_check_seed<n>.json): a merge whose VAL losses exceed
    the pivot's made the model worse than the projector it started from, before any test item is read."""
    from pivotmerge.model_id import PIVOT, ModelId

    started = time.perf_counter()
    scored = {str(PIVOT): val_losses(ctx, inputs, ctx.pivot)}
    for name, artifact in ctx.merged.items():
        scored[str(ModelId.merge(name))] = val_losses(ctx, inputs, artifact)
    losses = {model: row for model, (row, _) in scored.items()}
    ran = any(computed for _, computed in scored.values())
    ctx.log.add("select", "VAL check", None, time.perf_counter() - started,
                f"{len(losses)} projectors x {len(VAL_CHECK_KINDS)} losses", reused=not ran)
    reference = losses[str(PIVOT)]
    worse = {kind: sorted(m for m, row in losses.items() if row[kind] > reference[kind])
             for kind in VAL_CHECK_KINDS}
    path = ctx.output_dir / f"val_check_seed{int(ctx.cfg.seed)}.json"
    path.write_text(json.dumps({"rows_per_source": int(ctx.cfg.calibration.per_source), "losses": losses,
                                "above_pivot": worse}, indent=2))
    print(f"[   merge] VAL vs the pivot ({', '.join(f'{k} {v:.4f}' for k, v in reference.items())}): "
          + "; ".join(f"{len(worse[k])} of {len(losses) - 1} merges above it by {k}" for k in VAL_CHECK_KINDS)
          + f": {path}", flush=True)


def _connectivity(ctx, pivot, experts: dict, inputs: MergeInputs) -> None:
    import shutil

    from pivotmerge.pipeline.lmc import run_lmc

    artifact = run_lmc(ctx, pivot, experts, inputs.loss(), int(ctx.cfg.merge_diagnostics.lmc_points))
    folder = ctx.output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f"_seed{int(ctx.cfg.seed)}" if ctx.cfg.seeds else ""
    shutil.copy2(artifact.path / "lmc.png", folder / f"loss_barriers{suffix}.png")
    shutil.copy2(artifact.path / "lmc.json", folder / f"loss_barriers{suffix}.json")


@dataclasses.dataclass
class HeldMerge:
    """A merge the option search already computed (its projector, diagnostics and merge time), so that the
    chosen candidate is not merged a second time: for PivotMerge each merge is a layer search (minutes)."""
    options: dict
    merged: dict
    diagnostics: dict
    seconds: float


def _merged(fn, kwargs, options, pivot, experts) -> HeldMerge:
    started = time.perf_counter()
    diagnostics: dict = {}
    merged = merge(fn, pivot, experts, options, **kwargs, diagnostics=diagnostics)
    return HeldMerge(dict(options), merged, diagnostics, time.perf_counter() - started)


def _merge_into(name, fn, kwargs, options, pivot, experts, expert_names, align: str, staging,
                held: HeldMerge | None = None) -> None:
    from pivotmerge.merging.diagnostics import collect, write_diagnostics

    if held is None or held.options != options:
        held = _merged(fn, kwargs, options, pivot, experts)
    merged, diagnostics, seconds = held.merged, held.diagnostics, held.seconds
    save_file({k: v.contiguous() for k, v in merged.items()}, str(staging / PROJECTOR_FILE))
    collect(pivot, experts, merged, diagnostics)
    diagnostics["experts"] = expert_names
    diagnostics[ALIGN_KEY] = align
    write_diagnostics(diagnostics, staging / "diagnostics")
    (staging / "metrics.json").write_text(json.dumps({"method": name, "options": options,
                                                      "merge_seconds": round(seconds, 3)}, indent=2))


def select_options(ctx, name, method_cfg, options, search, pivot, experts, inputs: MergeInputs, align: str):
    """Pick the options with the lowest VAL caption loss among `budget` candidates (cached per candidate);
    also the chosen candidate's merge when this search computed it (else None)."""
    fn = import_target(method_cfg._target_, f"merge.{name}")
    candidates = candidate_options(options, search_grid(ctx.cfg, name, fn), int(search.budget))
    loss_fn = inputs.loss()
    table, started, ran = [], time.perf_counter(), False
    best, held = None, None   # the lowest VAL loss so far (the first of equal ones), and its merge if computed here
    for candidate in candidates:
        kwargs, identity = inputs.for_method(fn, candidate)
        spec = {"pivot": ctx.pivot.key, "experts": {n: ctx.experts[n].key for n in ctx.merge_experts},
                "target": method_cfg._target_, "options": candidate, "per_source": int(ctx.cfg.calibration.per_source),
                "features": {n: a.key for n, a in ctx.feature_artifacts.items()}, **identity,
                **({ALIGN_KEY: align} if align != "none" else {})}

        computed: list[HeldMerge] = []

        def score(staging, fn=fn, kwargs=kwargs, candidate=candidate, computed=computed):
            computed.append(_merged(fn, kwargs, candidate, pivot, experts))
            loss = loss_fn(computed[-1].merged)
            (staging / "score.json").write_text(json.dumps({"val_loss": loss}))

        entry = ctx.store.entry("select", spec, score)
        ran = ran or not entry.reused
        loss = json.loads((ctx.store.verify("select", entry.key) / "score.json").read_text())["val_loss"]
        table.append({"options": candidate, "val_loss": round(loss, 5)})
        if best is None or table[-1]["val_loss"] < best["val_loss"]:
            best, held = table[-1], (computed[-1] if computed else None)
    changed = {k: v for k, v in best["options"].items() if options.get(k) != v}
    # the search merges and scores every candidate: for PivotMerge each is a layer search (minutes, README)
    note = f"{len(table)} candidates, best val loss {best['val_loss']:.4f} {changed or ''}".rstrip()
    ctx.log.add("select", name, None, time.perf_counter() - started, note, reused=not ran)
    return best["options"], table, held


STAGE = Stage("merge", run, needs=("experts",), produces={"merged": dict, "merge_experts": list},
              config={"calibration": CalibrationSchema, "merge_search": MergeSearchSchema,
                      "merge_diagnostics": MergeDiagnosticsSchema}, lineage=entries_run)
