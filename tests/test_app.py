"""`groupvit app`: the request handler in process, then the real page in Debian's chromium driven by playwright."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from playwright.sync_api import expect, sync_playwright

import groupvit
from groupvit.app import BUTTONS_HEIGHT, SYNTHVOC_EXAMPLES, Limits, SegmentationApp, legend_html, load_app_model

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def small_model(small_checkpoint):
    return groupvit.load_model(small_checkpoint)


@pytest.fixture
def app(small_model, tmp_path) -> SegmentationApp:
    limits = Limits(max_pixels=200_000, max_classes=3, max_side=200)
    return SegmentationApp(small_model, "small", None, tmp_path, limits)


def upload(app: SegmentationApp, name: str, image: Image.Image) -> str:
    path = app.temp_dir / "upload" / name
    path.parent.mkdir(exist_ok=True)
    image.save(path)
    return str(path)


def table_shares(page) -> dict[str, float]:
    """The class table on the page: class -> percent of the pixels, in its order."""
    rows = page.locator("#legend table").inner_text().splitlines()[1:]
    return {row.split("\t")[1]: float(row.split("\t")[2][:-1]) for row in rows}


def percentages(legend: str) -> dict[str, float]:
    return {name: float(p) for name, p in re.findall(r"<td>([^<]+)</td><td>([\d.]+)%</td>", legend)}


# ----------------------------------------------------------------------------- the handler, in process


def test_segment_returns_overlay_legend_and_group_maps(app):
    photo = Image.fromarray(skimage.data.chelsea()[:120, :160])
    overlay, legend, groups, status = app.segment(upload(app, "cat.png", photo), "cat, floor", 0.0, "whole")
    # Enlarged 3 times to a long side of at least 384; the legend column of the classes present beside it.
    assert overlay.height == 360 and overlay.width > 480
    picture = np.array(overlay)
    assert (picture[:BUTTONS_HEIGHT, 480:] == 255).all()  # nothing under gradio's buttons: the legend starts below
    assert (picture[BUTTONS_HEIGHT:, 480:] != 255).any()
    shares = percentages(legend)
    assert "background" not in shares and set(shares) <= {"cat", "floor"}  # threshold 0: no background; found only
    assert sum(shares.values()) == pytest.approx(100.0, abs=0.2) and list(shares.values()) == sorted(
        shares.values(), reverse=True
    )
    assert groups.size == (3 * 480 + 2 * 4, 20 + 360 + 4)  # titles; photo and the two grouping stages
    assert "160x120 pixels, whole mode" in status


def test_the_class_table_lists_the_classes_found_largest_first():
    labels = np.array([[2, 2, 0, 1], [2, 2, 0, 1]])  # b 50 %, background 25 %, a 25 %, c absent
    legend = legend_html(["a", "b", "c"], labels)
    assert list(percentages(legend).items()) == [("b", 50.0), ("background", 25.0), ("a", 25.0)]
    assert legend.endswith('<p class="groupvit-absent">Not found: c.</p>')
    assert "Not found" not in legend_html(["a"], np.ones((2, 2), int))


def test_an_upload_is_previewed_as_checked_and_a_photo_gets_a_note_from_a_synthvoc_model(app, tmp_path):
    path = upload(app, "small.png", Image.fromarray(np.full((24, 32, 3), 7, np.uint8)))
    preview = app.preview(path)
    assert preview.shape == (12 * 24, 12 * 32, 3) and (preview == 7).all()  # enlarged 12 times to 384
    assert app.preview(None) is None
    (app.temp_dir / "upload" / "bad.png").write_text("no image")
    with pytest.raises(gr.Error, match=r"bad\.png is not a PNG"):  # refused at upload, as segment refuses it
        app.preview(str(app.temp_dir / "upload" / "bad.png"))
    synthvoc = SegmentationApp(groupvit.load_model("synthvoc"), "shipped", None, tmp_path / "s")
    (tmp_path / "s").mkdir()
    photo = upload(synthvoc, "photo.png", Image.new("RGB", (90, 60), "gray"))
    status = synthvoc.segment(photo, "cat, dog", 0.5, "whole")[3]
    assert status.endswith("Note: this model knows SynthVOC's emoji-like scenes of the 20 VOC classes, not "
                           "photographs; an image of 90x60 pixels is not one of them, so expect little.")  # fmt: skip
    square = upload(synthvoc, "scene.png", Image.new("RGB", (60, 60), "gray"))
    assert "Note" not in synthvoc.segment(square, "cat, dog", 0.5, "whole")[3]


def test_text_embeddings_are_cached_per_vocabulary_across_requests(app):
    path = upload(app, "a.png", Image.new("RGB", (32, 24), "gray"))
    cache = app.segmenter._text_cache
    app.segment(path, "cat, dog", 0.95, "whole")
    first = cache[("cat", "dog")]
    app.segment(path, "cat, dog", 0.5, "slide")
    assert cache[("cat", "dog")] is first  # not recomputed
    app.segment(path, "sky", 0.95, "whole")
    assert set(cache) == {("object",), ("cat", "dog"), ("sky",)}
    assert app.segmenter.mode == "slide" and app.segmenter.background_threshold == 0.95  # requests leave it alone


def test_large_photos_are_reduced_before_segmentation(app):
    _, _, groups, status = app.segment(upload(app, "wide.png", Image.new("RGB", (400, 100))), "sky", 0.9, "whole")
    assert "200x50 pixels" in status and groups.height == 20 + 2 * 50 + 4  # enlarged twice for the page


def test_legend_escapes_class_names():
    legend = legend_html(["<img src=x onerror=alert(1)>"], np.ones((2, 2), int))
    assert "<img" not in legend and "&lt;img src=x onerror=alert(1)&gt;" in legend


@pytest.mark.parametrize(
    "classes, threshold, mode, message",
    [
        ("a, b, c, d", 0.9, "whole", "at most 3"),
        ("cat,,dog", 0.9, "whole", "empty class name"),
        ("cat, Cat", 0.9, "whole", "duplicate"),
        ("cat", 1.5, "whole", "between 0 and 1"),
        ("cat", 0.9, "tiles", "test mode"),
    ],
)
def test_bad_requests_give_messages(app, classes, threshold, mode, message):
    path = upload(app, "a.png", Image.new("RGB", (32, 24)))
    with pytest.raises(gr.Error, match=message):
        app.segment(path, classes, threshold, mode)


def test_uploads_are_checked_by_size_and_content(app):
    with pytest.raises(gr.Error, match="Upload an image"):
        app.segment(None, "cat", 0.9, "whole")
    with pytest.raises(gr.Error, match=r"big.png is 500x500 = 0.25 megapixels, over the limit of 0.2"):
        app.segment(upload(app, "big.png", Image.new("RGB", (500, 500))), "cat", 0.9, "whole")
    icon = upload(app, "icon.ico", Image.new("RGB", (16, 16)))  # a format Pillow reads but the page does not take
    disguised = Path(icon).rename(Path(icon).with_name("icon.png"))
    with pytest.raises(gr.Error, match=r"icon\.png is not a PNG, JPEG"):
        app.segment(str(disguised), "cat", 0.9, "whole")
    text = Path(app.temp_dir) / "notes.png"
    text.write_text("not an image")
    with pytest.raises(gr.Error, match=r"notes\.png is not a PNG") as error:
        app.segment(str(text), "cat", 0.9, "whole")
    assert str(app.temp_dir) not in str(error.value)  # the page never learns server paths


def test_files_outside_the_temp_dir_are_never_read(app, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    link = app.temp_dir / "link.png"
    link.symlink_to(outside)
    for path in (outside, link, app.temp_dir / ".." / outside.parent.name / "secret.png"):
        with pytest.raises(gr.Error, match="not uploaded to this page"):
            app.segment(str(path), "cat", 0.9, "whole")


def test_model_is_a_checkpoint_or_a_preset_with_a_warning(small_checkpoint, small_model, tmp_path):
    model, description, warning = load_app_model(str(small_checkpoint), "cpu")
    assert warning is None and description == "`small.safetensors`"
    expected = small_model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in model.state_dict().items())
    shipped, description, warning = load_app_model(None, "cpu")  # the model shipped in the package
    assert warning is None and description.startswith("`synthvoc`, a small GroupViT this package trained")
    assert shipped.test_settings.trained_on == "synthvoc" and shipped.test_settings.short_side == 64
    larger, _, _ = load_app_model(None, "cpu", short_side=96)  # --short-side
    assert larger.test_settings.short_side == 96
    assert SegmentationApp(larger, "", None, tmp_path).segmenter.short_side == 96
    _, description, warning = load_app_model(None, "cpu", random_init="small")
    assert "random `small` preset" in description and "Untrained random weights (small architecture)" in warning
    assert "--checkpoint gcc_yfcc" in warning  # how to get the released weights
    with pytest.raises(ValueError, match=r"checkpoint not found: no_such_model\.safetensors"):
        load_app_model("no_such_model.safetensors", "cpu")
    with pytest.raises(ValueError, match=r"'small' is a model preset without released weights.*--random-init small"):
        load_app_model("small", "cpu")  # random weights only when asked for by name


def test_page_shows_the_random_weights_warning(small_model, tmp_path):
    page = SegmentationApp(small_model, "random `small` preset", "Untrained random weights (small)", tmp_path).build()
    texts = [c.get("props", {}).get("value") for c in page.config["components"]]
    assert "**Warning: Untrained random weights (small)**" in texts
    examples = sorted(p.name for p in (tmp_path / "examples").iterdir())
    assert examples == ["astronaut.png", "chelsea.png", "coffee.png"]


def test_a_synthvoc_model_gets_synthvoc_scenes_and_its_classes(tmp_path):
    model = groupvit.load_model("synthvoc")
    page = SegmentationApp(model, "shipped", None, tmp_path).build()
    written = sorted(p.name for p in (tmp_path / "examples").iterdir())
    assert written == sorted(e["file"] for e in json.loads((SYNTHVOC_EXAMPLES / "examples.json").read_text()))
    values = [c.get("props", {}).get("value") for c in page.config["components"]]
    assert ", ".join(model.test_settings.classes) in values and model.test_settings.background_threshold in values


def test_cli_app_reports_a_bad_checkpoint():
    result = subprocess.run([sys.executable, "-m", "groupvit", "app", "--checkpoint", "nope"], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2 and "checkpoint not found: nope" in result.stderr


# ----------------------------------------------------------------------------- the page in a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(args: list[str], log: Path):
    """`groupvit app ARGS` in a subprocess on a free port -> (url, its temp dir, the process); stopped at exit."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "groupvit", "app", *args, "--port", str(port), "--device", "cpu"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the app exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the app did not answer in 120 s: {log.read_text()}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        temp_dir = Path(re.search(r"go to (\S+) \(removed at exit\)", log.read_text()).group(1))
        yield url, temp_dir, process
        process.send_signal(signal.SIGTERM)  # what `kill` sends (SIGINT may be ignored under a background shell)
        process.wait(timeout=120)  # gradio's shutdown can take a while on a loaded machine
        assert not temp_dir.exists(), log.read_text()
    finally:  # never leave a server behind, whatever failed
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(small_checkpoint, tmp_path_factory):
    """`groupvit app` on the small random checkpoint: 200,000 pixels and 1 MiB at most, 4 classes."""
    args = ["--checkpoint", str(small_checkpoint), "--max-pixels", "200000", "--max-classes", "4",
            "--max-upload-mb", "1"]  # fmt: skip
    with app_server(args, tmp_path_factory.mktemp("app") / "app.log") as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    files = {
        "chelsea.jpg": Image.fromarray(skimage.data.chelsea()),
        "astronaut.jpg": Image.fromarray(skimage.data.astronaut()).resize((256, 256)),
        "big.png": Image.new("RGB", (500, 500), "white"),  # 250,000 pixels but a small file
        "heavy.png": Image.fromarray(rng.integers(0, 255, (400, 1000, 3), dtype=np.uint8)),  # ~1.2 MB of noise
    }
    for name, image in files.items():
        image.save(root / name)
    (root / "notes.txt").write_text("a text file")
    (root / "fake.png").write_text("a text file with an image's name")
    return {name: root / name for name in [*files, "notes.txt", "fake.png"]}


