"""`pivotmerge merge`: round trips through safetensors and torch .bin, summary, and clean failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pivotmerge.cli import main
from pivotmerge.io import CheckpointError, load_state_dict, save_state_dict
from tests.helpers import REPO
from tests.helpers.merging import merge
from tests.helpers.tiny_models import llava_projectors


@pytest.fixture()
def ckpts(tmp_path):
    pivot, experts = llava_projectors(seed=0, d_in=5, width=8)
    save_state_dict(pivot, tmp_path / "pivot.safetensors")
    save_state_dict(pivot, tmp_path / "pivot.bin")
    for i, e in enumerate(experts):
        save_state_dict(e, tmp_path / f"e{i}.bin")
        save_state_dict(e, tmp_path / f"e{i}.safetensors")
    return tmp_path, pivot, experts


@pytest.mark.parametrize("ext_in,ext_out", [("safetensors", "safetensors"), ("bin", "bin"), ("bin", "safetensors")])
def test_round_trip_matches_library(ckpts, capsys, ext_in, ext_out):
    d, pivot, experts = ckpts
    out = d / f"merged.{ext_out}"
    rc = main(["merge", "ties", "--base", str(d / f"pivot.{ext_in}"), "--experts",
               *[str(d / f"e{i}.{ext_in}") for i in range(3)], "--out", str(out), "density=0.5", "scope=tensor",
               "lam=1"])
    assert rc == 0
    got = load_state_dict(out)
    ref = merge("ties", pivot, experts, density=0.5, scope="tensor", lam=1.0)
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    text = capsys.readouterr().out
    assert "pivotmerge merge: ties" in text and "density=0.5" in text and "model.mm_projector.2" in text
    assert "time" in text and len(text.splitlines()) < 25


def test_pivotmerge_options_typed_and_diagnostics_written(ckpts, capsys):
    d, pivot, experts = ckpts
    rc = main(["merge", "pivotmerge_data_free", "--base", str(d / "pivot.bin"), "--experts", str(d / "e0.bin"),
               str(d / "e1.bin"), "weight_range=[0.2,1]", "filter=cosine", "--out", str(d / "m.safetensors"),
               "--diagnostics", str(d / "diag"), "rank_mode=energy", "energy=0.5"])
    assert rc == 0
    pivot = load_state_dict(d / "pivot.bin")
    ref = merge("pivotmerge_data_free", pivot, experts[:2], weight_range=[0.2, 1.0], filter="cosine",
                rank_mode="energy", energy=0.5)
    got = load_state_dict(d / "m.safetensors")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    diag = json.loads((d / "diag" / "diagnostics.json").read_text())
    assert diag["options"]["weight_range"] == [0.2, 1.0] and diag["options"]["filter"] == "cosine"
    assert (d / "diag" / "spectra.png").exists() and (d / "diag" / "layers.png").exists()


def _fails(argv, capsys, out, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for n in needles:
        assert n in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temp file left


def test_errors_exit_2_without_output(ckpts, capsys):
    d, pivot, experts = ckpts
    out = d / "out.safetensors"
    base = ["--base", str(d / "pivot.bin"), "--out", str(out)]
    two = ["--experts", str(d / "e0.bin"), str(d / "e1.bin")]
    _fails(["merge", "tis", *base, *two], capsys, out, "unknown merge method 'tis'", "ties")
    _fails(["merge", "ties", *base, *two, "densty=0.3"], capsys, out, "unknown option 'densty'", "density")
    _fails(["merge", "ties", *base, *two, "density=1.5"], capsys, out, "density=1.5", "[0, 1]")
    _fails(["merge", "dare_ta", *base, *two, "p=-0.2"], capsys, out, "p=-0.2")
    _fails(["merge", "ties", *base, "--experts", str(d / "e0.bin")], capsys, out, "at least two")
    _fails(["merge", "ties", *base, "--experts", str(d / "e0.bin"), str(d / "nope.bin")], capsys, out,
           "nope.bin", "not found")
    (d / "corrupt.bin").write_bytes(b"not a checkpoint")
    _fails(["merge", "ties", *base, "--experts", str(d / "e0.bin"), str(d / "corrupt.bin")], capsys, out,
           "corrupt.bin", "cannot read")
    (d / "trunc.safetensors").write_bytes((d / "e1.safetensors").read_bytes()[:100])
    _fails(["merge", "ties", *base, "--experts", str(d / "e0.bin"), str(d / "trunc.safetensors")], capsys, out,
           "trunc.safetensors")
    bad = dict(experts[1])
    bad["model.mm_projector.2.bias"] = bad["model.mm_projector.2.bias"].clone()
    bad["model.mm_projector.2.bias"][1] = float("nan")
    save_state_dict(bad, d / "nan.bin")
    _fails(["merge", "ties", *base, "--experts", str(d / "e0.bin"), str(d / "nan.bin")], capsys, out,
           "nan.bin", "model.mm_projector.2.bias", "NaN")
    save_state_dict({k: v for k, v in experts[1].items() if "2.bias" not in k}, d / "keys.bin")
    _fails(["merge", "ties", *base, "--experts", str(d / "e0.bin"), str(d / "keys.bin")], capsys, out,
           "keys.bin", "missing 'model.mm_projector.2.bias'")
    save_state_dict({**experts[1], "model.mm_projector.0.bias": torch.zeros(3)}, d / "shape.bin")
    _fails(["merge", "ties", *base, "--experts", str(d / "e0.bin"), str(d / "shape.bin")], capsys, out,
           "shape.bin", "model.mm_projector.0.bias", "shape")


def test_failed_write_leaves_nothing(ckpts, capsys):
    d, _, _ = ckpts
    out = d / "missing_dir" / "m.bin"
    rc = main(["merge", "average", "--base", str(d / "pivot.bin"), "--experts", str(d / "e0.bin"),
               str(d / "e1.bin"), "--out", str(out)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err and not out.exists()


def test_io_errors():
    with pytest.raises(CheckpointError, match="unsupported extension"):
        load_state_dict("x.npz")


def test_python_dash_m_entry_point(ckpts):
    d, _, _ = ckpts
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "pivotmerge", "merge", "average", "--base", str(d / "pivot.bin"),
                        "--experts", str(d / "e0.bin"), str(d / "e1.bin"), "--out", str(d / "avg.pt")],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pivotmerge merge: average" in r.stdout and (d / "avg.pt").exists()
    r = subprocess.run([sys.executable, "-m", "pivotmerge", "merge", "ties", "--base", str(d / "pivot.bin"),
                        "--experts", str(d / "e0.bin"), str(d / "e1.bin"), "--out", str(d / "x.pt"), "sign=max"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "sign='max'" in r.stderr and "Traceback" not in r.stderr
    assert not (d / "x.pt").exists()


# ---- merge files (--config), provenance, --force --------------------------------------------------------
def write_yaml(path, text):
    path.write_text(text)
    return path


def test_merge_file_round_trips_with_its_provenance(ckpts, capsys, monkeypatch):
    from pivotmerge.io import read_metadata, sha256_file

    d, pivot, experts = ckpts
    config = write_yaml(d / "merge.yaml", """
