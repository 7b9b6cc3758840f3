"""One orientation convention for every picture: the subject's left shows on the side labelled
L whatever the affine, in metaqsm.figures and metaqsm.evaluate.figures alike."""

import numpy as np
import pytest

from metaqsm.evaluate.figures import case_slices, plot_slices
from metaqsm.figures import (CONVENTION, check_convention, plot_orthogonal, to_ras, view_letters)

SHAPE = (22, 24, 20)


def _rotation_z(deg):
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _affine(linear):
    A = np.eye(4)
    A[:3, :3] = linear
    A[:3, 3] = [7.0, -3.0, 12.0]
    return A


AFFINES = {
    "RAS": _affine(np.diag([1.0, 1.0, 1.5])),
    "LAS": _affine(np.diag([-1.0, 1.0, 1.5])),
    "LPS": _affine(np.diag([-1.0, -1.0, 1.5])),
    # voxel axis 0 runs posterior-anterior, axis 1 left-right, axis 2 inferior-superior
    "permuted": _affine(np.array([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.5]])),
    # stored upside down and tilted by 10 degrees
    "oblique-LPI": _affine(_rotation_z(10) @ np.diag([-1.0, -1.0, -1.5])),
}
# marker values and their offsets from the centre in world (RAS+) mm
LEFT, ANTERIOR, SUPERIOR = 1.0, 0.6, 0.3
OFFSETS = {LEFT: (-6.0, 0, 0), ANTERIOR: (0, 6.0, 0), SUPERIOR: (0, 0, 6.0)}


def _phantom(affine):
    """Three small spheres placed from the affine: on the subject's left, in front, on top."""
    ijk = np.indices(SHAPE).reshape(3, -1).T.astype(float)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = world.mean(0)
    vol = np.zeros(SHAPE, np.float32)
    for value, offset in OFFSETS.items():
        near = np.linalg.norm(world - (centre + offset), axis=1) <= 2.6
        vol.reshape(-1)[near] = value
    centre_voxel = np.round(np.linalg.solve(affine[:3, :3], centre - affine[:3, 3])).astype(int)
    return vol, centre_voxel


def _where(ax, value):
    """Centre of the pixels of ``value`` on the axes, in axes fractions (x right, y up)."""
    img = np.asarray(ax.images[0].get_array(), float)
    rows, cols = np.nonzero(np.abs(img - value) < 1e-3)
    assert rows.size, f"marker {value} not in the {ax.get_title()} view"
    h, w = img.shape
    return (cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h


def _letter(ax, letter):
    found = [t.get_position() for t in ax.texts if t.get_text() == letter]
    assert len(found) == 1, f"letter {letter} not on the {ax.get_title()} view"
    return np.asarray(found[0], float)


def _on_side(ax, value, letter, opposite):
    pos = np.asarray(_where(ax, value))
    return np.linalg.norm(pos - _letter(ax, letter)) < np.linalg.norm(pos - _letter(ax, opposite))


def _check_views(views):
    """``views``: view name -> Axes."""
    for name in ("axial", "coronal"):
        assert _on_side(views[name], LEFT, "L", "R"), f"{name}: the left marker is not at L"
    assert _on_side(views["axial"], ANTERIOR, "A", "P")
    assert _on_side(views["sagittal"], ANTERIOR, "A", "P")
    assert _on_side(views["coronal"], SUPERIOR, "S", "I")
    assert _on_side(views["sagittal"], SUPERIOR, "S", "I")


def _orthogonal_views(vol, affine, centre, **kw):
    fig = plot_orthogonal(vol, affine=affine, centre=centre, vmin=-1, vmax=1, **kw)
    views = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    return fig, views


def _evaluation_views(vol, affine, centre, **kw):
    marker = np.zeros(SHAPE, bool)
    marker[tuple(centre)] = True
    index = np.argwhere(to_ras(marker, affine)[0])[0]
    sample = {"mask": np.ones(SHAPE, bool), "voxel_size": np.linalg.norm(affine[:3, :3], axis=0),
              "affine": affine}
    slicer = case_slices(sample, index=index)
    fig = plot_slices([("test", slicer(vol))], mask=slicer(sample["mask"]), chi_window=1.0, **kw)
    views = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.texts}
    return fig, views


@pytest.mark.parametrize("name", list(AFFINES))
def test_the_subjects_left_is_on_the_side_labelled_L_in_every_picture(name):
    affine = AFFINES[name]
    vol, centre = _phantom(affine)
    fig_o, orth = _orthogonal_views(vol, affine, centre)
    fig_e, ev = _evaluation_views(vol, affine, centre)
    _check_views(orth)
    _check_views(ev)
    # the one convention: the two modules draw the same pictures
    for view in ("axial", "coronal", "sagittal"):
        a = np.asarray(orth[view].images[0].get_array(), float)
        b = np.asarray(ev[view].images[0].get_array(), float)
        assert np.array_equal(a, b), view
    # radiological: the subject's left on the viewer's right, anterior on the left of sagittal
    assert CONVENTION == "radiological"
    assert _where(orth["axial"], LEFT)[0] > 0.5 and _where(ev["coronal"], LEFT)[0] > 0.5
    assert _where(orth["sagittal"], ANTERIOR)[0] < 0.5
    for fig in (fig_o, fig_e):
        assert "radiological convention" in fig._suptitle.get_text()
        assert any("patient's right on the viewer's left" in t.get_text() for t in fig.texts)


def test_neurological_on_request_mirrors_and_relabels():
    affine = AFFINES["LPS"]
    vol, centre = _phantom(affine)
    _, orth = _orthogonal_views(vol, affine, centre, convention="neurological")
    _, ev = _evaluation_views(vol, affine, centre, convention="neurological")
    for views in (orth, ev):
        _check_views(views)
        assert _where(views["axial"], LEFT)[0] < 0.5


def test_letters_and_convention_errors():
    assert view_letters("axial") == ("R", "L", "P", "A")
    assert view_letters("sagittal") == ("A", "P", "I", "S")
    assert view_letters("coronal", "neurological") == ("L", "R", "I", "S")
    with pytest.raises(ValueError, match="convention must be 'radiological' or 'neurological', "
                                         "got 'upside-down'"):
        check_convention("upside-down")
    with pytest.raises(ValueError, match="view must be one of axial, coronal, sagittal"):
        view_letters("oblique")
    with pytest.raises(ValueError, match="convention must be"):
        plot_slices([("x", case_slices({"mask": np.ones((4, 4, 4), bool),
                                        "voxel_size": (1, 1, 1)})(np.zeros((4, 4, 4))))],
                    convention="upside-down")


def test_outline_and_blank_outside():
    vol = np.full(SHAPE, 0.5, np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[5:17, 6:18, 4:16] = True
    fig = plot_orthogonal(vol, mask=mask, outline=[mask], outline_color=["red"],
                          blank_outside=True, vmin=0, vmax=1)
    axial = fig.axes[0]
    img = np.ma.filled(np.asarray(axial.images[0].get_array(), float), np.nan)
    assert np.isnan(img).any() and np.nanmax(img) == 0.5  # outside the mask: not drawn (black)
    rim = np.asarray(axial.images[1].get_array())
    assert rim.shape[-1] == 4 and rim[..., 3].sum() == 2 * (12 + 12) - 4  # a 12 x 12 square's edge
    with pytest.raises(ValueError, match="outline_color must give one colour per outline"):
        plot_orthogonal(vol, outline=[mask, mask], outline_color=["red"])
