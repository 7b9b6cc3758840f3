"""Pictures of volumes: orthogonal slices (axial, coronal, sagittal), one orientation convention.

Every picture of the package (the pipeline's PNG, the subject report, the evaluation's slice
figures) goes through the three functions of this module that decide where the patient is on
the screen, so they cannot disagree:

* :func:`to_ras` reorders a volume to the closest RAS+ voxel order with its affine (no
  resampling: an oblique volume is shown along its nearest anatomical axes);
* :func:`ras_slices` cuts axial, coronal and sagittal slices out of a RAS+ volume;
* :func:`show_slice` draws one of them in the package's convention, :data:`CONVENTION`, and puts
  the orientation letters (R, L, A, P, S, I) at the edges of the view.

The convention is **radiological**: the patient's right on the viewer's left in the axial and
coronal views (as if facing the patient, the way scanners and PACS viewers show clinical
images); anterior up in the axial view, superior up in the coronal and sagittal views, anterior
on the left in the sagittal view. Why radiological, not neurological: ``docs/report.md``.
``convention="neurological"`` (patient's right on the right, anterior on the right of the
sagittal view) is kept for a caller who asks for it; the package never does. Pixels keep their
true aspect ratio (extents in mm).

Only ``matplotlib`` with the non-interactive Agg backend is used, so figures work on servers.
"""

from __future__ import annotations

import numpy as np

from ._validate import as_mask, as_volume, as_voxel_size
from .io import atomic_path

__all__ = [
    "CONVENTION",
    "VIEWS",
    "check_convention",
    "convention_label",
    "plot_orthogonal",
    "ras_orientation",
    "ras_slices",
    "ras_voxel_size",
    "save_orthogonal",
    "show_slice",
    "to_ras",
    "view_letters",
]

#: The orientation convention of every picture of the package.
CONVENTION = "radiological"
CONVENTIONS = ("radiological", "neurological")
VIEWS = ("axial", "coronal", "sagittal")

# Letters at the (left, right, bottom, top) edges of each view of a RAS+ grid drawn as stored
# (columns: increasing x, y or y; rows from the bottom: increasing y, z or z). That is the
# neurological picture; the radiological one mirrors it left-right.
_RAS_LETTERS = {"axial": ("L", "R", "P", "A"), "coronal": ("L", "R", "I", "S"),
                "sagittal": ("P", "A", "I", "S")}


def check_convention(convention):
    """Return ``convention`` if it is "radiological" or "neurological", else raise ValueError."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be 'radiological' or 'neurological', got {convention!r}")
    return convention


def convention_label(convention=CONVENTION):
    """A short sentence saying where the patient's right is, for titles and captions."""
    check_convention(convention)
    side = "left" if convention == "radiological" else "right"
    return f"{convention} convention: the patient's right on the viewer's {side}"


def view_letters(view, convention=CONVENTION):
    """The orientation letters at the (left, right, bottom, top) edges of ``view``."""
    if view not in _RAS_LETTERS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    left, right, bottom, top = _RAS_LETTERS[view]
    if check_convention(convention) == "radiological":
        left, right = right, left
    return left, right, bottom, top


def ras_orientation(affine):
    """The nibabel orientation (axis, flip per input axis) that reorders voxels to the closest
    RAS+ order: the one reorientation every picture of the package uses."""
    import nibabel.orientations as nio

    return nio.io_orientation(np.asarray(affine, float))


def ras_voxel_size(voxel_size, affine):
    """Voxel sizes (mm, input axis order) reordered to follow the axes of :func:`to_ras`."""
    vsz = np.asarray(voxel_size, float)
    ornt = ras_orientation(affine)
    out = np.empty(3)
    out[ornt[:, 0].astype(int)] = vsz
    return out


