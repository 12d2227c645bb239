"""Writers never replace what is not theirs: `--overwrite` replaces a bundle, never a user's folder or the
student it exports; an output that appears while the work runs is kept and the writer fails."""

from __future__ import annotations

import json
import shutil

import pytest


def _user_folder(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("a user's file")
    return path


def test_an_output_that_appears_during_the_work_is_kept_and_the_writer_fails(tmp_path):
    from sam3edge.atomic import atomic_directory

    out = tmp_path / "out.sam3edge"
    with pytest.raises(FileExistsError, match="created while"):
        with atomic_directory(out, what="bundle") as tmp:
            (tmp / "mine.txt").write_text("new")
            _user_folder(out)  # another process finishes first
    assert (out / "notes.txt").read_text() == "a user's file" and not (out / "mine.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.sam3edge"]  # no temporary directory left


def test_replace_is_decided_at_the_rename_by_what_the_output_holds(tmp_path):
    from sam3edge.atomic import atomic_directory, written_by_us

    ours = written_by_us("manifest.json", "sam3edge-bundle")
    out = _user_folder(tmp_path / "out")
    with pytest.raises(FileExistsError, match="not a bundle this program wrote"):
        with atomic_directory(out, replace=ours, what="bundle") as tmp:
            (tmp / "manifest.json").write_text(json.dumps({"format": "sam3edge-bundle"}))
    assert (out / "notes.txt").is_file()
    shutil.rmtree(out)
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "sam3edge-bundle"}))
    with atomic_directory(out, replace=ours, what="bundle") as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"format": "sam3edge-bundle", "new": True}))
    assert json.loads((out / "manifest.json").read_text())["new"] is True
    # a manifest that is a link (it could point anywhere) does not make a directory ours
    link = tmp_path / "linked"
    link.mkdir()
    (link / "manifest.json").symlink_to(out / "manifest.json")
    assert not ours(link)


@pytest.mark.parametrize("case", ["user folder", "the student itself"])
def test_export_overwrite_refuses_a_directory_that_is_not_a_bundle(toy_student_dir, tmp_path, case):
    from sam3edge.export.bundle import export_bundle

    if case == "user folder":
        out = _user_folder(tmp_path / "photos")
    else:
        out = tmp_path / "student"
        shutil.copytree(toy_student_dir, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    source = out if case == "the student itself" else toy_student_dir
    with pytest.raises(FileExistsError, match="replaces only bundles"):
        export_bundle(source, out, "onnx", "fp32", overwrite=True, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_save_student_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import load_student, save_student

    student = create_student("toy", input_size=64)
    out = _user_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="not a student directory"):
        save_student(student, out)
    assert (out / "notes.txt").is_file()
    fresh = save_student(student, tmp_path / "student")
    save_student(student, fresh)  # its own output is replaced
    assert load_student(fresh).spec.name == "toy"
