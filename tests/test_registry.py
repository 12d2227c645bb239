"""The student registry: every entry builds and runs, metadata is what its target teacher needs, bad names fail."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch

from sam3edge.cli import main
from sam3edge.models.complexity import measure, measure_spec, spec_sha, stored_complexity
from sam3edge.models.heads import HeadsConfig
from sam3edge.models.outputs import ConceptOutputs
from sam3edge.models.registry import STUDENTS, create_student, get_student_spec, list_students, register_student
from sam3edge.models.student_spec import StudentSpec
from sam3edge.runtime.concepts import ConceptCache

SAM3_AIMED = ("edge-s", "edge-m", "edge-l")
PHRASES = ["ripe apple", "leaf"]


def _cache(width: int) -> ConceptCache:
    rng = np.random.default_rng(0)
    mask = np.zeros((2, 32), bool)
    mask[:, :4] = True
    return ConceptCache(PHRASES, rng.standard_normal((2, 32, width)).astype(np.float32), mask)


def _run(name: str, **overrides) -> tuple[ConceptOutputs, StudentSpec]:
    spec = get_student_spec(name, **overrides)
    concepts = _cache(spec.heads.in_width) if spec.text_mode == "cache" else None
    torch.manual_seed(0)
    student = create_student(name, concepts=concepts, **overrides)
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    return student([image], PHRASES), spec


@pytest.mark.parametrize("name", list_students())
def test_every_student_runs_a_forward_on_cpu_at_a_small_input(name):
    out, spec = _run(name, input_size=64)
    q = spec.heads.num_queries
    assert out.scores.shape == (1, 2, q) and out.boxes.shape == (1, 2, q, 4)
    assert out.mask_logits.shape == (1, 2, q, 16, 16)
    assert all(torch.isfinite(getattr(out, f)).all() for f in ("scores", "boxes", "mask_logits", "presence"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "toy" else pytest.mark.slow)
                                  for n in list_students()])
def test_every_student_runs_a_forward_at_its_own_input_size(name):
    out, spec = _run(name)
    s = spec.input_size
    assert out.mask_logits.shape[-2:] == (spec.mask_size, spec.mask_size) == (s // 4, s // 4)
    assert [f.shape[-1] for f in out.image_features] == [s // 4, s // 8, s // 16]


def test_unknown_student_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown student 'edge-xl'") as err:
        create_student("edge-xl")
    assert all(name in str(err.value) for name in list_students())


@pytest.mark.parametrize("size", [200, 1008, 0, 16])
def test_input_sizes_that_are_not_multiples_of_32_are_rejected_with_a_suggestion(size):
    with pytest.raises(ValueError, match=f"input_size={size} is not a positive multiple of 32.*input_size="):
        create_student("toy", input_size=size)


def test_unknown_override_keys_are_rejected_listing_valid_ones():
    with pytest.raises(ValueError, match=r"unknown student override\(s\) \['num_querys'\].*num_queries"):
        create_student("toy", num_querys=4)


def test_overrides_reach_the_built_student_and_are_kept():
    student = create_student("toy", input_size=96, num_queries=8, export_top_k=4, text_mode="encoder", text_layers=1)
    assert student.heads.config.num_queries == 8 and student.image_size == 96
    assert len(student.text_encoder.blocks) == 1
    assert student.overrides == {"input_size": 96, "num_queries": 8, "export_top_k": 4, "text_mode": "encoder",
                                 "text_layers": 1}
    assert STUDENTS["toy"].heads.num_queries == 16  # the registry entry itself is unchanged
    with pytest.raises(ValueError, match="top_k=10 must be between 1 and num_queries=8"):
        create_student("toy", num_queries=8)


def test_toy_heads_are_the_toy_teachers_heads():
    from sam3edge.models.sam3_load import tiny_sam3_config

    teacher = tiny_sam3_config(image_size=112, hidden=64, heads=4, encoder_layers=2, decoder_layers=3, num_queries=16)
    spec = STUDENTS["toy"]
    assert spec.heads == HeadsConfig.from_sam3_config(teacher)
    # 256 px: the S/16 grid is the toy teacher's 16 x 16 token grid (224 px / patch 14), on which its heads were trained
    assert spec.teacher == "orchard-toy" and spec.input_size // 16 == 224 // 14


def test_entries_aimed_at_sam3_keep_its_widths_and_cut_layers_queries_and_resolution():
    full = HeadsConfig()
    for name in SAM3_AIMED:
        spec = STUDENTS[name]
        h = spec.heads
        assert spec.teacher == "facebook/sam3" and 512 <= spec.input_size <= 768
        assert (h.hidden_size, h.encoder_heads, h.decoder_heads, h.encoder_ffn_size, h.decoder_ffn_size,
                h.geometry_ffn_size, h.roi_size) == (256, 8, 8, 2048, 2048, 2048, 7)
        assert h.encoder_layers < 6 and h.decoder_layers < 6 and h.num_queries < 200
    ref = STUDENTS["efficientsam3-style"]
    assert ref.heads == full and ref.input_size == 1024 and "1008" in ref.description


def test_specs_round_trip_through_json():
    for name in list_students():
        spec = get_student_spec(name, mean=(0.5, 0.5, 0.5), text_width=192)
        assert StudentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        StudentSpec.from_dict(STUDENTS["toy"].to_dict() | {"colour": "red"})


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_student(STUDENTS["toy"])


def test_complexity_counts_the_built_modules_and_full_size_entries_need_no_weight_memory():
    c = measure("toy")
    student = create_student("toy", text_mode="encoder")
    assert c.params_image_encoder == sum(p.numel() for p in student.image_encoder.parameters())
    assert c.params_heads == sum(p.numel() for p in student.heads.parameters())
    assert c.params_total == sum(p.numel() for p in student.parameters())
    assert 0 < c.gflops_heads_topk <= c.gflops_heads and c.gflops > c.gflops_image_encoder > 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    big = measure("efficientsam3-style")  # 85 M parameters, 300+ GFLOPs: on the meta device
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 2e9
    assert big.params_heads > 30e6 and big.gflops > 100


def test_students_cli_lists_every_entry_with_its_figures(tmp_path, capsys):
    path = tmp_path / "students.json"
    assert main(["students", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert [r["name"] for r in rows] == list_students()
    for r in rows:
        assert r["name"] in table and r["backbone"] in table
        assert r["params_total"] > r["params_without_text"] > 0 and r["gflops"] > 0
    assert main(["students", "toy", "--json", "-"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["toy"]
    assert main(["students", "nope"]) == 2
    assert "toy" in capsys.readouterr().err


def test_stored_figures_are_those_of_every_current_registry_entry(tmp_path):
    """``students`` prints stored figures; each must equal a recount of the entry as registered now (after editing
    an entry: ``python -m sam3edge.models.complexity``), and a changed spec must not get an old entry's figures."""
    for name in list_students():
        spec = get_student_spec(name)
        stored = stored_complexity(spec)
        assert stored is not None, f"{name}: no stored figures for this spec; run python -m sam3edge.models.complexity"
        assert stored == measure_spec(spec), name
    changed = get_student_spec("toy", num_queries=20)
    assert spec_sha(changed) != spec_sha(get_student_spec("toy")) and stored_complexity(changed) is None
    broken = tmp_path / "figures.json"
    broken.write_text("{not json")
    assert stored_complexity(get_student_spec("toy"), broken) is None


