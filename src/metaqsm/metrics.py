"""Error metrics of a susceptibility map against a reference, as the QSM challenges define them.

All metrics are computed on the maps multiplied by the mask (zero outside it), as in the 2016 QSM
reconstruction challenge. ``rmse``, ``nrmse_demeaned`` and ``hfen`` are percentages; ``ssim``,
``xsim`` and ``correlation`` are unitless (1 for a perfect map); ``region_mae`` is in the unit
of the maps (ppm).

Definitions (x: the map under test, y: the reference, m: the mask, both maps multiplied by m):

* ``rmse`` = 100 * ||x - y|| / ||y||, no demeaning (the 2016 challenge's ``compute_rmse``).
* ``nrmse_demeaned``: the same after removing each map's mean over the mask (QSM-CI's NRMSE).
* ``hfen``: the RMSE formula applied to both maps filtered by a 15 x 15 x 15 Laplacian of
  Gaussian (sigma 1.5 voxels), over the whole filtered arrays (``compute_hfen``).
* ``ssim``: SSIM after rescaling both maps jointly to [0, 255]; Gaussian window of sigma 1.5
  voxels on 7 x 7 x 7; K = (0.01, 0.03); L = 255; mean of the SSIM map over the mask
  (``compute_ssim``).
* ``xsim``: the SSIM variant of the 2019 QSM challenge 2.0: no rescaling, L = 1 ppm,
  K = (0.01, 0.001), same window, mean over the mask (``compute_xsim``).
* ``correlation``: Pearson's correlation of the voxel values inside the mask.

References
----------
.. [1] Langkammer C, Schweser F, Shmueli K, et al. Quantitative susceptibility mapping: Report
   from the 2016 reconstruction challenge. Magn Reson Med. 2018;79(3):1661-1673.
   doi:10.1002/mrm.26830
.. [2] Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: A realistic in
   silico head phantom for MRI data simulation and evaluation of susceptibility mapping
   procedures. Magn Reson Med. 2021;86(1):526-542. doi:10.1002/mrm.28716 (XSIM: the challenge's
   ``compute_xsim``; QSM Challenge 2.0 Organization Committee, Magn Reson Med.
   2021;86(3):1241-1255, doi:10.1002/mrm.28754)
.. [3] Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from error
   visibility to structural similarity. IEEE Trans Image Process. 2004;13(4):600-612.
.. [4] Ravishankar S, Bresler Y. MR image reconstruction from highly undersampled k-space data by
   dictionary learning. IEEE Trans Med Imaging. 2011;30(5):1028-1041 (HFEN).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._fft import fft_convolve, padded_shape, rfft
from ._validate import as_mask, as_volume

__all__ = [
    "rmse",
    "nrmse_demeaned",
    "hfen",
    "ssim",
    "xsim",
    "correlation",
    "region_mae",
    "compute_metrics",
    "log_kernel",
    "gaussian_window",
]

HFEN_SIZE = 15
HFEN_SIGMA = 1.5
SSIM_HALF_WIDTH = 3  # the challenges' window is 2*3+1 = 7 voxels wide
SSIM_SIGMA = 1.5


def _pair(x, reference, mask):
    """Validated float64 copies of both maps multiplied by the mask, and the boolean mask."""
    x = as_volume(x, "x", dtype=np.float64)
    y = as_volume(reference, "reference", dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and reference must have the same shape, got {x.shape} and {y.shape}")
    m = as_mask(mask, x.shape, "mask")
    return x * m, y * m, m


def _relative_error(x, y, name="reference"):
    """100 * ||x - y|| / ||y||."""
    ny = np.linalg.norm(y.ravel())
    if ny == 0:
        raise ValueError(f"{name} is zero everywhere inside the mask: the relative error is undefined")
    return float(100.0 * np.linalg.norm((x - y).ravel()) / ny)


def rmse(x, reference, mask=None):
    """Relative root-mean-square error in %, no demeaning (2016 QSM challenge).

    ``100 * ||x*m - y*m|| / ||y*m||``.

    Parameters
    ----------
    x, reference : (X, Y, Z) arrays
        The map under test and the reference (ppm).
    mask : (X, Y, Z) array, optional
        Region of evaluation (non-zero voxels); default: every voxel.

    Returns
    -------
    float, in %.

    Raises
    ------
    ValueError
        If the shapes differ, the mask is empty or the reference is zero inside the mask.

    Examples
    --------
    >>> rmse(np.full((2, 2, 2), 1.1), np.ones((2, 2, 2)))  # doctest: +ELLIPSIS
    10.000...

    References
    ----------
    Langkammer C et al. Quantitative susceptibility mapping: Report from the 2016 reconstruction
    challenge. Magn Reson Med. 2018;79:1661-1673.
    """
    xm, ym, _ = _pair(x, reference, mask)
    return _relative_error(xm, ym)


def nrmse_demeaned(x, reference, mask=None):
    """Relative RMSE in % after removing each map's mean over the mask (as QSM-CI reports it).

    ``100 * ||(x - mean_m(x))*m - (y - mean_m(y))*m|| / ||(y - mean_m(y))*m||``: insensitive to
    a constant offset, which the dipole inversion cannot determine.

    Parameters and raises as :func:`rmse`; returns a float in %.
    """
    xm, ym, m = _pair(x, reference, mask)
    return _nrmse_demeaned(xm, ym, m)


def _nrmse_demeaned(xm, ym, m):
    xd = (xm - xm[m].mean()) * m
    yd = (ym - ym[m].mean()) * m
    return _relative_error(xd, yd, "reference minus its mean")


def log_kernel(size=HFEN_SIZE, sigma=HFEN_SIGMA):
    """The 3D Laplacian-of-Gaussian kernel of the 2016 challenge's HFEN (float64).

    ``g = exp(-r^2 / (2 sigma^2))`` on the integer offsets ``-(size-1)/2 ... (size-1)/2`` (values
    below ``eps * max`` set to 0, as MATLAB's ``fspecial``), normalised to sum 1; then
    ``h = g * (r^2 - 3 sigma^2) / sigma^4`` shifted by its mean so that it sums to 0.

    Parameters
    ----------
    size : odd int
        Width in voxels (default 15).
    sigma : float
        Standard deviation in voxels (default 1.5).
    """
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    half = (int(size) - 1) // 2
    t = np.arange(-half, half + 1, dtype=np.float64)
    r2 = t[:, None, None] ** 2 + t[None, :, None] ** 2 + t[None, None, :] ** 2
    s2 = float(sigma) ** 2
    g = np.exp(-r2 / (2.0 * s2))
    g[g < np.finfo(np.float64).eps * g.max()] = 0.0
    g /= g.sum()
    h = g * (r2 - 3.0 * s2) / s2**2
    return h - h.sum() / h.size


def hfen(x, reference, mask=None):
    """High-frequency error norm in % (2016 QSM challenge).

    Both masked maps are filtered by :func:`log_kernel` (15^3 voxels, sigma 1.5 voxels) by
    correlation with zero padding beyond the array (MATLAB ``imfilter``'s default), then
    ``100 * ||LoG(x*m) - LoG(y*m)|| / ||LoG(y*m)||`` over the whole filtered arrays. The kernel is
    symmetric, so the correlation is a convolution, done with FFTs.

    Parameters and raises as :func:`rmse`; returns a float in %.

    References
    ----------
    Ravishankar S, Bresler Y. IEEE Trans Med Imaging. 2011;30:1028-1041. Langkammer C et al.
    Magn Reson Med. 2018;79:1661-1673.
    """
    xm, ym, m = _pair(x, reference, mask)
    return _hfen(xm, ym, m)


def _bbox(m, margin):
    """Slices of the mask's bounding box grown by ``margin`` voxels (clipped to the array)."""
    out = []
    for axis, n in enumerate(m.shape):
        idx = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != axis)))
        out.append(slice(max(idx[0] - margin, 0), min(idx[-1] + 1 + margin, n)))
    return tuple(out)