def to_ras(volume, affine):
    """Reorder a volume to the closest RAS+ voxel order (no resampling).

    Parameters
    ----------
    volume : (X, Y, Z, ...) array
        Extra trailing axes (echoes, RGB) are carried along.
    affine : (4, 4) array or None
        Voxel-to-world (RAS+, mm) transform; None takes the voxel axes as RAS+ with 1 mm voxels.

    Returns
    -------
    (data, voxel_size)
        The reordered array and its voxel size (mm) along the new axes.
    """
    import nibabel.orientations as nio

    if affine is None:
        return np.asarray(volume), np.ones(3)
    A = np.asarray(affine, float)
    ornt = ras_orientation(A)
    data = nio.apply_orientation(np.asarray(volume), ornt)
    return data, ras_voxel_size(np.linalg.norm(A[:3, :3], axis=0), A)


def ras_slices(data, index, *, voxel_size=(1.0, 1.0, 1.0), bounds=None):
    """Axial, coronal and sagittal slices of a RAS+ volume, in anatomical order.

    Parameters
    ----------
    data : (X, Y, Z, ...) array
        On a RAS+ grid (:func:`to_ras`).
    index : 3 ints
        The voxel (RAS+ grid) the slices go through.
    voxel_size : 3 floats
        mm, along the RAS+ axes.
    bounds : ((x0, y0, z0), (x1, y1, z1)), optional
        Crop every slice to this box (upper bounds excluded); default the whole volume.

    Returns
    -------
    dict
        ``axial``, ``coronal``, ``sagittal``: 2D arrays (plus any trailing axes) whose rows run
        from the bottom (posterior or inferior) up, for ``origin="lower"``, and whose columns
        run along increasing x (axial, coronal) or y (sagittal), i.e. not yet in a display
        convention (:func:`show_slice` applies it); ``extent_<view>`` (x0, x1, y0, y1) in mm;
        ``index``.
    """
    i, j, k = (int(v) for v in index)
    lo, hi = ((0, 0, 0), data.shape[:3]) if bounds is None else bounds
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    dx, dy, dz = (float(v) for v in voxel_size)

    def t(a):  # first two axes swapped: rows become the vertical axis
        return np.ascontiguousarray(np.swapaxes(a, 0, 1))

    return {
        "axial": t(data[x0:x1, y0:y1, k]),
        "coronal": t(data[x0:x1, j, z0:z1]),
        "sagittal": t(data[i, y0:y1, z0:z1]),
        "extent_axial": np.array([x0 * dx, x1 * dx, y0 * dy, y1 * dy]),
        "extent_coronal": np.array([x0 * dx, x1 * dx, z0 * dz, z1 * dz]),
        "extent_sagittal": np.array([y0 * dy, y1 * dy, z0 * dz, z1 * dz]),
        "index": np.array([i, j, k]),
    }


def show_slice(ax, image, view, *, extent=None, convention=CONVENTION, letters=True,
               letter_color="yellow", letter_size=9, **imshow_kwargs):
    """Draw one slice of :func:`ras_slices` on ``ax`` in ``convention``, with its letters.

    Parameters
    ----------
    ax : matplotlib Axes
    image : (rows, columns[, channels]) array
        A slice as :func:`ras_slices` cuts it (rows from the bottom up, columns along increasing
        RAS coordinate).
    view : {"axial", "coronal", "sagittal"}
    extent : 4 floats, optional
        (x0, x1, y0, y1) in mm, for the aspect ratio; default one unit a pixel.
    convention : {"radiological", "neurological"}
        Default :data:`CONVENTION`; the radiological picture is the stored one mirrored.
    letters : bool
        Write the orientation letters at the four edges.
    **imshow_kwargs
        Passed to ``ax.imshow`` (cmap, vmin, vmax, ...).

    Returns
    -------
    matplotlib.image.AxesImage
    """
    left, right, bottom, top = view_letters(view, convention)
    img = np.asarray(image)
    if convention == "radiological":
        img = img[:, ::-1]
    h, w = img.shape[:2]
    if extent is None:
        width, height = float(w), float(h)
    else:
        x0, x1, y0, y1 = (float(v) for v in extent)
        width, height = abs(x1 - x0), abs(y1 - y0)
    imshow_kwargs.setdefault("interpolation", "nearest")
    im = ax.imshow(img, origin="lower", extent=(0.0, width, 0.0, height), **imshow_kwargs)
    ax.set_xlim(0.0, width)
    ax.set_ylim(0.0, height)
    if letters:
        from matplotlib import patheffects

        # a dark rim keeps the letters legible on bright pictures (R2*, magnitude)
        kw = {"color": letter_color, "fontsize": letter_size, "fontweight": "bold",
              "transform": ax.transAxes,
              "path_effects": [patheffects.withStroke(linewidth=2.5, foreground="black")]}
        ax.text(0.015, 0.5, left, ha="left", va="center", **kw)
        ax.text(0.985, 0.5, right, ha="right", va="center", **kw)
        ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **kw)
        ax.text(0.5, 0.985, top, ha="center", va="top", **kw)
    return im


