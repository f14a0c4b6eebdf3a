"""File-system faults and bad paths end with one `error:` line and exit code 2, never a traceback, and never
leave a complete-looking cache entry behind: unknown config names, folders that cannot be created or written,
too little free space, and a disk full / permission / read-only / vanished-file fault in the middle of a stage
(after which the next run continues from the last complete entry).

Each case runs `python run.py` in this process (`pivotmerge.run.main`) with the data stage of tiny splits."""
from __future__ import annotations

import errno
import os
import shutil
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from pivotmerge import artifacts
from pivotmerge.preflight import paths as preflight_paths
from pivotmerge.run import main
from tests.helpers import CONF

TINY = ["logger=none", "stages=[data]", "scenario.sources=[digits,words]", "data.split.train=24",
        "data.split.val=8", "data.split.test=8", "data.sources.words.count=60"]
Outcome = namedtuple("Outcome", "code errors out err")


@pytest.fixture
def run_py(tmp_path, monkeypatch, capsys):
    """`python run.py <overrides>` with everything under tmp_path: its exit code, `error:` lines and stdout."""
    def invoke(*overrides: str) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["run.py", f"paths.root={tmp_path}", f"paths.cache_dir={tmp_path}/cache",
                                          f"paths.models_dir={tmp_path}/models", f"hydra.run.dir={tmp_path}/out",
                                          *TINY, *overrides])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        finally:
            GlobalHydra.instance().clear()
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err[-3000:]
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        return Outcome(code, errors, captured.out, captured.err)

    return invoke


def complete_entries(cache: Path) -> list[Path]:
    """Cache entries that look finished: a folder with a manifest, not staging."""
    return [p.parent for p in cache.glob("*/*/manifest.json") if not p.parent.name.endswith(".partial")] \
        if cache.exists() else []


# ---- unknown names in a config group ----------------------------------------------------------------------
@pytest.mark.parametrize("override, group, some_names", [
    ("merge=[nonexistent]", "merge", "pivotmerge, pivotmerge_data_free, regmean"),
    ("data=nonexistent", "data", "cc12m, embedded, llava558k"),
    ("model=nonexistent", "model", "embedded, llava15_7b"),
    ("scenario=nonexistent", "scenario", "diverse, embedded, similar"),
    ("experiment=nonexistent", "experiment", "paper_table, pivotmerge_vs_ties"),
])
def test_unknown_config_name_lists_the_names_that_exist(run_py, tmp_path, override, group, some_names):
    result = run_py(override)
    assert result.code == 2 and len(result.errors) == 1, result
    assert f"error: {override}: conf/{group}/ has no 'nonexistent'; the " in result.errors[0]
    assert some_names in result.errors[0]
    assert not (tmp_path / "cache").exists()


def test_every_merge_method_is_listed(run_py):
    listed = run_py("merge=[ties,nonexistent]").errors[0].split("exist: ")[1].split(", ")
    assert listed == sorted(p.stem for p in (CONF / "merge").glob("*.yaml"))
    assert len(listed) == 15