def _hfen(xm, ym, m):
    k = log_kernel()
    half = k.shape[0] // 2
    # The masked maps are zero outside the mask, so their filtered versions vanish farther than
    # the kernel's half width from it: the norms over the box grown by that width are exact.
    box = _bbox(m, half)
    xm, ym = xm[box], ym[box]
    # Linear filter: LoG(x) - LoG(y) = LoG(x - y). Zero padding by the kernel's width makes the
    # circular FFT convolution equal the linear one; both maps share the kernel's spectrum.
    shape = padded_shape(xm.shape, np.subtract(k.shape, 1))
    kf = rfft(k, shape)
    crop = tuple(slice(half, half + n) for n in xm.shape)
    norms = []
    for a in (xm - ym, ym):
        f = fft_convolve(a, kf, shape=shape)
        norms.append(np.linalg.norm(f[crop].ravel()))
    if norms[1] == 0:
        raise ValueError("reference has no high-frequency content inside the mask: HFEN is undefined")
    return float(100.0 * norms[0] / norms[1])


def gaussian_window(half_width=SSIM_HALF_WIDTH, sigma=SSIM_SIGMA):
    """The 1D factor of the challenges' SSIM window: ``exp(-t^2 / (2 sigma^2))`` on
    ``t = -half_width ... half_width``, normalised to sum 1. The 3D window (7 x 7 x 7 by
    default) is its outer product with itself along the three axes."""
    t = np.arange(-int(half_width), int(half_width) + 1, dtype=np.float64)
    w = np.exp(-(t**2) / (2.0 * float(sigma) ** 2))
    return w / w.sum()


