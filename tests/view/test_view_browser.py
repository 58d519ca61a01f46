"""The ``ssrseg view`` page in a real headless Chromium (Debian package, Selenium): a demo-like
run built from the toy world opens from ``file://``; sorting, filtering and overlays show what
the masks say, computed here independently; screenshots go to ``test-artifacts/view/``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import element_pixels, require_browser, save_artifact, start_browser
from view_fakes import TRAIN, VAL, iou_by_hand, make_run, read_labels

from ssrseg.view.build import build_site
from ssrseg.view.discover import discover
from ssrseg.viz import palette

SCORED_FOLDER = {TRAIN: "seeds/labels", VAL: "eval/pred/no_crf"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    found = require_browser()  # before any work: skip (or fail under CI) straight away
    run = tmp_path_factory.mktemp("browser") / "run"
    ids = make_run(run, n_train=5, n_val=4)
    gone = ids[TRAIN][-1]
    (run / "data" / "JPEGImages" / f"{gone}.png").unlink()
    build_site(discover(run), run / "view")
    masks = {}
    for split, group in ids.items():
        for image_id in group:
            gt = read_labels(run / "data" / "SegmentationClass" / f"{image_id}.png")
            pred = read_labels(run / SCORED_FOLDER[split] / f"{image_id}.png")
            masks[f"{split}/{image_id}"] = (gt, pred)
    return {"run": run, "ids": ids, "gone": f"{TRAIN}/{gone}", "masks": masks, "found": found}


@pytest.fixture(scope="module")
def driver(world: dict[str, Any]) -> Iterator[Any]:
    session = start_browser(*world["found"])
    try:
        yield session
    finally:
        session.quit()


def open_page(driver: Any, run: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get((run / "view" / "index.html").as_uri())
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "1"
    )


def shown_keys(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [t.get_attribute("data-key") for t in driver.find_elements(By.CSS_SELECTOR, ".tile")]


def choose(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def test_page_sorts_by_miou_and_filters(driver: Any, world: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, world["run"])
    assert driver.get_log("browser") == []  # no script error, no missing file
    keys = shown_keys(driver)
    assert sorted(keys) == sorted(world["masks"])
    # the missing image is a placeholder tile naming the file
    tile = driver.find_element(By.CSS_SELECTOR, f'.tile[data-key="{world["gone"]}"]')
    assert "placeholder" in tile.get_attribute("class")
    assert "image not found" in tile.text and world["gone"].split("/")[1] in tile.text

    scores = {
        k: iou_by_hand(pred, gt) for k, (gt, pred) in world["masks"].items() if k != world["gone"]
    }
    choose(driver, "sort", "miou-asc")
    worst_first = sorted(scores, key=lambda k: (scores[k], k))
    assert shown_keys(driver) == [*worst_first, world["gone"]]  # unscored last
    save_artifact(driver, "sorted_worst_first")
    choose(driver, "sort", "miou-desc")
    best_first = sorted(scores, key=lambda k: (-scores[k], k))  # ties by name both ways
    assert shown_keys(driver) == [*best_first, world["gone"]]

    # a class in some images but not all: the filter shows exactly those (by ground truth)
    having: dict[int, set[str]] = {}
    for k, (gt, _) in world["masks"].items():
        for v in np.unique(gt):
            if 0 < v < 255:
                having.setdefault(int(v) - 1, set()).add(k)
    cls = max((c for c in having if len(having[c]) < len(world["masks"])),
              key=lambda c: (len(having[c]), -c))  # fmt: skip
    choose(driver, "class", str(cls))
    assert set(shown_keys(driver)) == having[cls]
    save_artifact(driver, "filtered_class")
    choose(driver, "split", VAL)
    assert set(shown_keys(driver)) == {k for k in having[cls] if k.startswith(f"{VAL}/")}
    choose(driver, "class", "")
    assert set(shown_keys(driver)) == {k for k in world["masks"] if k.startswith(f"{VAL}/")}


def test_overlays_switch_and_blend(driver: Any, world: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(driver, world["run"])
    # a val image whose prediction lost part of an object (the erased band)
    key = next(
        k
        for k, (gt, pred) in world["masks"].items()
        if k.startswith(f"{VAL}/") and ((gt > 0) & (gt < 255) & (pred == 0)).any()
    )
    gt, pred = world["masks"][key]
    driver.find_element(By.CSS_SELECTOR, f'.tile[data-key="{key}"]').click()
    driver.execute_script(
        "var o = document.getElementById('opacity'); o.value = 100;"
        "o.dispatchEvent(new Event('input'));"
    )
    stage = driver.find_element(By.ID, "stage")
    WebDriverWait(driver, 10).until(lambda d: stage.get_attribute("data-zoom"))

    def look(layer: str) -> np.ndarray:
        choose(driver, "layer", layer)
        WebDriverWait(driver, 10).until(
            lambda d: d.execute_script(
                "var i = document.getElementById('detail-ov');"
                "return i.style.display === 'none' || (i.complete && i.naturalWidth > 0);"
            )
        )
        shot = element_pixels(stage)
        # "auto" zoom enlarges the 128 px toy image by a whole factor: sample one screen pixel
        # per image pixel (pixelated scaling copies it z x z times)
        z = int(stage.get_attribute("data-zoom"))
        assert z >= 2 and shot.shape == (gt.shape[0] * z, gt.shape[1] * z, 3)
        return shot[z // 2 :: z, z // 2 :: z]

    pal = palette("voc")
    plain, with_gt, with_pred = look(""), look("ground truth"), look("prediction")
    save_artifact(driver, "overlay_prediction")
    fg = (gt > 0) & (gt < 255)
    assert (with_gt[fg] == pal[gt[fg]]).all()  # opacity 1: the palette colours exactly
    assert (with_gt[gt == 0] == plain[gt == 0]).all()  # background is see-through
    lost = fg & (pred == 0)
    kept = (pred > 0) & (pred < 255)
    assert lost.any() and kept.any()
    assert (with_pred[kept] == pal[pred[kept]]).all()
    assert (with_pred[lost] == plain[lost]).all()  # the erased band shows the image
    assert not np.array_equal(with_gt, with_pred)

    # the arrow keys walk the gallery's order in the detail view
    from selenium.webdriver.common.keys import Keys

    order = shown_keys(driver)
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    nxt = next(k for k in order[order.index(key) + 1 :] if k != world["gone"])
    assert driver.find_element(By.ID, "detail-title").text == nxt
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    assert driver.find_element(By.ID, "detail-title").text == key

    # blending: at half opacity a class pixel lies between the image and the palette colour
    driver.execute_script(
        "var o = document.getElementById('opacity'); o.value = 50;"
        "o.dispatchEvent(new Event('input'));"
    )
    z = int(stage.get_attribute("data-zoom"))
    half = element_pixels(stage)[z // 2 :: z, z // 2 :: z].astype(int)
    expected = (plain[kept].astype(int) + pal[pred[kept]].astype(int)) / 2
    assert np.abs(half[kept] - expected).max() <= 2
