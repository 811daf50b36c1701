"""The notebook end to end: simulate, find, group, fit, model/residual, compare with the truth.

``run_demo`` is what ``crowdphot demo`` and ``make demo`` run. It reproduces the STScI
"PSF photometry basics" notebook with the built-in JWST-like F200W grid: every step is timed,
the long ones show a progress bar, and the products (catalogs, FITS images, figures) land in one
folder with an ``index.html`` that shows them on one page.
"""

from __future__ import annotations

import html
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "summarize_match", "format_summary", "DEMO_FILES"]

#: Data products written by every demo run (figures come on top unless ``plots=False``).
DEMO_FILES = ("catalog.ecsv", "truth.ecsv", "image.fits", "model.fits", "residual.fits",
              "summary.json")

# the notebook's choices
_FLUX_RANGE = (500, 20_000)
_MIN_SEPARATION = 25
_NOISE_SIGMA = 0.5
_THRESHOLD = 6.0
_FINDER_FWHM = 3.0
_FIT_SHAPE = (5, 5)
_APERTURE_RADIUS = 5
_GROUP_SEPARATION = 35
_MATCH_SEPARATION = 1.0


@contextmanager
def _step(timings, name, echo):
    if echo:
        echo(f"- {name} ...")
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def _col(table, name):
    c = table[name]
    return np.asarray(getattr(c, "value", c), dtype=float)


def summarize_match(matched, n_truth, n_found):
    """Summary numbers of a fit catalog matched to its truth table.

    Parameters
    ----------
    matched : Table
        Output of :func:`crowdphot.match_catalogs` (truth ``x_0, y_0, flux``; fit
        ``x_fit, y_fit, flux_fit``).
    n_truth, n_found : int
        Sizes of the truth table and of the fit catalog.

    Returns
    -------
    summary : dict
        ``n_truth``, ``n_found``, ``n_matched`` and, when anything matched,
        ``flux_bias_pct`` (median of ``(fit - true) / true`` in percent),
        ``flux_scatter_pct`` (1.4826 x its median absolute deviation) and ``pos_rms_px``
        (root mean square of the 2D position error in pixels).

    Examples
    --------
    >>> from astropy.table import QTable
    >>> m = QTable({'x_0': [0.0, 5.0], 'y_0': [0.0, 5.0], 'flux': [100.0, 200.0],
    ...             'x_fit': [0.3, 5.0], 'y_fit': [0.4, 5.0], 'flux_fit': [101.0, 202.0]})
    >>> s = summarize_match(m, 3, 2)
    >>> s['n_matched'], round(s['flux_bias_pct'], 3), round(s['pos_rms_px'], 4)
    (2, 1.0, 0.3536)
    """
    out = {"n_truth": int(n_truth), "n_found": int(n_found), "n_matched": int(len(matched))}
    if len(matched) == 0:
        return out
    d = (_col(matched, "flux_fit") - _col(matched, "flux")) / _col(matched, "flux") * 100
    dx = _col(matched, "x_fit") - _col(matched, "x_0")
    dy = _col(matched, "y_fit") - _col(matched, "y_0")
    med = float(np.median(d))
    out.update({
        "flux_bias_pct": med,
        "flux_scatter_pct": float(1.4826 * np.median(np.abs(d - med))),
        "pos_rms_px": float(np.sqrt(np.mean(dx**2 + dy**2))),
    })
    return out


def format_summary(summary):
    """Human-readable lines for a :func:`run_demo` summary dict.

    Examples
    --------
    >>> print(format_summary({'n_truth': 3, 'n_found': 2, 'n_matched': 2,
    ...                       'timings': {'fit': 0.5}}))
    sources: 3 true, 2 found, 2 matched within 1 px
      fit                                         0.500 s
      total                                       0.500 s
    """
    lines = [f"sources: {summary.get('n_truth', '?')} true, {summary.get('n_found', '?')} "
             f"found, {summary.get('n_matched', '?')} matched within {_MATCH_SEPARATION:g} px"]
    if "n_groups" in summary:
        lines.append(f"groups: {summary['n_groups']} (largest: {summary['max_group_size']} "
                     "stars)")
    if "flux_bias_pct" in summary:
        lines.append(f"flux: median bias {summary['flux_bias_pct']:+.4f}%, robust scatter "
                     f"{summary['flux_scatter_pct']:.4f}%")
        lines.append(f"position: rms error {summary['pos_rms_px']:.4f} px")
    timings = summary.get("timings", {})
    for name, t in timings.items():
        lines.append(f"  {name:<40s} {t:8.3f} s")
    if timings:
        lines.append(f"  {'total':<40s} {sum(timings.values()):8.3f} s")
    return "\n".join(lines)


def _largest_group_zoom(x, y, group_ids, shape, half=100):
    """``(xmin, xmax, ymin, ymax)`` of a ``2 * half`` box around the largest group."""
    ids, counts = np.unique(group_ids, return_counts=True)
    pick = group_ids == ids[np.argmax(counts)]
    cx, cy = float(np.mean(x[pick])), float(np.mean(y[pick]))
    half = min(half, max(shape) / 4)
    return (cx - half, cx + half, cy - half, cy + half)


