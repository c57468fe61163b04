"""Pictures from `groupvit.viz` on small arrays whose colours are known pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from groupvit.viz import add_legend, colorize, comparison_grid, group_maps_image, group_palette

RED, GREEN, IGNORE = [128, 0, 0], [0, 128, 0], [224, 224, 192]  # VOC labels 1, 2 and 255
LIGHT_IGNORE = [242, 242, 229]  # IGNORE 60 % of the way to white: a region's outline


def colours(picture) -> set[tuple[int, ...]]:
    return {tuple(c) for c in np.array(picture).reshape(-1, 3).tolist()}


def test_colorize_uses_voc_colours_and_wraps_indices():
    assert colorize(np.array([[0, 1], [2, 255]])).tolist() == [[[0, 0, 0], RED], [GREEN, IGNORE]]
    assert colorize(np.array([[257]])).tolist() == [[RED]]  # indices wrap around the 256 colours


def test_group_palette_gives_distinct_colours():
    palette = group_palette(64)
    assert palette.shape == (64, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette.tolist()}) == 64


def test_add_legend_draws_one_swatch_per_entry_beside_the_image():
    image = np.full((10, 8, 3), 50, np.uint8)
    out = np.array(add_legend(Image.fromarray(image), [("cat", (255, 0, 0)), ("dog", (0, 0, 255))]))
    assert out.shape[0] >= 2 * 20 and out.shape[1] > 8
    assert (out[:10, :8] == 50).all()  # the image itself is untouched
    # Swatches sit at x 6..20 right of the image, rows 20 px apart starting at y 6.
    assert out[10, 8 + 12].tolist() == [255, 0, 0]
    assert out[30, 8 + 12].tolist() == [0, 0, 255]


def test_group_maps_image_blends_each_stage_over_the_photo():
    image = np.full((40, 30, 3), 100, np.uint8)
    first = np.zeros((40, 30), int)
    first[:, 15:] = 1
    second = np.full((40, 30), 2)
    out = np.array(group_maps_image(image, [first, second], alpha=0.5, min_side=1))
    assert out.shape == (20 + 40 + 4, 3 * 30 + 2 * 4, 3)  # titles above; photo, stage 1, stage 2 with 4 px gaps
    out = out[20:60]
    assert (out[:, :30] == 100).all()
    stage1, stage2 = out[:, 34:64], out[:, 68:98]
    expected = (0.5 * 100 + 0.5 * group_palette(2, seed=0)).astype(np.uint8)  # the drawn colour of groups 0 and 1
    assert stage1[30, 5].tolist() == expected[0].tolist() and stage1[30, 25].tolist() == expected[1].tolist()
    assert stage1[30, 5].tolist() != stage1[30, 25].tolist()
    assert stage2[30, 10].tolist() == (0.5 * 100 + 0.5 * group_palette(3, seed=1)[2]).astype(np.uint8).tolist()


def test_comparison_grid_places_photo_truth_and_prediction_with_a_legend():
    names = ["background", "aeroplane", "bicycle"]
    image = np.full((6, 8, 3), (10, 20, 30), np.uint8)
    truth = np.ones((6, 8), int)
    truth[:, 6:] = 255  # unlabelled pixels
    prediction = np.full((6, 8), 2)
    small = (np.full((4, 5, 3), 200, np.uint8), np.zeros((4, 5), int), np.zeros((4, 5), int))
    grid = comparison_grid([(image, truth, prediction), small], names, min_side=1)
    out = np.array(grid)
    top = 20  # the column titles
    assert out[top + 2, 2].tolist() == [10, 20, 30]  # photo at x 0
    assert out[top + 2, 12 + 1].tolist() == RED and out[top + 2, 12 + 7].tolist() == LIGHT_IGNORE  # truth at 8 + 4
    assert out[top + 2, 24 + 3].tolist() == GREEN  # prediction at x 2 * (8 + 4)
    second = top + 6 + 4  # the next row starts below the first one and a 4 px gap
    assert out[second + 1, 1].tolist() == [200, 200, 200] and out[second + 1, 13].tolist() == [0, 0, 0]
    legend = out[:, 3 * 8 + 2 * 4 :]
    found = colours(legend)
    assert {tuple(RED), tuple(GREEN), tuple(IGNORE), (0, 0, 0)} <= found  # every label seen, and "ignored"
    assert grid.height >= 4 * 20  # four legend rows fit


def test_comparison_grid_lists_only_labels_that_occur():
    image = np.zeros((4, 4, 3), np.uint8)
    truth = np.full((4, 4), 2)
    legend = np.array(comparison_grid([(image, truth, truth)], ["background", "aeroplane", "bicycle"]))[:, 20:]
    assert tuple(GREEN) in colours(legend) and tuple(RED) not in colours(legend)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "at least one"),
        ([(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), int), np.zeros((4, 5), int))], "differ in size"),
        ([(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 3), np.zeros((4, 4), int))], "label 3 has no name"),
    ],
)
def test_comparison_grid_rejects_bad_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        comparison_grid(rows, ["background", "aeroplane", "bicycle"])


def test_small_pictures_are_enlarged_whole_pixels_for_maps():
    from groupvit.viz import display_scale, overlay

    assert [display_scale(s) for s in ((96, 96, 3), (100, 200), (160, 96), (500, 300))] == [4, 2, 3, 1]
    image = np.full((96, 96, 3), 100, np.uint8)
    labels = np.zeros((96, 96), int)
    labels[0, 0] = 2  # one pixel of class 2 becomes a 4 x 4 block, nothing beside it
    out = np.array(overlay(image, labels, ["cat", "dog"], alpha=0.5, legend=False))
    assert out.shape == (384, 384, 3)
    assert (out[:4, :4] == [50, 114, 50]).all() and (out[4, :4] == 100).all() and (out[:4, 4] == 100).all()


def test_dark_regions_are_outlined_in_a_lighter_shade():
    from groupvit.viz import outline, voc_palette

    labels = np.zeros((12, 12), int)
    labels[3:9, 3:9] = 8  # VOC's cat, (64, 0, 0): nearly black
    drawn = outline(colorize(labels), labels, width=2)
    cat = voc_palette()[8]
    assert cat.tolist() == [64, 0, 0] and drawn[6, 6].tolist() == [64, 0, 0]  # the inside keeps its colour
    assert drawn[3, 6].tolist() == drawn[4, 6].tolist() == [178, 153, 153]  # 64 + 0.6 * 191, 0.6 * 255
    assert drawn[2, 6].tolist() == drawn[1, 6].tolist() == [153, 153, 153]  # the background side, lighter too
    assert drawn[0, 6].tolist() == [0, 0, 0] and drawn[5, 6].tolist() == [64, 0, 0]  # 2 px each side only


def test_grid_rows_have_captions_and_group_map_titles_are_whole():
    from groupvit.viz import _font

    image, labels = np.full((8, 8, 3), 255, np.uint8), np.zeros((8, 8), int)
    plain = np.array(comparison_grid([(image, labels)], ["background"], ("image", "truth"), min_side=1))
    captioned = np.array(
        comparison_grid([(image, labels)], ["background"], ("image", "truth"), captions=["a cat"], min_side=1)
    )
    assert captioned.shape[0] == plain.shape[0] + 20
    band = captioned[20 + 8 : 20 + 8 + 20, :40]  # under the row
    assert (band < 128).any() and (plain[20 + 8 :, :40] == 255).all()
    # The title of a 96-pixel scene's stage is drawn whole above the (enlarged) panel, not over it.
    scene = np.full((96, 96, 3), 255, np.uint8)
    out = group_maps_image(scene, [np.zeros((96, 96), int)], alpha=0.0)
    title = "stage 1: 1 groups"
    alone = Image.new("RGB", (600, 20), "white")
    ImageDraw.Draw(alone).text((4, 3), title, fill="black", font=_font())
    header = np.array(out)[:20, 384 + 4 :]
    assert header.shape[1] > ImageDraw.Draw(alone).textlength(title, font=_font()) + 4
    assert (header == np.array(alone)[:, : header.shape[1]]).all()
    assert (np.array(out)[20 : 20 + 384, 384 + 4 :] == 255).all()  # the panel below is untouched