def _smooth(a, w):
    """Separable correlation with ``w`` along every axis, zero padding (MATLAB ``convn 'same'``)."""
    for axis in range(a.ndim):
        a = ndimage.correlate1d(a, w, axis=axis, mode="constant", cval=0.0)
    return a


def _moments(x, y, m):
    """Windowed first and second moments of two masked float64 maps at the mask's voxels (1D
    arrays), and the window's own sum ``n`` there (below 1 within 3 voxels of the array's faces,
    because of the zero padding).

    Only the mask's bounding box grown by the window's half width is filtered: the moments at
    the mask's voxels depend on nothing farther away.
    """
    w = gaussian_window()
    box = _bbox(m, w.size // 2)
    x, y, mb = x[box], y[box], m[box]
    ones = [ndimage.correlate1d(np.ones(n), w, mode="constant")[b] for n, b in zip(m.shape, box)]
    n = ones[0][:, None, None] * ones[1][None, :, None] * ones[2][None, None, :]
    return {"x": _smooth(x, w)[mb], "y": _smooth(y, w)[mb], "xx": _smooth(x * x, w)[mb],
            "yy": _smooth(y * y, w)[mb], "xy": _smooth(x * y, w)[mb], "n": n[mb]}


def _ssim_from_moments(mo, *, k1, k2, data_range, shift=0.0, scale=1.0):
    """Mean over the mask of the SSIM map of ``(x - shift) * scale`` and ``(y - shift) * scale``.

    The windowed moments of the affinely rescaled maps follow from those of the maps (the
    filter is linear), so SSIM and XSIM share one set of five filterings.
    """
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    a, n = shift, mo["n"]
    mu1 = scale * (mo["x"] - a * n)
    mu2 = scale * (mo["y"] - a * n)
    s2 = scale * scale
    ex2 = s2 * (mo["xx"] - 2.0 * a * mo["x"] + a * a * n)
    ey2 = s2 * (mo["yy"] - 2.0 * a * mo["y"] + a * a * n)
    exy = s2 * (mo["xy"] - a * (mo["x"] + mo["y"]) + a * a * n)
    mu12 = mu1 * mu2
    mu1 *= mu1
    mu2 *= mu2
    # The three-factor form of compute_xsim reduces to this one for unit exponents.
    num = (2.0 * mu12 + c1) * (2.0 * (exy - mu12) + c2)
    den = (mu1 + mu2 + c1) * ((ex2 - mu1) + (ey2 - mu2) + c2)
    return float(np.mean(num / den))


def _ssim(xm, ym, mo):
    lo = min(xm.min(), ym.min())
    hi = max(xm.max(), ym.max())
    if hi == lo:
        return 1.0  # both maps are the same constant: identical images
    return _ssim_from_moments(mo, k1=0.01, k2=0.03, data_range=255.0, shift=lo,
                              scale=255.0 / (hi - lo))


def _xsim(mo):
    return _ssim_from_moments(mo, k1=0.01, k2=0.001, data_range=1.0)


def ssim(x, reference, mask=None):
    """Structural similarity, 2016 QSM challenge style (``compute_ssim``).

    Both masked maps are rescaled jointly to [0, 255] (``(v - min) * 255 / (max - min)`` with the
    min and max over both arrays), then SSIM with a Gaussian window of sigma 1.5 voxels on
    7 x 7 x 7 (zero padding beyond the array), K = (0.01, 0.03), L = 255, and the SSIM map is
    averaged over the mask. Identical maps give 1.

    Parameters and raises as :func:`rmse`; returns a float (at most 1).

    References
    ----------
    Wang Z et al. IEEE Trans Image Process. 2004;13:600-612. Langkammer C et al. Magn Reson Med.
    2018;79:1661-1673.
    """
    xm, ym, m = _pair(x, reference, mask)
    return _ssim(xm, ym, _moments(xm, ym, m))


def xsim(x, reference, mask=None):
    """XSIM: the SSIM of the 2019 QSM challenge 2.0 (``compute_xsim``).

    No rescaling (maps in ppm), L = 1, K = (0.01, 0.001) (the small K2 makes it sensitive to
    streaking), Gaussian window of sigma 1.5 voxels on 7 x 7 x 7, mean over the mask.

    Parameters and raises as :func:`rmse`; returns a float (at most 1).

    References
    ----------
    Marques JP et al. QSM reconstruction challenge 2.0. Magn Reson Med. 2021;86:526-542. QSM
    Challenge 2.0 Organization Committee. Magn Reson Med. 2021;86:1241-1255. Milovic C et al.
    XSIM: a structural similarity index measure optimized for MRI QSM. Magn Reson Med. 2024,
    doi:10.1002/mrm.30271.
    """
    xm, ym, m = _pair(x, reference, mask)
    return _xsim(_moments(xm, ym, m))


def correlation(x, reference, mask=None):
    """Pearson's correlation coefficient of the voxel values inside the mask.

    Returns ``nan`` when either map is constant inside the mask (the coefficient is undefined).
    """
    xm, ym, m = _pair(x, reference, mask)
    return _correlation(xm, ym, m)


def _correlation(xm, ym, m):
    a = xm[m]
    b = ym[m]
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / den) if den > 0 else float("nan")