# ---- folders the run cannot create or write ---------------------------------------------------------------
def test_cache_dir_that_cannot_be_created(run_py, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_py(f"paths.cache_dir={tmp_path}/a-file/cache")
    assert result.code == 2 and len(result.errors) == 1, result
    assert f"config paths.cache_dir={tmp_path}/a-file/cache: {tmp_path}/a-file is not a folder" in result.errors[0]
    assert not (tmp_path / "cache").exists() and (tmp_path / "a-file").read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_cache_dir_under_proc(run_py, tmp_path):
    result = run_py("paths.cache_dir=/proc/forbidden")
    assert result.code == 2 and len(result.errors) == 1, result
    assert "config paths.cache_dir=/proc/forbidden: it cannot be created (in /proc)" in result.errors[0]


@pytest.mark.parametrize("key", ["paths.cache_dir", "paths.models_dir", "logger.wandb.dir"])
def test_unwritable_folder_is_named_with_its_key(run_py, tmp_path, key):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if preflight_paths.unusable(locked) is None:
            pytest.skip("this user (root?) can write into a read-only folder")
        result = run_py(f"{key}={locked}", *(["logger=wandb"] if key.startswith("logger") else []))
    finally:
        locked.chmod(0o700)
    assert result.code == 2 and len(result.errors) == 1, result
    assert f"config {key}={locked}: it cannot be written: Permission denied" in result.errors[0]
    assert not list(locked.iterdir())


def test_probe_writes_nothing(tmp_path):
    assert preflight_paths.unusable(tmp_path / "new" / "cache") is None
    assert list(tmp_path.iterdir()) == []


# ---- free space -------------------------------------------------------------------------------------------
def fake_free(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(preflight_paths.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=free))


def test_disk_below_the_floor_is_refused_before_any_work(run_py, tmp_path, monkeypatch):
    fake_free(monkeypatch, 1 << 20)
    result = run_py()
    assert result.code == 2 and len(result.errors) == 1, result
    assert "only 1.0 MB free on its file system, and this run writes ~" in result.errors[0]
    assert "paths.cache_dir/paths.models_dir/paths.output_dir=" in result.errors[0]
    assert not (tmp_path / "cache").exists()


def test_disk_below_the_estimate_warns_and_runs(run_py, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight_paths, "FLOOR_BYTES", 1 << 20)
    fake_free(monkeypatch, 2 << 20)
    result = run_py()
    assert result.code == 0, result
    assert "[preflight] WARNING: paths.cache_dir/paths.models_dir/paths.output_dir=" in result.err
    assert "has 2.0 MB free and this run writes ~" in result.err
    assert len(complete_entries(tmp_path / "cache")) == 2


def test_estimate_grows_with_the_plan(tmp_path, tiny_model_cfg):
    from tests.helpers.compose import compose_cfg

    data = compose_cfg(tmp_path, tiny_model_cfg, ["stages=[data]"])
    everything = compose_cfg(tmp_path, tiny_model_cfg, ["stages=[data,features,pivot,experts,merge,eval]",
                                                        "seeds=[0,1]"])
    small, big = preflight_paths.planned_bytes(data), preflight_paths.planned_bytes(everything)
    assert 0 < small["paths.cache_dir"] < big["paths.cache_dir"]
    assert small["paths.models_dir"] == 0


# ---- faults in the middle of a stage ----------------------------------------------------------------------
FAULTS = {   # errno -> the message the one line carries
    errno.ENOSPC: "No space left on device", errno.EACCES: "Permission denied",
    errno.EROFS: "Read-only file system",
}


@pytest.mark.parametrize("code", sorted(FAULTS), ids=[errno.errorcode[c] for c in sorted(FAULTS)])
def test_write_fault_mid_stage_leaves_partial_and_the_next_run_continues(run_py, tmp_path, monkeypatch, code):
    """The second source's entry fails while its manifest is being written (half of it on disk)."""
    real = artifacts.write_manifest
    calls = []

    def failing_write(folder: Path, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 2:
            (folder / artifacts.MANIFEST).write_text('{"files": {"dataset/')   # cut off by the fault
            raise OSError(code, os.strerror(code), str(folder / artifacts.MANIFEST))
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(artifacts, "write_manifest", failing_write)
    result = run_py()
    cache = tmp_path / "cache"
    assert result.code == 2 and len(result.errors) == 1, result
    broken = calls[1]
    assert result.errors[0].startswith(f"error: stage data, entry {broken} (left .partial, never reused): "
                                       f"{type(OSError(code, '')).__name__}: [Errno {code}] {FAULTS[code]}: "
                                       f"'{broken}/manifest.json'")
    assert broken.name.endswith(".partial") and broken.exists()
    assert [p.name for p in complete_entries(cache)] == [calls[0].name.removesuffix(".partial")]   # the first only

    monkeypatch.setattr(artifacts, "write_manifest", real)
    again = run_py()
    assert again.code == 0, again
    statuses = [line.split()[2:4] for line in again.out.splitlines() if line.startswith("[    data]")]
    assert statuses == [["digits", "reused"], ["words", "ran"]], again.out
    assert len(complete_entries(cache)) == 2 and not list(cache.glob("data/*.partial"))


def test_staging_folder_removed_by_a_concurrent_clean_cache(run_py, tmp_path, monkeypatch):
    """`make clean-cache` (rm -rf) in another terminal while the entry is being committed."""
    real = artifacts.write_manifest

    def vanishing_write(folder: Path, *args, **kwargs):
        shutil.rmtree(folder.parents[1])   # the whole cache folder, as clean-cache does
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(artifacts, "write_manifest", vanishing_write)
    result = run_py()
    assert result.code == 2 and len(result.errors) == 1, result
    assert result.errors[0].startswith("error: stage data, entry ")
    assert "(left .partial, never reused): FileNotFoundError: [Errno 2] No such file or directory:" in result.errors[0]
    assert complete_entries(tmp_path / "cache") == []

    monkeypatch.setattr(artifacts, "write_manifest", real)
    assert run_py().code == 0
    assert len(complete_entries(tmp_path / "cache")) == 2


def test_os_error_outside_a_cache_entry_names_the_stage(run_py, tmp_path, monkeypatch):
    from pivotmerge.pipeline import runner

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "run_info.json"))

    monkeypatch.setattr(runner, "write_run_info", full_disk)
    result = run_py()
    assert result.code == 2 and len(result.errors) == 1, result
    assert result.errors[0] == (f"error: stage setup: OSError: [Errno 28] No space left on device: "
                                f"'{tmp_path}/out/run_info.json'; free space or fix the path, then run again: it "
                                "continues from the last complete entry")
    assert not (tmp_path / "cache").exists()