def _window(volume, mask, vmin, vmax):
    vals = volume[mask] if mask is not None and mask.any() else volume.ravel()
    if vmin is None or vmax is None:
        hi = float(np.percentile(np.abs(vals), 99.5)) if vals.size else 1.0
        hi = hi if hi > 0 else 1.0
        vmin = -hi if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    return float(vmin), float(vmax)


def _outline(mask2d, color):
    """An RGBA picture of the boundary pixels of a 2D mask (the mask minus its erosion)."""
    from matplotlib.colors import to_rgba
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask2d, bool)
    rim = m & ~binary_erosion(m, border_value=0)
    rgba = np.zeros(m.shape + (4,), np.float32)
    rgba[rim] = to_rgba(color)
    return rgba


_FIG_W, _FIG_H = 11.0, 4.0  # inches
_TOP, _BOTTOM, _GAP, _SIDE, _CBAR = 0.62, 0.3, 0.25, 0.15, 1.2  # inches


def _layout(extents):
    """Axes boxes (figure fractions) of three panels side by side at their true aspect ratio,
    as large as the canvas allows, and the colour bar's box to their right."""
    w = np.array([abs(e[1] - e[0]) for e in extents], float)
    h = np.array([abs(e[3] - e[2]) for e in extents], float)
    scale = min((_FIG_H - _TOP - _BOTTOM) / h.max(),
                (_FIG_W - 2 * _SIDE - 2 * _GAP - _CBAR) / w.sum())  # inches per mm
    x = (_FIG_W - _CBAR - scale * w.sum() - 2 * _GAP) / 2
    top = _FIG_H - _TOP
    boxes = []
    for wi, hi in zip(w, h):
        boxes.append([x / _FIG_W, (top - scale * hi) / _FIG_H, scale * wi / _FIG_W,
                      scale * hi / _FIG_H])
        x += scale * wi + _GAP
    height = scale * h.max()
    cbox = [(x + 0.05) / _FIG_W, (top - height) / _FIG_H, 0.15 / _FIG_W, height / _FIG_H]
    return boxes, cbox


