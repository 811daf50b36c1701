"""The notebook end to end: simulate, find, group, fit, model/residual, compare with the truth.

``run_demo`` is what ``crowdphot demo`` and ``make demo`` run; every step is timed and shown with
a progress bar, and the outputs land in one folder with an ``index.html`` that shows them.
"""

from __future__ import annotations

import html
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "summarize_match"]


@contextmanager
def _step(timings, name, echo):
    t0 = time.perf_counter()
    if echo:
        echo(f"- {name} ...")
    yield
    timings[name] = time.perf_counter() - t0


def summarize_match(matched, n_truth, n_found):
    """Summary numbers of a fit catalog matched to its truth table.

    Returns
    -------
    dict with n_truth, n_found, n_matched, flux_bias_pct (median of (fit-true)/true),
    flux_scatter_pct (1.4826 * MAD), pos_rms_px (rms of the 2D position error).
    """
    def col(name):
        c = matched[name]
        return np.asarray(getattr(c, "value", c), dtype=float)

    if len(matched) == 0:
        return {"n_truth": n_truth, "n_found": n_found, "n_matched": 0}
    d = (col("flux_fit") - col("flux")) / col("flux") * 100
    dx = col("x_fit") - col("x_0")
    dy = col("y_fit") - col("y_0")
    med = float(np.median(d))
    return {
        "n_truth": int(n_truth),
        "n_found": int(n_found),
        "n_matched": int(len(matched)),
        "flux_bias_pct": med,
        "flux_scatter_pct": float(1.4826 * np.median(np.abs(d - med))),
        "pos_rms_px": float(np.sqrt(np.mean(dx**2 + dy**2))),
    }


def _write_index(out, summary, timings, figures, files):
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f} s</td></tr>"
                   for k, v in timings.items())
    stats = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.5g}</td></tr>"
                    if isinstance(v, float) else
                    f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
                    for k, v in summary.items())
    figs = "".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(t)}">'
                   f"<figcaption>{html.escape(t)}</figcaption></figure>" for f, t in figures)
    links = "".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>' for f in files)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>crowdphot demo</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}}
