"""Random model-parameter tables and tables to models, as photutils.datasets."""

from __future__ import annotations

import numpy as np
from astropy.table import QTable

from crowdphot.core.validate import deprecated_positional

__all__ = ["make_random_models_table", "params_table_to_models"]


@deprecated_positional("seed")
def make_random_models_table(n_sources, param_ranges, *, seed=None):
    """Table of ``n_sources`` rows with parameters drawn uniformly from ``param_ranges``.

    Parameters
    ----------
    n_sources : int
        Number of rows.
    param_ranges : dict of str to (low, high)
        Column name -> uniform range, drawn in the dict's order.
    seed : int, numpy.random.Generator or None, optional
        Random seed.

    Returns
    -------
    table : `~astropy.table.QTable`
        Columns ``id`` (1-based) and one per ``param_ranges`` key.

    Examples
    --------
    >>> tbl = make_random_models_table(3, {'x_0': (0, 10), 'flux': (1, 2)}, seed=0)
    >>> tbl.colnames
    ['id', 'x_0', 'flux']
    """
    rng = np.random.default_rng(seed)
    table = QTable()
    table["id"] = np.arange(int(n_sources)) + 1
    for name, (low, high) in param_ranges.items():
        table[name] = rng.uniform(low, high, int(n_sources))
    return table


def params_table_to_models(params_table, model):
    """One copy of ``model`` per table row, with the matching parameters set from the row.

    A ``name`` column, when present, names each model.

    Parameters
    ----------
    params_table : `~astropy.table.Table`
        Columns named as model parameters (others are ignored).
    model : `~astropy.modeling.Model`
        The template model (left unchanged).

    Returns
    -------
    models : list of `~astropy.modeling.Model`

    Examples
    --------
    >>> from astropy.modeling.models import Gaussian2D
    >>> tbl = QTable({'x_mean': [1.0, 2.0]})
    >>> [m.x_mean.value for m in params_table_to_models(tbl, Gaussian2D())]
    [np.float64(1.0), np.float64(2.0)]
    """
    names = [n for n in params_table.colnames if n in model.param_names]
    if not names:
        raise ValueError("No matching model parameter names found in params_table")
    has_name = "name" in params_table.colnames
    models = []
    for row in params_table:
        new = model.copy()
        for name in names:
            setattr(new, name, row[name])
        if has_name:
            new.name = row["name"]
        models.append(new)
    return models