def plot_orthogonal(volume, *, affine=None, voxel_size=None, mask=None, centre=None, vmin=None,
                    vmax=None, title=None, unit="ppm", convention=CONVENTION, cmap="gray",
                    outline=None, outline_color="#ff3030", blank_outside=False, dpi=110):
    """Draw axial, coronal and sagittal slices of a volume with one colour bar.

    Parameters
    ----------
    volume : (X, Y, Z) array
        The values (e.g. susceptibility in ppm).
    affine : (4, 4) array, optional
        Voxel-to-world (RAS+) transform; without it the voxel axes are taken as RAS.
    voxel_size : 3 floats, optional
        mm; default from the affine, else 1 mm.
    mask : (X, Y, Z) bool, optional
        Picks the slices (its centre of mass) and the display window.
    centre : 3 ints, optional
        Voxel (in the input's order) the slices go through; default the mask's centre.
    vmin, vmax : float, optional
        Grey scale limits in ``unit``; default +-99.5th percentile of |values| in the mask.
    title : str, optional
    unit : str
        Label of the colour bar (default ppm).
    convention : {"radiological", "neurological"}
        Default :data:`CONVENTION` (radiological), the one every picture of the package uses.
    cmap : str
        Matplotlib colour map (default grey).
    outline : (X, Y, Z) bool or a list of them, optional
        Masks drawn as coloured outlines over the slices.
    outline_color : colour or list of colours
        One per outline (default red).
    blank_outside : bool
        Show voxels outside ``mask`` black instead of their values.
    dpi : int
        Resolution of the figure (the canvas is 11 x 4 inches; the panels fill it at their
        true aspect ratio).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    vol = as_volume(volume, "volume")
    msk = None if mask is None else as_mask(mask, vol.shape, "mask", allow_empty=True)
    if outline is None:
        outlines = []
    elif isinstance(outline, (list, tuple)):
        outlines = [as_mask(o, vol.shape, "outline", allow_empty=True) for o in outline]
    else:
        outlines = [as_mask(outline, vol.shape, "outline", allow_empty=True)]
    colors = [outline_color] if isinstance(outline_color, str) else list(outline_color)
    if len(colors) < len(outlines):
        raise ValueError(f"outline_color must give one colour per outline ({len(outlines)}), "
                         f"got {len(colors)}")
    check_convention(convention)
    if centre is None:
        if msk is not None and msk.any():
            centre = np.round(np.argwhere(msk).mean(0)).astype(int)
        else:
            centre = np.asarray(vol.shape) // 2
    centre = np.clip(np.asarray(centre, int), 0, np.asarray(vol.shape) - 1)
    vmin, vmax = _window(vol, msk, vmin, vmax)

    if affine is None:
        vsz = np.ones(3) if voxel_size is None else as_voxel_size(voxel_size)
        affine = np.diag(list(vsz) + [1.0])
    shown = vol.astype(np.float32)
    if blank_outside and msk is not None:
        shown = np.where(msk, shown, np.nan)
    data, vsz = to_ras(shown, affine)
    if voxel_size is not None:
        vsz = ras_voxel_size(as_voxel_size(voxel_size), affine)
    # the centre voxel follows the reordering: mark it and find it again
    marker = np.zeros(vol.shape, bool)
    marker[tuple(centre)] = True
    c = np.argwhere(to_ras(marker, affine)[0])[0]
    slices = ras_slices(data, c, voxel_size=vsz)
    rims = []
    for out, color in zip(outlines, colors):
        sl = ras_slices(to_ras(out, affine)[0], c, voxel_size=vsz)
        rims.append({view: _outline(sl[view], color) for view in VIEWS})

    colours = matplotlib.colormaps[cmap].with_extremes(bad="black")
    fig = Figure(figsize=(_FIG_W, _FIG_H), dpi=dpi, facecolor="black")
    boxes, cbox = _layout([slices[f"extent_{view}"] for view in VIEWS])
    im = None
    for box, view in zip(boxes, VIEWS):
        ax = fig.add_axes(box)
        ext = slices[f"extent_{view}"]
        im = show_slice(ax, slices[view], view, extent=ext, convention=convention, cmap=colours,
                        vmin=vmin, vmax=vmax, letter_size=10)
        for rim in rims:
            show_slice(ax, rim[view], view, extent=ext, convention=convention, letters=False)
        ax.set_axis_off()
        ax.set_title(view, color="white", fontsize=10)
    cbar = fig.colorbar(im, cax=fig.add_axes(cbox))
    cbar.set_label(unit, color="white")
    cbar.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    label = f"{title}  " if title else ""
    fig.suptitle(f"{label}({convention} convention)", color="white", fontsize=11)
    fig.text(0.005, 0.01, convention_label(convention), color="#bbbbbb", fontsize=8,
             ha="left", va="bottom")
    return fig


def save_orthogonal(path, volume, *, force=False, **kwargs):
    """Write :func:`plot_orthogonal`'s figure to a PNG file atomically; returns the path."""
    fig = plot_orthogonal(volume, **kwargs)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(str(tmp), format="png", facecolor=fig.get_facecolor())
    return path