table{{border-collapse:collapse;margin:0 2em 1em 0;display:inline-table;vertical-align:top}}
td{{border:1px solid #ccc;padding:3px 10px}} figure{{display:inline-block;margin:1em;
vertical-align:top}} img{{max-width:600px;border:1px solid #ddd}}</style></head><body>
<h1>crowdphot demo: PSF photometry of a simulated NIRCam F200W field</h1>
<table><tr><th colspan=2>Result</th></tr>{stats}</table>
<table><tr><th colspan=2>Step timings</th></tr>{rows}</table>
<h2>Figures</h2>{figs}<h2>Files</h2><ul>{links}</ul></body></html>"""
    (out / "index.html").write_text(page)


def run_demo(out="demo_output", *, n_sources=500, seed=0, grouped=False, shape=(2048, 2048),
             echo=print, plots=True):
    """Run the notebook end to end and write its products into ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder (created).
    n_sources : int
        Number of simulated stars.
    seed : int
        Seed for positions, fluxes and noise.
    grouped : bool
        Group neighbours within 35 px and fit them jointly.
    shape : (ny, nx)
        Image shape.
    echo : callable or None
        Where progress lines go.

    Returns
    -------
    summary : dict
        Matching statistics and per-step timings (``timings`` key).

    Examples
    --------
    >>> import tempfile
    >>> s = run_demo(tempfile.mkdtemp(), n_sources=20, shape=(256, 256), echo=None,
    ...              plots=False)  # doctest: +SKIP
    """
    from . import (
        IRAFStarFinder,
        PSFPhotometry,
        SourceGrouper,
        jwst_like_psf_grid,
        make_noise_image,
        make_psf_model_image,
        match_catalogs,
    )
    from .fitsio import write_fits_image, write_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    show = echo is not None
    with _step(timings, "PSF grid (built-in JWST-like F200W)", echo):
        psf = jwst_like_psf_grid()
    with _step(timings, "simulate stars", echo):
        data, truth = make_psf_model_image(tuple(shape), psf, n_sources, flux=(500, 20_000),
                                           min_separation=25, seed=seed, progress_bar=show)
    with _step(timings, "add noise", echo):
        data = data + make_noise_image(data.shape, mean=0, stddev=0.5, seed=seed)
        error = np.sqrt(np.abs(data))
        error = np.where(error > 0, error, 0.5)
    finder = IRAFStarFinder(threshold=6.0, fwhm=3.0)
    grouper = SourceGrouper(35) if grouped else None
    with _step(timings, "find + group + fit", echo):
        phot = PSFPhotometry(psf, (5, 5), finder=finder, grouper=grouper, aperture_radius=5,
                             progress_bar=show)
        result = phot.run(data, error=error)
    table = result.results
    with _step(timings, "model and residual images", echo):
        model = result.make_model_image(data.shape)
        residual = data - model
    with _step(timings, "match to truth", echo):
        matched = match_catalogs(truth, table, separation=1.0)
    summary = summarize_match(matched, len(truth), len(table))
    if grouped:
        summary["n_groups"] = int(len(np.unique(np.asarray(table["group_id"]))))
    with _step(timings, "write outputs", echo):
        write_table(table, out / "catalog.ecsv")
        write_table(truth, out / "truth.ecsv")
        write_fits_image(data, out / "image.fits")
        write_fits_image(model, out / "model.fits")
        write_fits_image(residual, out / "residual.fits")
    figures = []
    if plots:
        with _step(timings, "figures", echo):
            figures = _demo_figures(out, data, model, residual, table, matched, psf)
    files = ["catalog.ecsv", "truth.ecsv", "image.fits", "model.fits", "residual.fits"]
    summary["timings"] = timings
    _write_index(out, {k: v for k, v in summary.items() if k != "timings"}, timings, figures,
                 files)
    if show:
        echo(format_summary(summary))
        echo(f"outputs in {out}/ (open {out}/index.html)")
    return summary


def _demo_figures(out, data, model, residual, table, matched, psf):
    from .plotting import (
        plot_data_model_residual,
        plot_detections,
        plot_fit_vs_truth,
        plot_flux_difference,
        plot_groups,
    )

    x = np.asarray(table["x_init"])
    y = np.asarray(table["y_init"])
    figs = [
        ("detections.png", "Image with detections circled",
         lambda: plot_detections(data, x, y, radius=20)),
        ("groups.png", "Groups (one random colour per group)",
         lambda: plot_groups(data, x, y, np.asarray(table["group_id"]), radius=20)),
        ("psf_grid.png", "The PSF grid", lambda: psf.plot_grid(vmax_scale=0.1, figsize=(9, 9))),
        ("psf_grid_deltas.png", "PSF grid deltas from the mean",
         lambda: psf.plot_grid(deltas=True, figsize=(9, 9))),
        ("data_model_residual.png", "Data, model and residual",
         lambda: plot_data_model_residual(data, model, residual)),
        ("fit_vs_truth.png", "Fit minus truth", lambda: plot_fit_vs_truth(matched)),
        ("flux_difference.png", "Histogram of flux differences",
         lambda: plot_flux_difference(matched)),
    ]
    done = []
    for name, title, make in figs:
        fig = make()
        fig.savefig(out / name, dpi=90)
        done.append((name, title))
    return done


def format_summary(summary):
    """Human-readable lines for a demo/phot summary dict."""
    lines = [f"sources: {summary.get('n_truth', '?')} true, {summary.get('n_found', '?')} "
             f"found, {summary.get('n_matched', '?')} matched within 1 px"]
    if "n_groups" in summary:
        lines.append(f"groups: {summary['n_groups']}")
    if "flux_bias_pct" in summary:
        lines.append(f"flux: median bias {summary['flux_bias_pct']:+.4f}%, robust scatter "
                     f"{summary['flux_scatter_pct']:.4f}%")
        lines.append(f"position: rms error {summary['pos_rms_px']:.4f} px")
    for name, t in summary.get("timings", {}).items():
        lines.append(f"  {name:<40s} {t:8.3f} s")
    return "\n".join(lines)
