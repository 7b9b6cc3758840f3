"""Report figures: orthogonal slices of every method side by side, box plots and sweep plots.

Slices are cut on a RAS+ grid (the volume is reoriented to the closest RAS+ orientation when its
affine is known; synthetic volumes are taken as RAS+ already) and drawn in the package's one
orientation convention, :data:`metaqsm.figures.CONVENTION` (radiological: the patient's right on
the viewer's left in axial and coronal views, anterior up in axial views, superior up in coronal
and sagittal views, anterior on the left in sagittal views), by the same function as every other
picture of the package (:func:`metaqsm.figures.show_slice`), with letters at the edges. Each
panel is drawn with its physical extent in mm, so anisotropic voxels keep their shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import CONVENTION, VIEWS, convention_label, ras_slices, ras_voxel_size, show_slice
from ..figures import to_ras


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def case_slices(sample, index=None):
    """A function that cuts the same three orthogonal slices out of any volume of ``sample``.

    Parameters
    ----------
    sample : dict
        With ``mask`` (its centre of mass places the slices unless ``index`` is given),
        ``voxel_size`` (mm) and optionally ``affine`` (for the reorientation to RAS+).
    index : 3 ints, optional
        Slice indices on the RAS+ grid.

    Returns
    -------
    callable
        ``slicer(volume) -> dict`` of :func:`metaqsm.figures.ras_slices`: 2D arrays ``axial``,
        ``coronal``, ``sagittal`` on the RAS+ grid (rows from bottom to top, for
        ``origin="lower"``; not yet in the display convention, which is applied when drawing),
        cropped to the mask's bounding box plus 3 voxels, their ``extent_*`` in mm and the
        ``index``.
    """
    from scipy.ndimage import center_of_mass

    affine = sample.get("affine")
    vsz = np.asarray(sample["voxel_size"], float)
    mask = to_ras(np.asarray(sample["mask"]), affine)[0]
    vsz_ras = vsz if affine is None else ras_voxel_size(vsz, affine)
    if index is None:
        com = center_of_mass(mask.astype(np.float32)) if mask.any() else np.array(mask.shape) / 2
        index = [int(np.clip(round(c), 0, n - 1)) for c, n in zip(com, mask.shape)]
    # crop to the mask's bounding box (plus a margin) so the brain fills the panels
    if mask.any():
        nz_ = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        lo = [max(0, int(n[0]) - 3) for n in nz_]
        hi = [min(s, int(n[-1]) + 4) for n, s in zip(nz_, mask.shape)]
    else:
        lo, hi = [0, 0, 0], list(mask.shape)

    def slicer(volume):
        v = to_ras(np.asarray(volume), affine)[0]
        if v.dtype == bool:
            v = v.astype(np.uint8)
        return ras_slices(v, index, voxel_size=vsz_ras, bounds=(lo, hi))

    return slicer


def load_slices(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _masked(sl, mask_sl):
    a = np.asarray(sl, float).copy()
    if mask_sl is not None:
        a[np.asarray(mask_sl) == 0] = np.nan
    return a


def _sym_window(arrays, pct=99.5):
    parts = [np.abs(a[np.isfinite(a)]).ravel() for a in arrays if a is not None]
    vals = np.concatenate(parts or [np.zeros(1)])
    v = float(np.percentile(vals, pct)) if vals.size else 0.0
    return v if v > 0 else 1e-3


def _grey():
    import matplotlib

    return matplotlib.colormaps["gray"].with_extremes(bad="black")


def slice_figure(path, rows, *, dpi=110, **kwargs):
    """Write :func:`plot_slices`'s figure to the PNG ``path``; returns the path."""
    fig = plot_slices(rows, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path, dpi)
    return path