# ---- real file systems: a full tmpfs, a read-only mount (root only; skipped where mount is not permitted) -----
@pytest.fixture
def mounted(tmp_path):
    """mount(options) -> a fresh tmpfs under tmp_path, unmounted afterwards."""
    mounts = []

    def mount(options: str) -> Path:
        import subprocess

        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs is not permitted here")
        mounts.append(target)
        return target

    yield mount
    import subprocess

    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_full_tmpfs_mid_stage(run_py, mounted, monkeypatch):
    disk = mounted("size=48k")
    monkeypatch.setattr(preflight_paths, "FLOOR_BYTES", 0)   # past the preflight, to fill the disk in a stage
    result = run_py(f"paths.cache_dir={disk}/cache")
    assert result.code == 2 and len(result.errors) == 1, result
    assert result.errors[0].startswith("error: stage data, entry ") and "No space left on device" in result.errors[0]
    entry = Path(result.errors[0].split("entry ")[1].split(" (left .partial")[0])
    assert entry.name.endswith(".partial") and not entry.with_name(entry.name.removesuffix(".partial")).exists()
    assert all(artifacts.folder_problem(p) is None for p in complete_entries(disk / "cache"))   # what fitted


def test_read_only_mount_is_refused(run_py, mounted):
    disk = mounted("size=64k,ro")
    result = run_py(f"paths.cache_dir={disk}/cache")
    assert result.code == 2 and len(result.errors) == 1, result
    assert f"config paths.cache_dir={disk}/cache: it cannot be created (in {disk}): Read-only file system" \
        in result.errors[0]


def test_run_folder_disk_full_mid_stage(run_py, tmp_path, monkeypatch):
    """The run folder's run.log (every printed line goes there too) on a disk that fills up during a stage."""
    from pivotmerge import logs

    class FillingFile:
        def __init__(self, path, *args, **kwargs):
            self.file = open(path, *args, **kwargs)

        def write(self, text):
            if "[    data]" in text:   # the data stage's first line: the disk is full from here on
                self.write = self.full
            return self.write(text)

        def full(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "run.log")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(logs, "open", FillingFile, raising=False)
    result = run_py()
    assert result.code == 2 and len(result.errors) == 1, result
    assert result.errors[0].startswith("error: stage data") and "No space left on device: 'run.log'" in result.errors[0]
    assert all(artifacts.folder_problem(p) is None for p in complete_entries(tmp_path / "cache"))
