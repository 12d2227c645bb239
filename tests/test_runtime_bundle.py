"""Opening a bundle: what it holds, and a clear BundleError (naming the bundle, the file or field, what to do) for
every way a bundle can be broken, before any graph runs."""

from __future__ import annotations

import json
import shutil

import pytest

ORCHARD_PHRASES = ["ripe apple", "unripe apple", "leaf"]  # as the toy_student_dir fixture (conftest.py)


@pytest.fixture(scope="module")
def exported(toy_bundles):
    return toy_bundles["onnx"]


@pytest.fixture
def bundle_copy(exported, tmp_path):
    """A fresh copy of the exported bundle that a test may break."""
    path = tmp_path / "copy.sam3edge"
    shutil.copytree(exported, path)
    return path


def edit_manifest(path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_an_exported_bundle_opens_with_what_it_holds(exported):
    from sam3edge.runtime.bundle import Bundle
    from sam3edge.runtime.concepts import ConceptCache
    from sam3edge.runtime.tokenizer import ClipTokenizer

    b = Bundle.open(exported)
    assert b.path == exported.resolve() and b.manifest["format"] == "sam3edge-bundle"
    assert (b.target, b.precision, b.input_size, b.text_length) == ("onnx", "fp32", 128, 32)
    assert b.concepts == ORCHARD_PHRASES and not b.has_text_encoder and b.device_profile is None
    assert b.graph_path("decoder") == exported.resolve() / "graphs" / "decoder.onnx"
    cache = b.concept_cache()
    assert isinstance(cache, ConceptCache) and cache.phrases == ORCHARD_PHRASES and cache.features.shape[0] == 3
    assert isinstance(b.tokenizer(), ClipTokenizer)
    files = [p for p in exported.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert b.size_bytes == sum(p.stat().st_size for p in files)
    assert "onnx fp32, 128 px, 3 concepts" in repr(b)
    assert Bundle.open(exported, verify=False).manifest == b.manifest


def test_a_corrupt_graph_fails_its_checksum(bundle_copy):
    from sam3edge.runtime.bundle import Bundle, BundleError

    data = bytearray((bundle_copy / "graphs" / "decoder.onnx").read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
    (bundle_copy / "graphs" / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"graphs/decoder.onnx: checksum mismatch \(expected [0-9a-f]{12}…, got "
                                          r"[0-9a-f]{12}…\): the bundle is corrupt or was edited; re-export it"):
        Bundle.open(bundle_copy)
    assert Bundle.open(bundle_copy, verify=False).target == "onnx"  # verify=False skips hashes only


def test_a_truncated_graph_fails_its_checksum_and_does_not_load_unverified(bundle_copy):
    from sam3edge.runtime.bundle import Bundle, BundleError
    from sam3edge.runtime.segmenter import Segmenter

    path = bundle_copy / "graphs" / "image_encoder.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="image_encoder.onnx: checksum mismatch"):
        Segmenter.load(bundle_copy)
    with pytest.raises(BundleError, match=r"graphs/image_encoder.onnx \(image_encoder graph\) cannot be loaded by "
                                          "onnxruntime .*re-export the bundle"):
        Segmenter.load(Bundle.open(bundle_copy, verify=False))


def test_a_missing_graph_is_named(bundle_copy):
    from sam3edge.runtime.bundle import Bundle, BundleError

    (bundle_copy / "graphs" / "decoder.onnx").unlink()
    for verify in (True, False):
        with pytest.raises(BundleError, match="graphs/decoder.onnx is listed in manifest.json but missing"):
            Bundle.open(bundle_copy, verify=verify)


def test_an_unknown_format_version_says_to_upgrade(bundle_copy):
    from sam3edge.runtime.bundle import Bundle, BundleError

    edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="this bundle is format version 99; this sam3edge reads 1: upgrade sam3edge"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("where", ["graph", "files", "tokenizer"])
@pytest.mark.parametrize("bad, match", [("../outside.onnx", "contains '..'"), ("/etc/passwd", "absolute path"),
                                        ("graphs/../../outside.onnx", "contains '..'"), ("C:/x.onnx", "absolute")])
def test_paths_that_leave_the_bundle_are_refused(bundle_copy, where, bad, match):
    from sam3edge.runtime.bundle import Bundle, BundleError

    (bundle_copy.parent / "outside.onnx").write_bytes((bundle_copy / "graphs" / "decoder.onnx").read_bytes())

    def edit(m):
        if where == "graph":
            m["graphs"]["decoder"]["file"] = bad
        elif where == "files":
            m["files"][bad] = m["files"]["graphs/decoder.onnx"]
        else:
            m["tokenizer"] = bad

    edit_manifest(bundle_copy, edit)
    for verify in (True, False):
        with pytest.raises(BundleError, match=match):
            Bundle.open(bundle_copy, verify=verify)


def test_a_symlink_pointing_outside_the_bundle_is_refused(bundle_copy, tmp_path):
    from sam3edge.runtime.bundle import Bundle, BundleError

    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle_copy / "graphs" / "decoder.onnx", outside)
    (bundle_copy / "graphs" / "decoder.onnx").symlink_to(outside)  # same bytes: the checksum alone would pass
    with pytest.raises(BundleError, match="graphs/decoder.onnx .* resolves to .*elsewhere.onnx, outside the bundle"):
        Bundle.open(bundle_copy, verify=False)
    (bundle_copy / "graphs" / "decoder.onnx").unlink()
    shutil.move(bundle_copy / "graphs", tmp_path / "graphs")
    (bundle_copy / "graphs").symlink_to(tmp_path / "graphs")  # a linked folder too
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.open(bundle_copy)


def test_broken_manifests_are_named(bundle_copy, tmp_path):
    from sam3edge.runtime.bundle import Bundle, BundleError

    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nowhere.sam3edge")
    (tmp_path / "file.sam3edge").write_text("x")
    with pytest.raises(BundleError, match="is not a directory"):
        Bundle.open(tmp_path / "file.sam3edge")
    (tmp_path / "empty.sam3edge").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(tmp_path / "empty.sam3edge")

    original = (bundle_copy / "manifest.json").read_text()
    (bundle_copy / "manifest.json").write_text(original[:200])
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        Bundle.open(bundle_copy)
    cases = [
        (lambda m: m.update(format="other-bundle"), "format 'other-bundle', expected 'sam3edge-bundle'"),
        (lambda m: m.pop("graphs"), "lacks field.* graphs"),
        (lambda m: m["graphs"].pop("decoder"), "no 'decoder' graph"),
        (lambda m: m.update(target="tflite"), "target 'tflite' is not one of"),
        (lambda m: m["files"].update({"graphs/decoder.onnx": "abc"}), "not a hex sha256"),
        (lambda m: m["files"].pop("graphs/decoder.onnx"), "graphs/decoder.onnx .* not listed with a checksum"),
        (lambda m: m["input"].update(size="128"), "input.size"),
        (lambda m: m.pop("verification"), "lacks field.* verification"),
        (lambda m: m["verification"].pop("ran"), "verification.ran"),
        (lambda m: m["input"].update(layout="NCHW"), "input.layout is 'NCHW'"),
        (lambda m: m.update(concepts=["apple", "apple"]), "a phrase twice"),
        (lambda m: m["graphs"].update(extra=m["graphs"]["decoder"]), "unknown graph"),
        (lambda m: m["graphs"]["decoder"]["inputs"][0].update(dtype="complex64"), "graphs\\['decoder'\\] must"),
    ]
    for edit, match in cases:
        (bundle_copy / "manifest.json").write_text(original)
        edit_manifest(bundle_copy, edit)
        with pytest.raises(BundleError, match=match) as e:
            Bundle.open(bundle_copy)
        assert str(bundle_copy.resolve()) in str(e.value)  # every message names the bundle


def test_an_edited_concept_cache_is_refused_when_used(bundle_copy):
    from sam3edge.runtime.bundle import Bundle, BundleError
    from sam3edge.runtime.segmenter import Segmenter

    meta = json.loads((bundle_copy / "concepts.json").read_text())
    meta["phrases"][0] = "golden apple"
    (bundle_copy / "concepts.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="concepts.json: checksum mismatch"):
        Bundle.open(bundle_copy)
    b = Bundle.open(bundle_copy, verify=False)
    with pytest.raises(BundleError, match="concepts.json lists .*golden apple.*re-export"):
        Segmenter.load(b)


def test_a_bundle_reads_only_verified_files_inside_itself(toy_bundles, tmp_path):
    """A linked manifest, an unlisted file beside the graphs (ONNX external data would be read unverified) and
    non-finite concept features are refused; a bundle's cache request never names where the runtime writes."""
    import shutil

    import numpy as np

    from sam3edge.runtime.bundle import Bundle, BundleError
    from sam3edge.runtime.concepts import ConceptCache

    linked = tmp_path / "linked.sam3edge"
    shutil.copytree(toy_bundles["onnx"], linked)
    (tmp_path / "elsewhere.json").write_text((linked / "manifest.json").read_text())
    (linked / "manifest.json").unlink()
    (linked / "manifest.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(BundleError, match="symbolic link"):
        Bundle.open(linked)

    extra = tmp_path / "extra.sam3edge"
    shutil.copytree(toy_bundles["onnx"], extra)
    graph_dir = (extra / Bundle.open(extra).manifest["graphs"]["decoder"]["file"]).parent
    (graph_dir / "decoder.onnx.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="not listed with a checksum"):
        Bundle.open(extra)

    with pytest.raises(ValueError, match="NaN or infinite"):
        ConceptCache(["leaf", "branch"], np.array([[[0.0, 1.0]], [[np.nan, 0.0]]], np.float32), np.ones((2, 1), bool))


def test_openvino_compile_cache_goes_to_the_hosts_cache_directory(monkeypatch, tmp_path):
    from sam3edge.runtime.backends.openvino_backend import model_cache_dir

    monkeypatch.setenv("SAM3EDGE_CACHE_DIR", str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c" / "openvino"
    monkeypatch.delenv("SAM3EDGE_CACHE_DIR")
    assert model_cache_dir().is_relative_to(__import__("pathlib").Path.home())