def _demo_figures(out, data, model, residual, table, groups, matched, psf, radius,
                  progress_bar):
    from crowdphot.viz.figures import (
        plot_data_model_residual,
        plot_detections,
        plot_fit_vs_truth,
        plot_flux_difference,
        plot_groups,
    )

    x, y = _col(table, "x_init"), _col(table, "y_init")
    zoom = _largest_group_zoom(x, y, groups, data.shape)
    n_groups = len(np.unique(groups))
    figs = [
        ("detections.png", "Simulated image with the detected stars circled",
         lambda: plot_detections(data, x, y, radius=radius)),
        ("groups.png", f"Stars grouped within {_GROUP_SEPARATION} px: {n_groups} groups, "
                       "one random colour per group",
         lambda: plot_groups(data, x, y, groups, radius=radius)),
        ("groups_zoom.png", "Close-up of the largest group",
         lambda: plot_groups(data, x, y, groups, radius=radius, zoom=zoom, figsize=(6, 6),
                             title="Close-up of the largest group")),
        ("psf_grid.png", "The 4 x 4 grid of ePSFs (built-in JWST-like NIRCam F200W)",
         lambda: psf.plot_grid(vmax_scale=0.1, figsize=(9, 9))),
        ("psf_grid_deltas.png", "Differences of each ePSF from the grid mean",
         lambda: psf.plot_grid(deltas=True, figsize=(9, 9))),
        ("data_model_residual.png", "Data, fitted model and residual",
         lambda: plot_data_model_residual(data, model, residual)),
        ("data_model_residual_zoom.png", "Data, model and residual around the largest group",
         lambda: plot_data_model_residual(data, model, residual, zoom=zoom)),
        ("fit_vs_truth.png", "Fitted against true positions and fluxes",
         lambda: plot_fit_vs_truth(matched)),
        ("flux_difference.png", "Histogram of the percent flux differences",
         lambda: plot_flux_difference(matched)),
    ]
    from tqdm.auto import tqdm

    from crowdphot.io.fits import atomic_write

    done = []
    for name, caption, make in tqdm(figs, desc="Figures", disable=not progress_bar):
        fig = make()
        with atomic_write(out / name) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        done.append((name, caption))
    return done


_LABELS = {"n_truth": "simulated stars", "n_found": "stars found",
           "n_matched": f"matched within {_MATCH_SEPARATION:g} px",
           "flux_bias_pct": "flux bias, median (fit - true) / true [%]",
           "flux_scatter_pct": "flux scatter, robust σ [%]",
           "pos_rms_px": "position error, rms [pixel]",
           "n_groups": f"groups ({_GROUP_SEPARATION} px)", "max_group_size": "largest group",
           "fit_mode": "fit mode"}


def _write_index(out, summary, timings, figures, files):
    from crowdphot.io.fits import atomic_write

    esc = html.escape
    stats = "".join(f"<tr><td>{esc(_LABELS.get(k, k))}</td><td>{v:.4g}</td></tr>"
                    if isinstance(v, float) else
                    f"<tr><td>{esc(_LABELS.get(k, k))}</td><td>{esc(str(v))}</td></tr>"
                    for k, v in summary.items())
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v:.3f} s</td></tr>" for k, v in timings.items())
    figs = "".join(f'<figure><a href="{esc(f)}"><img src="{esc(f)}" alt="{esc(c)}"></a>'
                   f"<figcaption>{esc(c)}</figcaption></figure>" for f, c in figures)
    links = "".join(f'<li><a href="{esc(f)}">{esc(f)}</a></li>' for f in files)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>crowdphot demo</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}}
