"""Weights & Biases: offline by default, every file under the run folder, one group per experiment.

Lineage. Every cache entry (pivotmerge/artifacts.py) a run reads or writes is a W&B *reference* artifact named
`<stage>[-<label>]-<content key>` whose files point into the cache folder (`file://...`, checksummed): nothing
is copied or uploaded, and one cache entry is one artifact in every run and experiment. A run logs the
entries its stage produced as outputs and declares as inputs the entries their specs name (a spec holds the
content keys of everything the entry was made from), plus the reused entries it read. So the lineage graph
holds data -> features -> pivot -> experts -> merges -> evaluations -> results store -> table.

Reused entries. The runs of one run folder are uploaded together (`sync_hint`), so a run folder must hold the
lineage of everything its runs use: before a run declares an entry that no run of this folder has logged (a
warm run reuses everything, a sweep reuses the experts), `link_cached` logs it - and, first, what it was made
from - in one run per stage, `<stage>-from-cache-seed<seed>`, declaring each entry's inputs as the first
run did. Same name, same digest: W&B keeps one version, whichever run logged it first. Roots (entries
made from no other entry, e.g. data) need no such run: a use records them. The eval run also declares the
projectors it scored, made or reused. `lineage.txt` next to the offline runs lists what this folder logged.

Offline: `run.use_artifact` raises "Cannot use artifact when in offline mode" (wandb 0.25), so an offline
run gets the record that online `use_artifact(<draft artifact>)` sends - the artifact, flagged user-created
and use-after-commit - in its transaction log (`.wandb`); `wandb sync` replays it as a use of the version
with the same digest. `read_run_records` reads those logs back (tests, debugging).
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

# W&B artifact type of each cache stage (`select` entries are search scores: not logged).
ARTIFACT_TYPES = {"data": "dataset", "features": "features", "pivot": "projector", "expert": "projector",
                  "joint": "projector", "merge": "projector", "sft": "projector", "eval_suite": "benchmark",
                  "eval": "evaluation"}
# Built-in cache kinds that are a stage's working state, not a result anyone downloads: no W&B artifact. A kind
# a new stage declares (`Stage.caches`) is logged with its own name as the artifact type.
NOT_LOGGED = frozenset({"select", "stats", "fisher", "lmc"})
_KEY = re.compile(r"[0-9a-f]{16}")


def configure_wandb_env(cfg) -> None:
    """Keep W&B files under the run's output folder and default to offline mode."""
    if not cfg.logger.wandb.enabled:
        os.environ.setdefault("WANDB_MODE", "disabled")
        return
    run_dir = Path(cfg.logger.wandb.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = str(cfg.logger.wandb.mode)
    os.environ["WANDB_DIR"] = str(run_dir)
    os.environ["WANDB_CACHE_DIR"] = str(run_dir / "wandb-cache")
    os.environ["WANDB_CONFIG_DIR"] = str(run_dir / "wandb-config")
    os.environ.setdefault("WANDB_SILENT", "true")


def enabled(cfg) -> bool:
    return cfg.get("logger") is not None and bool(cfg.logger.wandb.enabled)


def lightning_logger_factory(cfg):
    """A factory (stage, name) -> WandbLogger, or None when W&B is disabled."""
    if not enabled(cfg):
        return None
    from lightning.pytorch.loggers import WandbLogger
    from omegaconf import OmegaConf

    def make(stage: str, name: str):
        return WandbLogger(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
                           group=str(cfg.logger.wandb.group), name=f"{stage}-{name}-seed{cfg.seed}",
                           job_type=stage, save_dir=str(cfg.logger.wandb.dir),
                           offline=cfg.logger.wandb.mode == "offline",
                           config=OmegaConf.to_container(cfg, resolve=True), reinit=True)

    return make


def start_run(cfg, job_type: str, name: str, *, reinit: str = "finish_previous"):
    """A plain wandb run (features/merge/eval/report stages); None when disabled. `reinit="create_new"` leaves
    a run that is still open (a training run's) as it is."""
    if not enabled(cfg):
        return None
    import wandb
    from omegaconf import OmegaConf

    return wandb.init(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
                      group=str(cfg.logger.wandb.group), job_type=job_type, name=name,
                      dir=str(cfg.logger.wandb.dir), mode=str(cfg.logger.wandb.mode),
                      config=OmegaConf.to_container(cfg, resolve=True), reinit=reinit)


def sync_hint(cfg) -> str:
    """The command that uploads this run folder's offline runs, oldest first so that producers precede the
    runs that use their artifacts ('' when online)."""
    import shlex

    if str(cfg.logger.wandb.mode) != "offline":
        return ""
    return f"wandb sync {shlex.quote(str(Path(cfg.logger.wandb.dir) / 'wandb'))}/offline-run-*"


# ---- cache entries as reference artifacts ---------------------------------------------------------------
def _spec(entry) -> dict:
    from pivotmerge.artifacts import MANIFEST

    return json.loads((Path(entry.path) / MANIFEST).read_text())["spec"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def entry_inputs(store, spec) -> list:
    """The cache entries a spec names: every content key in it that is an entry of some stage."""
    from pivotmerge.artifacts import MANIFEST, Artifact

    found, seen = [], set()

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and _KEY.fullmatch(value) and value not in seen:
            for stage in ARTIFACT_TYPES:   # a committed entry (loaders verify contents; lineage only names it)
                if (store.folder(stage, value) / MANIFEST).is_file():
                    seen.add(value)
                    found.append(Artifact(stage, value, store.folder(stage, value), reused=True))
                    break

    walk(spec)
    return found


def entry_label(store, entry) -> str:
    """A readable part of the artifact name, from the entry's own spec (so every run derives the same name)."""
    spec = _spec(entry)
    for field in ("name", "source"):           # data: source name; expert: its source
        if isinstance(spec.get(field), str):
            return spec[field]
    if isinstance(spec.get("target"), str):    # merge: the method function, e.g. ties_merge -> ties
        return spec["target"].rsplit(".", 1)[-1].removesuffix("_merge")
    if entry.stage == "features":              # features: the source of its data entry
        inputs = entry_inputs(store, spec)
        return entry_label(store, inputs[0]) if inputs else ""
    return ""


def artifact_name(stage: str, key: str, label: str = "") -> str:
    return "-".join([stage] + ([_safe(label)] if _safe(label) else []) + [key])


def cache_artifact(store, entry):
    """The W&B reference artifact of a cache entry (metadata: stage, content key, the spec = its config)."""
    import wandb

    label = entry_label(store, entry)
    kind = ARTIFACT_TYPES.get(entry.stage, entry.stage)
    artifact = wandb.Artifact(artifact_name(entry.stage, entry.key, label), type=kind,
                              metadata={"stage": entry.stage, "content_key": entry.key, "label": label,
                                        "spec": _spec(entry)})
    artifact.add_reference(Path(entry.path).resolve().as_uri())
    return artifact


def files_artifact(name: str, kind: str, paths: Iterable[Path], metadata: dict | None = None):
    """An artifact holding copies of small files that change later (results store, tables)."""
    import wandb

    artifact = wandb.Artifact(_safe(name), type=kind, metadata=metadata or {})
    for path in paths:
        path = Path(path)
        if path.is_dir():
            artifact.add_dir(str(path), name=path.name)
        elif path.is_file():
            artifact.add_file(str(path))
    return artifact


def results_artifact(results_dir: Path):
    """The results store of one run folder (`outputs/<experiment>/<time>/results`) as an artifact."""
    results_dir = Path(results_dir)
    run_folder = results_dir.parent
    return files_artifact(f"results-{run_folder.parent.name}-{run_folder.name}", "results",
                          sorted(results_dir.iterdir()), {"folder": str(results_dir.resolve())})


def use(run, artifact) -> None:
    """Declare `artifact` an input of `run` (offline: the record online use_artifact sends, see above)."""
    if run.offline:
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact)


# ---- what this run folder has logged (for link_cached) ----
def _lineage_file(wandb_root: str | Path) -> Path:
    """`<logger.wandb.dir>/wandb/lineage.txt`: beside the offline-run-* folders it describes."""
    return Path(wandb_root) / "wandb" / "lineage.txt"


def _run_root(run) -> Path:
    return Path(run.dir).parents[2]     # <root>/wandb/<offline-run-...>/files


def _logged(wandb_root) -> set[str]:
    path = _lineage_file(wandb_root)
    return set(path.read_text().split()) if path.is_file() else set()


def _note_logged(run, names: Iterable[str]) -> None:
    path = _lineage_file(_run_root(run))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(f"{name}\n" for name in names)


def link_cached(store, entries: Iterable, wandb_root, start) -> None:
    """Log the entries that `entries` are or were made from and that no run of this folder logged yet (module
    docstring): one run per stage, in pipeline order, each declaring its entries' inputs. `start(stage, name)`
    opens a run without closing one that is open."""
    logged = _logged(wandb_root)
    todo: dict = {}
    seen: set = set()

    def visit(entry) -> None:
        if (entry.stage, entry.key) in seen:
            return
        seen.add((entry.stage, entry.key))
        inputs = entry_inputs(store, _spec(entry))
        for item in inputs:
            visit(item)
        if inputs and artifact_name(entry.stage, entry.key, entry_label(store, entry)) not in logged:
            todo[(entry.stage, entry.key)] = entry

    for entry in entries:
        visit(entry)
    for stage in ARTIFACT_TYPES:
        group = [e for e in todo.values() if e.stage == stage]
        if group:
            run = start(stage, f"{stage}-from-cache")
            log_produced(run, store, group)
            run.finish()


def declare_used(run, store, entries: Iterable) -> None:
    for entry in entries:
        use(run, cache_artifact(store, entry))


def log_produced(run, store, entries: Iterable) -> None:
    """Log each produced cache entry as an output of `run`, after declaring the entries its spec names."""
    entries = list(entries)
    inputs = {}
    for entry in entries:
        inputs.update({(e.stage, e.key): e for e in entry_inputs(store, _spec(entry))})
    produced = {(e.stage, e.key) for e in entries}
    declare_used(run, store, [e for k, e in inputs.items() if k not in produced])
    artifacts = [cache_artifact(store, entry) for entry in entries]
    for artifact in artifacts:
        run.log_artifact(artifact)
    _note_logged(run, [a.name for a in artifacts])


def spec_inputs(store, entries: Iterable) -> list:
    return [item for entry in entries for item in entry_inputs(store, _spec(entry))]


def _warn(what: str, exc: Exception) -> None:
    # W&B is a record of the work, never a reason to lose it: a logging failure is reported, not raised.
    print(f"[   wandb] could not log {what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def log_stage_run(cfg, store, job_type: str, name: str, entries: Iterable = (), *, link_reused: bool = False,
                  inputs: Iterable = (), outputs: Iterable = (), summary: dict | None = None) -> None:
    """One W&B run for a stage's work: the cache `entries` it made are logged as outputs (with the entries
    their specs name as inputs); entries it reused from the cache are not logged by it, and are declared
    as inputs when `link_reused` (the stage read them). `inputs`: further entries it read. Whatever it
    declares that this run folder has not logged is logged first (`link_cached`). `outputs`: extra file
    artifacts; `summary`: the run's summary values. No run when the stage made nothing."""
    entries, outputs = list(entries), list(outputs)
    produced = [e for e in entries if not e.reused]
    if not enabled(cfg) or not (produced or outputs):
        return
    used = ([e for e in entries if e.reused] if link_reused else []) + list(inputs)
    try:
        seed, made_from = int(cfg.seed), spec_inputs(store, produced)
        link_cached(store, used + made_from, cfg.logger.wandb.dir,
                    lambda stage, run_name: start_run(cfg, stage, f"{run_name}-seed{seed}", reinit="create_new"))
        run = start_run(cfg, job_type, name)
        declared = {(e.stage, e.key) for e in produced + made_from}    # log_produced declares those
        declare_used(run, store, list({(e.stage, e.key): e for e in used if (e.stage, e.key) not in declared}
                                      .values()))
        log_produced(run, store, produced)
        for artifact in outputs:
            run.log_artifact(artifact)
        run.summary.update(summary or {})
        run.finish()
    except Exception as exc:  # noqa: BLE001 - see _warn
        _warn(f"the {job_type} run", exc)


def log_eval_run(cfg, store, models: dict, evaluated: dict, scores: dict, results_dir: Path) -> None:
    """The eval stage's run: its evaluations (made or reused) with the projectors and suite they read, the
    results store as output, and in the summary each model's primary scores next to the name of its projector
    artifact (`merge:ties/pm_pope`, `merge:ties/projector`): from a score to the projector in one click."""
    if not enabled(cfg):
        return
    summary = {}
    for model, values in scores.items():
        entry = models[model]
        summary[f"{model}/projector"] = artifact_name(entry.stage, entry.key, entry_label(store, entry))
        summary.update({f"{model}/{benchmark}": value for benchmark, value in values.items()})
    log_stage_run(cfg, store, "eval", f"eval-seed{int(cfg.seed)}", evaluated.values(), link_reused=True,
                  inputs=[models[m] for m in evaluated], outputs=[results_artifact(results_dir)], summary=summary)


def log_training_output(logger, store, entry) -> None:
    """Finish a training stage's W&B run (Lightning's WandbLogger) with its projector entry as output."""
    if logger is None:
        return
    import wandb

    run = logger.experiment
    if not isinstance(run, wandb.Run):   # the placeholder of a rank > 0
        return
    try:
        seed = re.search(r"-seed\d+$", run.name or "")

        def start(stage: str, name: str):   # beside the open training run, in its project, group and folder
            return wandb.init(project=run.project, entity=run.entity, group=run.group, job_type=stage,
                              name=name + (seed.group(0) if seed else ""), dir=str(_run_root(run)),
                              mode="offline" if run.offline else "online", reinit="create_new")

        link_cached(store, spec_inputs(store, [entry]), _run_root(run), start)
        log_produced(run, store, [entry])
    except Exception as exc:  # noqa: BLE001 - see _warn
        _warn(f"{entry.stage} {entry.key}", exc)
    try:
        run.finish()
    except Exception as exc:  # noqa: BLE001 - see _warn
        _warn(f"the end of the {entry.stage} run", exc)


def log_report_lineage(run, stores: Iterable[Path], files: Iterable[Path]) -> None:
    """The report run reads results stores and writes the table files (md/csv/tex/png/html)."""
    try:
        for store in stores:
            use(run, results_artifact(store))
        files = [Path(f) for f in files]
        if files:
            run_folder = files[0].parent.parent     # <run folder>/report/table.md
            run.log_artifact(files_artifact(f"table-{run_folder.parent.name}-{run_folder.name}", "table", files))
    except Exception as exc:  # noqa: BLE001 - see _warn
        _warn("the report's artifacts", exc)


def log_report_run(cfg, table, paths: dict[str, Path], stores: Iterable[Path] = ()) -> None:
    """The report stage's run: the table as a W&B table and summary (`<model>/<column>` = mean), the bar chart,
    and its lineage (results stores in, table files out)."""
    run = start_run(cfg, "report", f"report-{cfg.experiment_name}")
    if run is None:
        return
    import wandb

    cells = {(m, c): table.cell(m, c) for m in table.models for c in table.columns}
    data = [[m] + [None if cells[(m, c)] is None else cells[(m, c)].mean for c in table.columns]
            for m in table.models]
    run.log({"results": wandb.Table(columns=["model"] + table.columns, data=data)})
    for (model, column), cell in cells.items():
        if cell is not None:
            run.summary[f"{model}/{column}"] = cell.mean
    if "png" in paths:
        run.log({"scores": wandb.Image(str(paths["png"]))})
    log_report_lineage(run, stores, paths.values())
    where = run.url if getattr(run, "url", None) else run.dir
    run.finish()
    hint = f"  (offline: `{sync_hint(cfg)}` uploads every run)" if sync_hint(cfg) else ""
    print(f"  W&B: {where}{hint}", flush=True)


# ---- reading offline runs back --------------------------------------------------------------------------
def read_run_records(run_folder: Path, wait_s: float = 30.0) -> dict:
    """{'run': RunRecord, 'outputs': [ArtifactRecord], 'inputs': [ArtifactRecord], 'summary': dict,
    'complete': bool} of one offline run folder, read from its transaction log with wandb's own reader.
    `run.finish()` returns before wandb's writer process has flushed the log: wait up to `wait_s` for its
    exit record."""
    import time

    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal.datastore import DataStore

    deadline = time.monotonic() + wait_s
    while True:
        found: dict = {"run": None, "outputs": [], "inputs": [], "summary": {}, "complete": False}
        logs = list(Path(run_folder).glob("*.wandb"))
        if logs and logs[0].stat().st_size > 0:
            store = DataStore()
            store.open_for_scan(str(logs[0]))
            while (data := store.scan_data()) is not None:
                record = pb.Record()
                record.ParseFromString(data)
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    found["run"] = record.run
                elif kind == "exit":
                    found["complete"] = True
                elif kind == "summary":
                    for item in record.summary.update:
                        found["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
                elif kind == "artifact":
                    used = record.artifact.user_created and record.artifact.use_after_commit
                    found["inputs" if used else "outputs"].append(record.artifact)
        if found["complete"] or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
