"""Pictures of volumes: orthogonal slices (axial, coronal, sagittal) on a shared grey scale.

Orientation: the volume is first reordered to the closest RAS+ voxel order with its affine (no
resampling: an oblique volume is shown along its nearest anatomical axes). The slices are then
displayed in the **radiological convention** by default: the patient's right on the viewer's
left in the axial and coronal views; anterior up in the axial view, superior up in the coronal
and sagittal views, anterior on the left in the sagittal view. Letters at the image edges (R, L,
A, P, S, I) say so on the picture. ``convention="neurological"`` puts the patient's right on the
right instead. Pixels have their true aspect ratio (extents in mm).

Only ``matplotlib`` with the non-interactive Agg backend is used, so figures work on servers.
"""

from __future__ import annotations

import numpy as np

from ._validate import as_mask, as_volume, as_voxel_size
from .io import atomic_path

__all__ = ["plot_orthogonal", "save_orthogonal", "to_ras", "ras_orientation"]


def ras_orientation(affine):
    """The nibabel orientation (axis, flip per input axis) that reorders voxels to the closest
    RAS+ order: the one reorientation every picture of the package uses."""
    import nibabel.orientations as nio

    return nio.io_orientation(np.asarray(affine, float))


def to_ras(volume, affine):
    """Reorder a 3D volume to the closest RAS+ voxel order (no resampling).

    Returns ``(data, voxel_size)`` where ``voxel_size`` follows the new axes.
    """
    import nibabel.orientations as nio

    A = np.asarray(affine, float)
    ornt = ras_orientation(A)
    data = nio.apply_orientation(np.asarray(volume), ornt)
    vsz = np.linalg.norm(A[:3, :3], axis=0)
    vsz = vsz[np.argsort(ornt[:, 0])]  # axis i of the output came from input axis with ornt[:,0]==i
    return data, vsz


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


def plot_orthogonal(volume, *, affine=None, voxel_size=None, mask=None, centre=None, vmin=None,
                    vmax=None, title=None, unit="ppm", convention="radiological", cmap="gray"):
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
        Picks the slices (its centre of mass) and the display window; outside it is shown as is.
    centre : 3 ints, optional
        Voxel (in the input's order) the slices go through; default the mask's centre.
    vmin, vmax : float, optional
        Grey scale limits in ``unit``; default +-99.5th percentile of |values| in the mask.
    title : str, optional
    unit : str
        Label of the colour bar (default ppm).
    convention : {"radiological", "neurological"}
        Patient's right on the viewer's left (radiological, default) or right.
    cmap : str
        Matplotlib colour map (default grey).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    vol = as_volume(volume, "volume")
    msk = None if mask is None else as_mask(mask, vol.shape, "mask", allow_empty=True)
    if convention not in ("radiological", "neurological"):
        raise ValueError(f"convention must be 'radiological' or 'neurological', got {convention!r}")
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
    data, vsz = to_ras(vol, affine)
    # the centre voxel follows the reordering: mark it and find it again
    marker = np.zeros(vol.shape, bool)
    marker[tuple(centre)] = True
    c = np.argwhere(to_ras(marker, affine)[0])[0]
    if voxel_size is not None:
        vsz = as_voxel_size(voxel_size)[np.argsort(ras_orientation(affine)[:, 0])]

    # (slice, horizontal extent mm, vertical extent mm, flip horizontal, edge letters)
    radio = convention == "radiological"
    views = [
        ("axial", data[:, :, c[2]].T, vsz[0], vsz[1], radio, ("R", "L") if radio else ("L", "R"), ("A", "P")),
        ("coronal", data[:, c[1], :].T, vsz[0], vsz[2], radio, ("R", "L") if radio else ("L", "R"), ("S", "I")),
        ("sagittal", data[c[0], :, :].T, vsz[1], vsz[2], True, ("A", "P"), ("S", "I")),
    ]
    fig = Figure(figsize=(11, 4.0), dpi=110, facecolor="black")
    axes = fig.subplots(1, 3)
    im = None
    for ax, (name, img, dx, dy, flip, (left, right), (top, bottom)) in zip(axes, views):
        if flip:
            img = img[:, ::-1]
        h, w = img.shape
        im = ax.imshow(img, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                       extent=(0, w * dx, 0, h * dy), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, color="white", fontsize=10)
        for txt, (x, y, ha, va) in zip((left, right, top, bottom),
                                       ((0.01, 0.5, "left", "center"), (0.99, 0.5, "right", "center"),
                                        (0.5, 0.99, "center", "top"), (0.5, 0.01, "center", "bottom"))):
            ax.text(x, y, txt, transform=ax.transAxes, color="yellow", ha=ha, va=va, fontsize=9)
    cbar = fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.02)
    cbar.set_label(unit, color="white")
    cbar.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    label = f"{title}  " if title else ""
    fig.suptitle(f"{label}({convention} convention)", color="white", fontsize=11)
    return fig


def save_orthogonal(path, volume, *, force=False, **kwargs):
    """Write :func:`plot_orthogonal`'s figure to a PNG file atomically; returns the path."""
    fig = plot_orthogonal(volume, **kwargs)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(str(tmp), format="png", facecolor=fig.get_facecolor())
    return path
