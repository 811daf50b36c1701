"""Figure of the likelihood benchmark: flux bias and scatter / Cramér–Rao bound against S/N.

Same conventions as :mod:`crowdphot.viz.figures` (matplotlib object API, returns the Figure).
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_likelihood_summary"]

_STYLE = {"gaussian": ("tab:red", "s", "least squares, weights sqrt(data + R²)"),
          "poisson": ("tab:blue", "o", "maximum likelihood (Poisson + read noise)")}


def plot_likelihood_summary(rows, *, title=None):
    """Bias, scatter/CRLB and pull width per flux level, one line per likelihood.

    Parameters
    ----------
    rows : list of dict
        One dict per (likelihood, flux level) with keys ``likelihood`` ('gaussian' or
        'poisson'), ``snr`` (flux / flux CRLB, the x axis), ``bias`` and ``bias_se`` (median
        relative flux bias and its standard error, in %), ``sd_flux``, ``sd_x`` (scatter /
        CRLB) and ``pull_flux`` (std of (fit - true) / error); ``pull_x`` is drawn when
        every row has it.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> rows = [{'likelihood': 'poisson', 'snr': s, 'bias': 0.0, 'bias_se': 0.1,
    ...          'sd_flux': 1.0, 'sd_x': 1.0, 'pull_flux': 1.0} for s in (5, 50)]
    >>> fig = plot_likelihood_summary(rows)  # doctest: +SKIP
    """
    from crowdphot.viz.figures import _figure

    fig = _figure((11, 3.6))
    axes = fig.subplots(1, 3)
    for lik, (color, marker, label) in _STYLE.items():
        sel = sorted((r for r in rows if r["likelihood"] == lik), key=lambda r: r["snr"])
        if not sel:
            continue
        snr = np.array([r["snr"] for r in sel])
        axes[0].errorbar(snr, [r["bias"] for r in sel], yerr=[r["bias_se"] for r in sel],
                         color=color, marker=marker, label=label, capsize=3)
        axes[1].plot(snr, [r["sd_flux"] for r in sel], color=color, marker=marker,
                     label=f"{lik}: flux")
        axes[1].plot(snr, [r["sd_x"] for r in sel], color=color, marker=marker, ls="--",
                     mfc="none", label=f"{lik}: x")
        axes[2].plot(snr, [r["pull_flux"] for r in sel], color=color, marker=marker,
                     label=f"{lik}: flux")
        if all("pull_x" in r for r in sel):
            axes[2].plot(snr, [r["pull_x"] for r in sel], color=color, marker=marker,
                         ls="--", mfc="none", label=f"{lik}: x")
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[0].set_ylabel("median flux bias (%)")
    axes[0].legend(fontsize=7)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].axhline(1.05, color="0.5", lw=0.8, ls=":")
    axes[1].set_ylabel("scatter / Cramér–Rao bound")
    axes[1].legend(fontsize=7)
    axes[2].axhspan(0.95, 1.05, color="0.9")
    axes[2].set_ylabel("pull width: std of (fit − true) / error")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("S/N at the bound (flux / flux CRLB)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