def launch_chromium(playwright):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); .ci/run does")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])


@pytest.mark.slow
def test_page_in_a_browser(server, photos, tmp_path):
    url, temp_dir, _ = server
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        file_input = page.locator("#image input[type=file]")

        def submit(photo: str, classes: str) -> None:
            if not file_input.count():  # the box shows the previous upload: drop it
                page.locator("#image button[aria-label=Clear]").click()
            file_input.set_input_files(photos[photo])
            expect(page.locator("#image")).to_contain_text(Path(photo).stem)
            if photo in ("chelsea.jpg", "astronaut.jpg"):  # accepted: seen before it is segmented
                expect(page.locator("#preview img")).to_be_visible(timeout=30_000)
            page.locator("#classes textarea").fill(classes)
            page.locator("#segment").click()

        # A photo, three words, no background: the overlay appears and the legend lists every requested class.
        page.locator("#threshold input[type=number]").fill("0")
        page.locator("#mode").get_by_text("whole", exact=True).click()
        submit("chelsea.jpg", "cat, floor, wall")
        expect(page.locator("#overlay img")).to_be_visible(timeout=60_000)
        expect(page.locator("#legend")).to_contain_text("pixels")
        shares = table_shares(page)  # the classes found, largest first; no background at threshold 0
        assert "background" not in shares and set(shares) <= {"cat", "floor", "wall"}
        assert list(shares.values()) == sorted(shares.values(), reverse=True)
        assert sum(shares.values()) == pytest.approx(100.0, abs=0.2)
        absent = sorted({"cat", "floor", "wall"} - set(shares))
        if absent:
            expect(page.locator("#legend")).to_contain_text(f"Not found: {', '.join(absent)}.")
        overlay_width = page.locator("#overlay img").evaluate("img => img.naturalWidth")
        assert overlay_width > 451  # the photo plus its legend column
        expect(page.locator("#groups img")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("451x300 pixels, whole mode, background threshold 0.00")
        assert page.locator("#weights-warning").count() == 0  # trained-format weights: no warning
        page.screenshot(path=tmp_path / "segmented.png", full_page=True)
        assert (tmp_path / "segmented.png").stat().st_size > 10_000

        # Bad uploads: each shows its reason on the page, and the previous result is gone.
        submit("big.png", "cat")
        expect(page.get_by_text("big.png is 500x500 = 0.25 megapixels, over the limit of 0.2").first).to_be_visible()
        expect(page.locator("#overlay img")).to_have_count(0)
        expect(page.locator("#groups img")).to_have_count(0)
        assert "pixels" not in page.locator("#legend").inner_text()
        submit("fake.png", "cat")
        expect(page.get_by_text("fake.png is not a PNG, JPEG, WEBP, BMP, GIF, TIFF image").first).to_be_visible()
        page.locator("#image button[aria-label=Clear]").click()
        file_input.set_input_files(photos["notes.txt"])  # refused by the page before it is sent
        expect(page.get_by_text("Invalid file type: notes.txt")).to_be_visible()
        file_input.set_input_files(photos["heavy.png"])  # over --max-upload-mb
        expect(page.get_by_text("exceed the maximum allowed size")).to_be_visible()
        page.screenshot(path=tmp_path / "errors.png", full_page=True)
        assert not any(temp_dir.rglob("heavy.png")) and not any(temp_dir.rglob("notes.txt"))  # never stored

        # The server still serves: a new photo and new words give a new legend.
        submit("astronaut.jpg", "person, flag")
        expect(page.locator("#legend")).to_contain_text("flag", timeout=60_000)
        expect(page.locator("#status")).to_contain_text("256x256 pixels")
        # And an example photo with its words (scikit-image's chelsea; the others are over this server's limit): a
        # thumbnail to click.
        page.locator("#image button[aria-label=Clear]").click()
        thumbnail = page.locator("#examples button").filter(has=page.get_by_alt_text("chelsea"))
        assert thumbnail.locator("img").evaluate("img => img.naturalWidth") > 100
        thumbnail.click()
        expect(page.locator("#classes textarea")).to_have_value("cat, floor")
        expect(page.locator("#image")).to_contain_text("chelsea")
        page.locator("#segment").click()
        expect(page.locator("#legend")).to_contain_text("floor", timeout=60_000)
        expect(page.locator("#status")).to_contain_text("451x300 pixels")
        browser.close()


@pytest.mark.slow
def test_server_refuses_paths_it_did_not_receive(server, small_checkpoint, photos):
    url, _, _ = server
    # Both lie in the system temp dir, which older gradio versions served: not here.
    for path in (small_checkpoint, photos["chelsea.jpg"]):
        assert httpx.get(f"{url}gradio_api/file={path}", timeout=10).status_code == 403
    # A forged request naming a photo on the server instead of an upload is refused; segmenting it would work.
    forged = {"path": str(photos["chelsea.jpg"]), "meta": {"_type": "gradio.FileData"}}
    data = [forged, "cat", 0.9, "whole", "none"]  # photo, classes, threshold, mode, background words
    event = httpx.post(f"{url}gradio_api/call/segment", json={"data": data}, timeout=10)
    answer = httpx.get(f"{url}gradio_api/call/segment/{event.json()['event_id']}", timeout=60).text
    assert "event: error" in answer and "event: complete" not in answer


def test_missing_chromium_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        launch_chromium(None)


@pytest.mark.slow
def test_page_serves_the_shipped_model_by_default(tmp_path):
    """No --checkpoint: the synthvoc model shipped in the package, its classes prefilled, SynthVOC scenes as
    examples; an example scene with its prefilled classes gets its largest object's class in the legend."""
    settings = groupvit.load_model("synthvoc").test_settings
    examples = json.loads((SYNTHVOC_EXAMPLES / "examples.json").read_text())
    with app_server([], tmp_path / "app.log") as (url, _, _), sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        expect(page.locator("body")).to_contain_text("Model: synthvoc, a small GroupViT this package trained")
        expect(page.locator("body")).to_contain_text("not photographs")
        assert page.locator("#weights-warning").count() == 0
        vocabulary = ", ".join(settings.classes)
        expect(page.locator("#classes textarea")).to_have_value(vocabulary)
        expect(page.locator("#threshold input[type=number]")).to_have_value(f"{settings.background_threshold:g}")
        page.locator("#examples button").filter(has=page.get_by_alt_text(examples[0]["caption"])).click()
        expect(page.locator("#classes textarea")).to_have_value(vocabulary)
        expect(page.locator("#preview img")).to_be_visible(timeout=30_000)
        page.locator("#segment").click()
        expect(page.locator("#overlay img")).to_be_visible(timeout=60_000)
        expect(page.locator("#status")).to_contain_text("whole mode")
        expect(page.locator("#status")).to_contain_text("short side resized to 64")
        shares = table_shares(page)
        assert shares.get(examples[0]["largest"], 0) > 0, shares
        page.screenshot(path=tmp_path / "shipped.png", full_page=True)
        browser.close()
        log = (tmp_path / "app.log").read_text()
        assert f"groupvit app: serving {url} (Ctrl-C stops it)" in log and "share=True" not in log, log