method: task_arithmetic
base: pivot.safetensors
experts:
  - path: e0.safetensors
    weight: 0.5
  - e1.bin
  - {path: e2.safetensors, weight: 0}
options: {lam: 1}
out: merged.safetensors
""")
    monkeypatch.chdir(d.parent)   # paths in the file are relative to the file, not to the working directory
    assert main(["merge", "--config", str(config)]) == 0
    got = load_state_dict(d / "merged.safetensors")
    # weights scale each task vector: pivot + 0.5 tau_0 + tau_1 + 0 tau_2 (task arithmetic, lam 1)
    for k in pivot:
        expected = pivot[k] + 0.5 * (experts[0][k] - pivot[k]) + (experts[1][k] - pivot[k])
        assert torch.allclose(got[k], expected, atol=1e-6)
    meta = read_metadata(d / "merged.safetensors")
    assert meta["pivotmerge.method"] == "task_arithmetic"
    assert json.loads(meta["pivotmerge.options"]) == {"lam": 1.0}
    inputs = json.loads(meta["pivotmerge.inputs"])
    assert inputs["base"]["sha256"] == sha256_file(d / "pivot.safetensors")
    assert [(Path(e["path"]).name, e["sha256"], e["weight"]) for e in inputs["experts"]] == [
        ("e0.safetensors", sha256_file(d / "e0.safetensors"), 0.5), ("e1.bin", sha256_file(d / "e1.bin"), 1.0),
        ("e2.safetensors", sha256_file(d / "e2.safetensors"), 0.0)]
    assert meta["pivotmerge.version"].startswith("pivotmerge ")
    capsys.readouterr()
    assert main(["info", str(d / "merged.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert "method : task_arithmetic" in shown and "lam=1.0" in shown and "weight 0.5" in shown
    assert inputs["base"]["sha256"] in shown and "made by: pivotmerge" in shown
    # the same merge from flags gives the same tensors; flags and option=value override the file
    assert main(["merge", "task_arithmetic", "--base", str(d / "pivot.safetensors"), "--experts",
                 str(d / "e0.safetensors"), str(d / "e1.bin"), "--out", str(d / "flags.safetensors"), "lam=1"]) == 0
    assert main(["merge", "--config", str(config), "--out", str(d / "over.safetensors"), "lam=0.5"]) == 0
    over = load_state_dict(d / "over.safetensors")
    assert json.loads(read_metadata(d / "over.safetensors")["pivotmerge.options"]) == {"lam": 0.5}
    for k in pivot:
        assert torch.allclose(over[k], pivot[k] + 0.5 * (got[k] - pivot[k]), atol=1e-6)


def test_existing_output_needs_force(ckpts, capsys):
    d, _, _ = ckpts
    out = d / "m.safetensors"
    out.write_bytes(b"keep me")
    argv = ["merge", "average", "--base", str(d / "pivot.bin"), "--experts", str(d / "e0.bin"), str(d / "e1.bin"),
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    assert main([*argv, "--force"]) == 0 and load_state_dict(out)
    assert main(["info", str(d / "e0.bin")]) == 0 and "provenance: none recorded" in capsys.readouterr().out


@pytest.mark.parametrize("text,needles", [
    ("method: ties\nbase: pivot.bin\nexperts: [e0.bin, e1.bin]\nout: o.bin\ndensty: 0.3\n", ["unknown key", "densty"]),
    ("method: ties\nbase: pivot.bin\nexperts: [e0.bin, e1.bin]\nout: o.bin\noptions: {densty: 0.3}\n",
     ["unknown option 'densty'", "density"]),
    ("method: ties\nbase: pivot.bin\nexperts: [{path: e0.bin, weight: heavy}, e1.bin]\nout: o.bin\n",
     ["experts[0].weight", "finite number"]),
    ("method: ties\nbase: pivot.bin\nexperts: [{path: e0.bin, wieght: 2}, e1.bin]\nout: o.bin\n",
     ["experts[0]", "wieght"]),
    ("base: pivot.bin\nexperts: [e0.bin, e1.bin]\nout: o.bin\n", ["needs METHOD"]),
    ("method: ties\nbase: pivot.bin\nexperts: [e0.bin, e1.bin]\n", ["--out"]),
    ("method: ties\nbase: pivot.bin\nexperts: [e0.bin, nope.bin]\nout: o.bin\n", ["nope.bin", "not found"]),
    ("[not, a, mapping]\n", ["expected a mapping"]),
    ("method: ties\n  base: [\n", ["not valid YAML"]),
])
def test_bad_merge_files_fail_in_one_line(ckpts, capsys, text, needles):
    d, _, _ = ckpts
    _fails(["merge", "--config", str(write_yaml(d / "bad.yaml", text))], capsys, d / "o.bin", *needles)


def test_stats_fisher_names_a_bad_data_config_before_loading_a_model(ckpts, capsys):
    from safetensors.torch import save_file

    d, _, _ = ckpts
    save_file({"features": torch.randn(4, 1, 5)}, str(d / "features.safetensors"))
    (d / "captions.json").write_text(json.dumps(["seven"] * 4))
    rc = main(["stats", "--projector", str(d / "e0.safetensors"), "--features", str(d / "features.safetensors"),
               "--fisher", str(d / "captions.json"), "--data-config", "nope", "--out", str(d / "s.safetensors")])
    assert rc != 0
    assert "--data-config nope" in capsys.readouterr().err