def plot_slices(rows, *, field=None, truth=None, mask=None, title="", chi_window=None,
                error_window=None, convention=CONVENTION):
    """Orthogonal slices of the field, the truth and every reconstruction, with error maps.

    Parameters
    ----------
    rows : list of (label, slices)
        One row per method: its label (e.g. "TKD\\nRMSE 61.2%") and the dict of
        :func:`case_slices`.
    field, truth, mask : slices dicts, optional
        The local field (own symmetric grey scale, ppm), the true susceptibility, and the mask
        (outside it is shown black).
    chi_window : float, optional
        Half width (ppm) of the shared symmetric grey scale of truth and reconstructions; default
        the 99.5th percentile of |truth| (or of the reconstructions without truth).
    error_window : float, optional
        Half width (ppm) of the symmetric grey scale of the error maps (reconstruction - truth).
    convention : {"radiological", "neurological"}
        Default :data:`metaqsm.figures.CONVENTION`, the one every picture of the package uses.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    from matplotlib import gridspec

    ref = truth or field or rows[0][1]
    mviews = {v: (mask[v] if mask is not None else None) for v in VIEWS}

    def img(sl, v):
        return _masked(sl[v], mviews[v])

    all_rows = []
    if field is not None:
        all_rows.append(("local field", field, "field"))
    if truth is not None:
        all_rows.append(("truth", truth, "chi"))
    all_rows += [(label, sl, "recon") for label, sl in rows]
    with_err = truth is not None and rows
    if chi_window is None:
        src = [img(truth, v) for v in VIEWS] if truth is not None else \
            [img(sl, v) for _, sl in rows for v in VIEWS]
        chi_window = _sym_window(src, pct=98.0)  # veins and bleeds saturate; tissue contrast shows
    errs = {}
    if with_err:
        for label, sl in rows:
            errs[label] = {v: img(sl, v) - img(truth, v) for v in VIEWS}
        if error_window is None:
            error_window = _sym_window([e[v] for e in errs.values() for v in VIEWS])
    field_window = _sym_window([img(field, v) for v in VIEWS]) if field is not None else None

    ext = {v: ref[f"extent_{v}"] for v in VIEWS}
    aspect = [float((ext[v][1] - ext[v][0]) / (ext[v][3] - ext[v][2])) for v in VIEWS]
    widths = aspect + [0.08] + ([0.5] + aspect + [0.08] if with_err else [])
    ncols = len(widths)
    nrows = len(all_rows)
    row_h = 1.55
    # room for the longest row label (8 pt: about 0.07 inch a character), at least 1.7 inch
    left_in = max(1.7, 0.3 + 0.07 * max(len(line) for label, _, _ in all_rows
                                        for line in label.split("\n")))
    fig_w = row_h * sum(widths) + left_in + 0.7
    fig_h = row_h * nrows + 1.0
    fig = plt.figure(figsize=(fig_w, fig_h))
    gs = gridspec.GridSpec(nrows, ncols, figure=fig, width_ratios=widths, wspace=0.04, hspace=0.06,
                           left=left_in / fig_w, right=1 - 0.7 / fig_w, top=1 - 0.8 / fig_h,
                           bottom=0.1 / fig_h)
    cmap = _grey()
    chi_im = err_im = None
    chi_rows, err_rows = [], []
    for r, (label, sl, kind) in enumerate(all_rows):
        win = field_window if kind == "field" else chi_window
        for c, v in enumerate(VIEWS):
            ax = fig.add_subplot(gs[r, c])
            im = show_slice(ax, img(sl, v), v, extent=ext[v], convention=convention, cmap=cmap,
                            vmin=-win, vmax=win, letters=r == 0, letter_size=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
            if r == 0:
                idx = ref["index"]
                ax.set_title(f"{v}\n{'xyz'[2 - c]} = {int(idx[2 - c])}", fontsize=8)
            if kind == "field":
                field_im = im
            else:
                chi_im = im
        if kind == "field":
            cax = fig.add_subplot(gs[r, 3])
            cb = fig.colorbar(field_im, cax=cax)
            cb.set_label("field (ppm)", fontsize=8)
            cb.ax.tick_params(labelsize=7)
        else:
            chi_rows.append(r)
        if with_err and kind == "recon":
            err_rows.append(r)
            for c, v in enumerate(VIEWS):
                ax = fig.add_subplot(gs[r, 5 + c])
                err_im = show_slice(ax, errs[label][v], v, extent=ext[v], convention=convention,
                                    cmap=cmap, vmin=-error_window, vmax=error_window,
                                    letters=r == err_rows[0], letter_size=7)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == err_rows[0]:
                    ax.set_title(f"error\n{v}", fontsize=8)
    if chi_rows:
        cax = fig.add_subplot(gs[chi_rows[0]:chi_rows[-1] + 1, 3])
        cb = fig.colorbar(chi_im, cax=cax)
        cb.set_label("susceptibility (ppm)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    if err_rows:
        cax = fig.add_subplot(gs[err_rows[0]:err_rows[-1] + 1, ncols - 1])
        cb = fig.colorbar(err_im, cax=cax)
        cb.set_label("error: method - truth (ppm)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    label = f"{title}  " if title else ""
    fig.suptitle(f"{label}({convention} convention)", fontsize=10)
    fig.text(0.005, 0.005, convention_label(convention), fontsize=7, color="0.3", ha="left",
             va="bottom")
    return fig


def _save(fig, path, dpi):
    from ..io import atomic_path

    plt = _plt()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def box_plot(path, values, *, metrics, title="", dpi=110):
    """One panel per metric, one box per method.

    Parameters
    ----------
    values : dict
        ``{method label: {metric key: list of values}}`` (methods in column order).
    metrics : list of (key, axis label)
    """
    plt = _plt()
    labels = list(values)
    width = max(3.2, 0.75 * len(labels) + 1.2)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 3.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], metrics):
        data = [np.asarray(values[m].get(key, []), float) for m in labels]
        ax.boxplot([d if d.size else [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(name)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path), dpi)
    return Path(path)


def sweep_plot(path, points, series, *, xlabel, ylabel="RMSE (%)", title="", categorical=False,
               dpi=110):
    """Mean +- standard deviation of a metric against a swept quantity, one line per method.

    Parameters
    ----------
    points : list of (x, x_label)
        The sweep's positions (in plotting order).
    series : dict
        ``{method label: list of (mean, sd) or None}`` aligned with ``points``.
    categorical : bool
        Place the points evenly and label them (voxel sizes) instead of on a numeric axis.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    xs = np.arange(len(points), dtype=float) if categorical else np.array([p[0] for p in points], float)
    span = float(np.ptp(xs)) if len(xs) > 1 else 1.0
    shown = [lab for lab, vals in series.items() if any(v is not None for v in vals)]
    for k, label in enumerate(shown):
        vals = series[label]
        mean = np.array([np.nan if v is None else v[0] for v in vals], float)
        sd = np.array([np.nan if v is None else v[1] for v in vals], float)
        dodge = (k - (len(shown) - 1) / 2) * 0.012 * span  # keep error bars apart
        ax.errorbar(xs + dodge, mean, yerr=sd, marker="o", capsize=3, label=label)
    ax.set_xticks(xs, [p[1] for p in points])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path), dpi)
    return Path(path)