table{{border-collapse:collapse;margin:0 2em 1em 0;display:inline-table;vertical-align:top}}
th,td{{border:1px solid #ccc;padding:3px 10px;text-align:left}}
figure{{display:inline-block;margin:1em;vertical-align:top;max-width:640px}}
img{{max-width:640px;border:1px solid #ddd}} figcaption{{font-size:90%;color:#444}}
</style></head><body>
<h1>crowdphot demo: PSF photometry of a simulated JWST/NIRCam F200W field</h1>
<p>The STScI <em>PSF photometry basics</em> notebook end to end: simulate stars with the built-in
JWST-like ePSF grid, add noise, find, group, fit, build model and residual images, and match
the fit to the truth.</p>
<table><tr><th colspan=2>Result</th></tr>{stats}</table>
<table><tr><th colspan=2>Step timings</th></tr>{rows}</table>
<h2>Figures</h2>{figs}
<h2>Files</h2><ul>{links}</ul></body></html>
"""
    with atomic_write(out / "index.html") as tmp:
        tmp.write_text(page, encoding="utf-8")


def run_demo(out="demo_output", *, n_sources=500, seed=0, grouped=False, shape=(2048, 2048),
             echo=print, plots=True, progress_bar=None):
    """Run the notebook end to end and write its products into ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder (created).
    n_sources : int
        Number of simulated stars (> 0).
    seed : int
        Seed for positions, fluxes and noise.
    grouped : bool
        Fit stars within 35 px of each other jointly, as in the notebook's grouped example.
    shape : (ny, nx)
        Image shape (the built-in grid spans a 2048 x 2048 detector).
    echo : callable or None
        Where progress lines and the summary go (None: silent).
    plots : bool
        Write the PNG figures.
    progress_bar : bool, optional
        Show progress bars on the long steps; default: when ``echo`` is given.

    Returns
    -------
    summary : dict
        :func:`summarize_match` numbers, ``n_groups``/``max_group_size`` and the per-step
        ``timings`` in seconds.

    Examples
    --------
    >>> import tempfile
    >>> s = run_demo(tempfile.mkdtemp(), n_sources=20, shape=(256, 256), echo=None,
    ...              plots=False)  # doctest: +SKIP
    >>> s['n_matched']  # doctest: +SKIP
    20
    """
    from astropy.table import QTable

    from crowdphot import (
        IRAFStarFinder,
        PSFPhotometry,
        SourceGrouper,
        jwst_like_psf_grid,
        make_noise_image,
        make_psf_model_image,
        match_catalogs,
    )
    from crowdphot.io.fits import write_fits_image, write_table

    if int(n_sources) <= 0:
        raise ValueError(f"n_sources must be positive, got {n_sources}")
    if plots:  # fail before the run, not after it
        from crowdphot.core.optional import require_matplotlib

        require_matplotlib("crowdphot demo's figures (--no-plots skips them)")
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be (ny, nx) with both >= 32, got {shape}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    show = echo is not None if progress_bar is None else bool(progress_bar)
    timings = {}
    with _step(timings, "PSF grid (built-in JWST-like F200W)", echo):
        psf = jwst_like_psf_grid()
    with _step(timings, "simulate stars", echo):
        data, truth = make_psf_model_image(shape, psf, int(n_sources), flux=_FLUX_RANGE,
                                           min_separation=_MIN_SEPARATION, seed=seed,
                                           progress_bar=show)
    with _step(timings, "add noise", echo):
        data = data + make_noise_image(shape, mean=0, stddev=_NOISE_SIGMA, seed=seed)
        error = np.sqrt(np.abs(data))
        # the notebook's error is 0 where the image is exactly 0; keep weights finite
        error = np.where(error > 0, error, _NOISE_SIGMA)
    with _step(timings, "find stars", echo):
        stars = IRAFStarFinder(threshold=_THRESHOLD, fwhm=_FINDER_FWHM)(data)
    if stars is None or len(stars) == 0:
        raise ValueError("the demo found no stars; try more --n-sources")
    init = QTable({"id": np.asarray(stars["id"]), "x_init": _col(stars, "x_centroid"),
                   "y_init": _col(stars, "y_centroid")})
    with _step(timings, "group stars", echo):
        groups = SourceGrouper(_GROUP_SEPARATION)(_col(init, "x_init"), _col(init, "y_init"))
    groups = np.asarray(groups, dtype=np.int64)
    if grouped:
        init["group_id"] = groups
    with _step(timings, "PSF fit", echo):
        phot = PSFPhotometry(psf, _FIT_SHAPE, aperture_radius=_APERTURE_RADIUS,
                             progress_bar=show, group_warning_threshold=10**9)
        result = phot.run(data, error=error, init_params=init)
    table = result.results
    with _step(timings, "model and residual images", echo):
        model = np.asarray(getattr(m := result.make_model_image(shape), "value", m))
        residual = data - model
    with _step(timings, "match to truth", echo):
        matched = match_catalogs(truth, table, separation=_MATCH_SEPARATION)
    summary = summarize_match(matched, len(truth), len(table))
    _, sizes = np.unique(groups, return_counts=True)
    summary["n_groups"] = int(sizes.size)
    summary["max_group_size"] = int(sizes.max())
    summary["fit_mode"] = "grouped" if grouped else "one star at a time"
    with _step(timings, "write catalogs and images", echo):
        write_table(table, out / "catalog.ecsv")
        write_table(truth, out / "truth.ecsv")
        write_fits_image(data, out / "image.fits")
        write_fits_image(model, out / "model.fits")
        write_fits_image(residual, out / "residual.fits")
    figures = []
    if plots:
        radius = float(np.clip(max(shape) / 100.0, 6.0, 20.0))
        with _step(timings, "figures", echo):
            figures = _demo_figures(out, data, model, residual, table, groups, matched, psf,
                                    radius, show)
    result_stats = dict(summary)
    summary["timings"] = timings
    from crowdphot.io.fits import atomic_write

    with atomic_write(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    _write_index(out, result_stats, timings, figures, list(DEMO_FILES))
    if echo is not None:
        echo(format_summary(summary))
        echo(f"outputs in {out}/ (open {out / 'index.html'})")
    return summary
