"""The elliptical Moffat profile integrated over the pixel, and its fit to one star's stamp.

:func:`fit_moffat` fits ``I = A (1 + dx' Q dx)^-beta + c`` (free centre, amplitude, shape
matrix ``Q``, ``beta`` and local background), sampled on an ``os x os`` grid per pixel and
averaged so that the model is integrated over each pixel, by Levenberg-Marquardt with an
analytic Jacobian. The :class:`StarFit` it returns holds the FWHM along the major and minor
axes (``2 sqrt((2^(1/beta) - 1) / lambda)``, ``lambda`` an eigenvalue of ``Q``) and the
position angle. Which stars are fitted, and what is made of the fits, is
:mod:`skygrade.transforms.psf_measure`.

Pure numpy: no Beam, no sep, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StarFit", "fit_moffat"]


@dataclass(frozen=True)
class StarFit:
    """One star's elliptical Moffat fit (pixels, degrees)."""

    fwhm_major: float
    fwhm_minor: float
    theta_deg: float
    beta: float
    x: float
    y: float

    @property
    def fwhm(self) -> float:
        return math.sqrt(self.fwhm_major * self.fwhm_minor)

    @property
    def ellipticity(self) -> float:
        return 1.0 - self.fwhm_minor / self.fwhm_major


def _model(p: np.ndarray, dx: np.ndarray, dy: np.ndarray, jac: bool):
    """Pixel-integrated elliptical Moffat and (optionally) its Jacobian.

    ``p = [x0, y0, amp, qa, qb, qc, beta, bg]``; ``dx, dy`` are the sub-pixel sample offsets
    (shape (os^2, n_pix)) from the stamp origin; averaging over the first axis integrates.
    """
    x0, y0, amp, qa, qb, qc, beta, bg = p
    ux, uy = dx - x0, dy - y0
    d = 1.0 + (qa * ux * ux + qb * ux * uy + qc * uy * uy)
    dpow = d**-beta
    m_pow = dpow.mean(axis=0)
    model = amp * m_pow + bg
    if not jac:
        return model, None
    g = (-amp * beta) * dpow / d  # d model / d r2 at each sample
    gu, gv = g * ux, g * uy
    m_gu, m_gv = gu.mean(axis=0), gv.mean(axis=0)
    cols = [
        -(2 * qa * m_gu + qb * m_gv),
        -(qb * m_gu + 2 * qc * m_gv),
        m_pow,
        (gu * ux).mean(axis=0),
        (gu * uy).mean(axis=0),
        (gv * uy).mean(axis=0),
        -amp * (dpow * np.log(d)).mean(axis=0),
        np.ones(dx.shape[1]),
    ]
    return model, np.stack(cols, axis=1)


def _valid(p: np.ndarray) -> bool:
    _, _, amp, qa, qb, qc, beta, _ = p
    return bool(amp > 0 and qa > 0 and qc > 0 and 4 * qa * qc > qb * qb and 1.05 < beta < 25)


def fit_moffat(stamp: np.ndarray, fwhm_guess: float, os_: int = 1) -> StarFit | None:
    """Fit an elliptical pixel-integrated Moffat to a star centred in ``stamp``.

    Levenberg-Marquardt with an analytic Jacobian, unweighted (the model is unbiased at any
    weighting; uniform weights are robust to a wrong gain). Returns None when the fit fails
    or lands outside sane bounds (centre moved > 2 px, FWHM outside 0.5 px-3x the guess).
    """
    n = stamp.shape[0]
    c = (n - 1) / 2.0
    sub = (np.arange(os_) + 0.5) / os_ - 0.5
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    sx, sy = np.meshgrid(sub, sub)
    dx = (xx.reshape(1, -1) - c) + sx.reshape(-1, 1)
    dy = (yy.reshape(1, -1) - c) + sy.reshape(-1, 1)
    data = stamp.reshape(-1).astype(np.float64)
    good = np.isfinite(data)
    if good.sum() < 20:
        return None
    dx, dy, data = dx[:, good], dy[:, good], data[good]
    beta0 = 3.0
    q0 = (2 ** (1 / beta0) - 1) / (max(fwhm_guess, 1.0) / 2.0) ** 2
    peak = float(np.max(stamp[int(c) - 1 : int(c) + 2, int(c) - 1 : int(c) + 2]))
    p = np.array([0.0, 0.0, max(peak, 1e-6), q0, 0.0, q0, beta0, 0.0])
    model, jac = _model(p, dx, dy, True)
    resid = data - model
    chi2 = float(resid @ resid)
    lam = 1e-3
    for _ in range(60):
        jtj = jac.T @ jac
        jtr = jac.T @ resid
        diag = np.diag(jtj).copy()
        diag[diag <= 0] = 1e-12
        try:
            step = np.linalg.solve(jtj + lam * np.diag(diag), jtr)
        except np.linalg.LinAlgError:
            return None
        trial = p + step
        if _valid(trial):
            m2, _ = _model(trial, dx, dy, False)
            r2 = data - m2
            c2 = float(r2 @ r2)
        else:
            c2 = math.inf
        if c2 < chi2:
            converged = (chi2 - c2) < 1e-6 * chi2
            p, resid, chi2 = trial, r2, c2
            if converged:
                break
            _, jac = _model(p, dx, dy, True)
            lam = max(lam / 3.0, 1e-7)
        else:
            lam *= 4.0
            if lam > 1e8:
                break
    x0, y0, _, qa, qb, qc, beta, _ = p
    if abs(x0) > 2 or abs(y0) > 2:
        return None
    evals, evecs = np.linalg.eigh(np.array([[qa, qb / 2], [qb / 2, qc]]))
    if evals[0] <= 0:
        return None
    half = 2 ** (1 / beta) - 1
    major = 2.0 * math.sqrt(half / evals[0])
    minor = 2.0 * math.sqrt(half / evals[1])
    if not (0.5 < minor <= major < 4.0 * max(fwhm_guess, 1.0) + 2.0):
        return None
    vx, vy = evecs[:, 0]  # the major axis: smallest curvature
    theta = math.degrees(math.atan2(vy, vx))
    theta = (theta + 90.0) % 180.0 - 90.0
    return StarFit(major, minor, theta, float(beta), c + x0, c + y0)