def test_students_listing_needs_no_torch():
    """Listings answer in a fraction of a second: nothing heavy is imported (issue 15: it took ~38 s)."""
    import subprocess
    import sys

    code = ("import sys; from sam3edge.cli import main; rc = main(['students']); "
            "heavy = [m for m in ('torch', 'transformers', 'timm', 'onnxruntime', 'openvino') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "edge-s-fast" in out.stdout


def test_int8_decoder_follows_the_head_type_unless_the_spec_says():
    """Fast heads' decoders stay float in int8 exports (hundreds of small matmuls: quantize / dequantize cost more
    than the integer products save), SAM3-width heads' are quantized; ``export_int8_decoder`` overrides either way,
    and a student saved before the field existed follows its head type."""
    from sam3edge.models.student_spec import ExportDefaults, StudentSpec

    assert get_student_spec("toy").int8_decoder and get_student_spec("edge-s").int8_decoder
    assert not get_student_spec("toy-fast").int8_decoder and not get_student_spec("edge-s-fast").int8_decoder
    assert get_student_spec("toy-fast", export_int8_decoder=True).int8_decoder
    assert not get_student_spec("toy", export_int8_decoder=False).int8_decoder
    old = get_student_spec("edge-s-fast").to_dict()
    del old["export"]["int8_decoder"]
    assert StudentSpec.from_dict(old).int8_decoder is False
    with pytest.raises(ValueError, match="int8_decoder='yes' must be true, false or null"):
        ExportDefaults(int8_decoder="yes")