def region_mae(x, reference, labels):
    """Mean absolute error per label (e.g. grey/white matter, deep grey nuclei).

    Parameters
    ----------
    x, reference : (X, Y, Z) arrays
        Maps (ppm).
    labels : (X, Y, Z) integer array
        Label map; 0 is background and is skipped.

    Returns
    -------
    dict
        ``{label: mean |x - reference| over the label's voxels}`` in the maps' unit, sorted by
        label.

    Raises
    ------
    ValueError
        If the shapes differ, labels are not integers, or no voxel carries a non-zero label.
    """
    a = as_volume(x, "x", dtype=np.float64)
    b = as_volume(reference, "reference", dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x and reference must have the same shape, got {a.shape} and {b.shape}")
    lab = as_volume(labels, "labels", dtype=None)
    if lab.shape != a.shape:
        raise ValueError(f"labels must have the shape of the maps {a.shape}, got {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer) and not np.all(np.equal(np.mod(lab, 1), 0)):
        raise ValueError("labels must hold integer values")
    lab = lab.astype(np.int64, copy=False).ravel()
    sel = lab != 0
    if not sel.any():
        raise ValueError("labels has no non-zero label")
    lab = lab[sel]
    offset = lab.min()  # negative labels are allowed: shift to non-negative bins
    idx = lab - offset
    counts = np.bincount(idx)
    sums = np.bincount(idx, weights=np.abs(a - b).ravel()[sel])
    ids = np.flatnonzero(counts)
    return {int(i + offset): float(sums[i] / counts[i]) for i in ids}


def compute_metrics(x, reference, mask, *, labels=None):
    """Every metric of this module at once.

    Parameters
    ----------
    x, reference : (X, Y, Z) arrays
        The map under test and the reference (ppm).
    mask : (X, Y, Z) array
        Region of evaluation (non-zero voxels).
    labels : (X, Y, Z) integer array, optional
        Label map for :func:`region_mae` (restricted to the mask).

    Returns
    -------
    dict
        Keys ``rmse``, ``nrmse_demeaned``, ``hfen`` (%), ``ssim``, ``xsim``, ``correlation``, and
        ``regions`` (``{label: MAE in ppm}``) when ``labels`` is given.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(size=(16, 16, 16)); m = np.ones(y.shape, bool)
    >>> d = compute_metrics(y, y, m)
    >>> d["rmse"], round(d["ssim"], 6), round(d["correlation"], 6)
    (0.0, 1.0, 1.0)
    """
    xm, ym, m = _pair(x, reference, mask)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != xm.shape:
            raise ValueError(f"labels must have the shape of the maps {xm.shape}, got {labels.shape}")
    mo = _moments(xm, ym, m)
    out = {
        "rmse": _relative_error(xm, ym),
        "nrmse_demeaned": _nrmse_demeaned(xm, ym, m),
        "hfen": _hfen(xm, ym, m),
        "ssim": _ssim(xm, ym, mo),
        "xsim": _xsim(mo),
        "correlation": _correlation(xm, ym, m),
    }
    if labels is not None:
        out["regions"] = region_mae(xm, ym, np.where(m, labels, 0))
    return out
