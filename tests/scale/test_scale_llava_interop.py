"""LLaVA mm_projector.bin export/import: key names, dtype, full checkpoints, CLI round trip on tiny shapes."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pivotmerge.cli import main
from pivotmerge.interop import LLAVA_PREFIX, export_llava, from_llava, import_llava, to_llava
from pivotmerge.io import CheckpointError
from pivotmerge.models.projector import build_projector


@pytest.fixture()
def projector():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in build_projector("mlp2x_gelu", 12, 8).state_dict().items()}


def test_round_trip_through_the_cli(projector, tmp_path, capsys):
    save_file(projector, str(tmp_path / "merged.safetensors"))
    assert main(["export-llava", str(tmp_path / "merged.safetensors"), str(tmp_path / "mm_projector.bin")]) == 0
    raw = torch.load(tmp_path / "mm_projector.bin", weights_only=True)
    assert sorted(raw) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                           "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    # what LLaVA's pretrain_mm_mlp_adapter loader does: keep keys with 'mm_projector', strip the prefix
    llava_view = {k.split("mm_projector" + ".")[1]: v for k, v in raw.items() if "mm_projector" in k}
    fresh = build_projector("mlp2x_gelu", 12, 8)
    fresh.load_state_dict(llava_view)
    assert main(["import-llava", str(tmp_path / "mm_projector.bin"), str(tmp_path / "back.safetensors")]) == 0
    back = load_file(str(tmp_path / "back.safetensors"))
    assert sorted(back) == sorted(projector) and all(torch.equal(back[k], projector[k]) for k in projector)
    assert "wrote" in capsys.readouterr().out


def test_dtype_and_full_checkpoints(projector, tmp_path):
    save_file(projector, str(tmp_path / "p.safetensors"))
    state = export_llava(tmp_path / "p.safetensors", tmp_path / "mm_projector.bin", dtype="bfloat16")
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    # a full checkpoint: LLM weights + the projector, with LoRA/peft-style prefixes
    full = {"model.embed_tokens.weight": torch.randn(5, 8), "lm_head.weight": torch.randn(5, 8),
            **{"base_model.model.model.mm_projector." + k: v for k, v in projector.items()}}
    torch.save(full, tmp_path / "pytorch_model.bin")
    out = import_llava(tmp_path / "pytorch_model.bin", tmp_path / "expert.bin")
    assert all(torch.equal(out[k], projector[k]) for k in projector)
    # a sharded HF folder: only the shard the index names is read
    folder = tmp_path / "llava-ckpt"
    folder.mkdir()
    save_file({"model.layers.0.w": torch.zeros(2)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({LLAVA_PREFIX + k: v for k, v in projector.items()}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {"model.layers.0.w": "model-00001-of-00002.safetensors",
                  **{LLAVA_PREFIX + k: "model-00002-of-00002.safetensors" for k in projector}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = import_llava(folder, tmp_path / "expert.safetensors", dtype="float32")
    assert all(torch.equal(out[k], projector[k]) for k in projector)
    # our own Lightning checkpoint keys and bare projectors are accepted too
    assert sorted(from_llava({"mllm.projector." + k: v for k, v in projector.items()})) == sorted(projector)
    assert sorted(from_llava(projector)) == sorted(projector)
    assert sorted(to_llava(projector)) == sorted(LLAVA_PREFIX + k for k in projector)
    with pytest.raises(CheckpointError, match="no 'mm_projector'"):
        from_llava({"model.embed_tokens.weight": torch.zeros(2)})


def test_cli_errors_exit_2(projector, tmp_path, capsys):
    save_file(projector, str(tmp_path / "p.safetensors"))
    assert main(["export-llava", str(tmp_path / "p.safetensors"), str(tmp_path / "out.safetensors")]) == 2
    assert main(["import-llava", str(tmp_path / "missing.bin"), str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "out.safetensors").exists()
    assert "error" in capsys.readouterr().err
