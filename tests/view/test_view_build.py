"""The build is incremental and resumable; bad input gives one line or a placeholder tile;
``--serve`` serves the site on 127.0.0.1; ``ssrseg --help`` does not load the view package."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from view_fakes import TRAIN, VAL, make_run, read_labels

from ssrseg.cli import main
from ssrseg.view import build as build_module
from ssrseg.view.build import build_site
from ssrseg.view.discover import discover
from ssrseg.view.serve import addresses, make_server
from ssrseg.viz import save_label_png


def site_files(site: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (site / "i").rglob("*") if p.is_file()}


def test_second_build_does_no_work_and_new_images_render_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ids = make_run(run, n_train=4, n_val=2)
    held_back = run / "seeds" / "labels" / f"{ids[TRAIN][-1]}.png"
    kept = held_back.read_bytes()
    held_back.unlink()
    site = run / "view"
    first = build_site(discover(run), site)
    assert (first.rendered, first.reused) == (5, 0)
    files = site_files(site)

    again = build_site(discover(run), site)
    assert (again.rendered, again.reused) == (0, 5)
    assert site_files(site) == files  # not one file rewritten

    held_back.write_bytes(kept)  # a new pseudo label: only its image renders
    added = build_site(discover(run), site)
    assert (added.rendered, added.reused) == (1, 5)
    now = site_files(site)
    assert {p for p in now if now[p] != files.get(p)} == {
        p for p in now if p not in files
    }  # only the new image's files are new; none of the others changed

    # a changed source redoes that image only
    pred = run / "eval" / "pred" / "no_crf" / f"{ids[VAL][0]}.png"
    save_label_png(pred, np.zeros_like(read_labels(pred)))
    changed = build_site(discover(run), site)
    assert (changed.rendered, changed.reused) == (1, 5)


def test_killed_build_resumes_from_the_last_saved_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    make_run(run, n_train=4, n_val=2)
    calls = []
    real = build_module.render_item

    def dies_on_the_fourth(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "SAVE_EVERY", 2)
    monkeypatch.setattr(build_module, "render_item", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        build_site(discover(run), run / "view")
    assert not (run / "view" / "index.html").exists()
    monkeypatch.setattr(build_module, "render_item", real)
    resumed = build_site(discover(run), run / "view")
    # two images were saved in the manifest before the kill; the third is redone
    assert (resumed.rendered, resumed.reused) == (4, 2)
    assert (run / "view" / "index.html").is_file()


def test_not_an_output_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("x")
    (tmp_path / "other.json").write_text('{"a": 1}')
    for target, words in (
        (tmp_path / "photos", "not an ssrseg output"),
        (tmp_path / "other.json", "not an ssrseg output"),
        (tmp_path / "absent", "no such file or folder"),
    ):
        assert main(["view", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and str(target) in err
    assert not (tmp_path / "photos" / "view").exists()


def test_missing_image_and_mismatched_size_become_placeholders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ids = make_run(run, n_train=3, n_val=2)
    missing = run / "data" / "JPEGImages" / f"{ids[TRAIN][0]}.png"
    missing.unlink()
    wrong = run / "seeds" / "labels" / f"{ids[TRAIN][1]}.png"
    save_label_png(wrong, np.zeros((10, 12), np.uint8))
    result = build_site(discover(run), run / "view")
    assert result.placeholders == 2 and (run / "view" / "index.html").is_file()
    sys.path.insert(0, str(Path(__file__).parent))
    from test_view_outputs import by_key, page

    items = by_key(page(run / "view"))
    # named as the dataset looks for it (without the file, VOC layouts guess .jpg)
    gone = items[f"{TRAIN}/{ids[TRAIN][0]}"]["e"]
    assert gone.startswith(f"image not found: {missing.parent / ids[TRAIN][0]}.")
    error = items[f"{TRAIN}/{ids[TRAIN][1]}"]["e"]
    assert str(wrong) in error and "12x10" in error and "128x128" in error
    assert "e" not in items[f"{TRAIN}/{ids[TRAIN][2]}"]


def test_serve_answers_on_localhost(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>hello</html>")
    server = make_server(site, 0)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url, forward = addresses(port)
        assert url == f"http://127.0.0.1:{port}/index.html"
        assert forward.startswith(f"ssh -N -L {port}:127.0.0.1:{port} ")
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.read() == b"<html>hello</html>"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert server.server_address[0] == "127.0.0.1"


def test_port_is_range_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("70000", "-1"):
        with pytest.raises(SystemExit) as exc:
            main(["view", ".", "--serve", "--port", bad])
        assert exc.value.code == 2 and "--port" in capsys.readouterr().err


def test_help_does_not_load_the_view_package() -> None:
    code = (
        "import sys; from ssrseg.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('ssrseg.view')))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.strip() == "[]"


def test_demo_ends_by_building_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ssrseg demo`` (``make demo``) builds the run's page last and prints its path (the run
    itself is stood in for by a finished demo-like folder; tests/test_demo.py runs the real one)."""
    from ssrseg.protocol import demo

    def finished_run(out: str, *args: object) -> dict:
        make_run(Path(out), n_train=2, n_val=2)
        return {}

    monkeypatch.setattr(demo, "run_demo", finished_run)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"page: {(out / 'view' / 'index.html').resolve()}"
    assert (out / "view" / "data.js").is_file()
