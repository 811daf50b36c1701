"""QTables that still answer to deprecated column names.

photutils 3 renamed several output columns (``xcentroid`` -> ``x_centroid``, ``npix`` ->
``n_pixels``, ``npixfit`` -> ``n_pixels_fit``, ...) but keeps the old names readable, with an
``AstropyDeprecationWarning``, until 4.0. Code written against the older notebook therefore keeps
working. :class:`DeprecatedColumnQTable` gives crowdphot's tables the same behaviour: the table
stores only the new names; every name-based access (item access, ``in``, sorting, renaming,
removing, grouping, row access) translates an old name to its new one and warns.

Setting ``crowdphot.future_column_names = True`` (or using :func:`use_future_column_names`) makes
the factories return plain :class:`~astropy.table.QTable` objects without the aliases, mirroring
photutils' ``future_column_names`` switch.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from contextvars import ContextVar

from astropy.table import QTable, Row
from astropy.utils.exceptions import AstropyDeprecationWarning

__all__ = [
    "DeprecatedColumnQTable",
    "make_deprecated_qtable",
    "add_deprecated_aliases",
    "future_column_names_enabled",
    "use_future_column_names",
]

_UNSET = object()
_future_override = ContextVar("crowdphot_future_column_names", default=_UNSET)


def future_column_names_enabled():
    """Whether tables should be plain QTables without deprecated aliases.

    A :func:`use_future_column_names` block takes precedence over the module-level flag
    ``crowdphot.future_column_names`` (False when unset).

    Examples
    --------
    >>> future_column_names_enabled()
    False
    """
    value = _future_override.get()
    if value is not _UNSET:
        return bool(value)
    package = sys.modules.get("crowdphot")
    # the package's lazy __getattr__ raises AttributeError for unknown names, so an unset flag
    # reads as False
    return bool(getattr(package, "future_column_names", False))


@contextmanager
def use_future_column_names(enabled=True):
    """Temporarily switch the deprecated-alias tables on or off (context- and thread-safe).

    Examples
    --------
    >>> with use_future_column_names():
    ...     future_column_names_enabled()
    True
    """
    token = _future_override.set(bool(enabled))
    try:
        yield
    finally:
        _future_override.reset(token)


class _AliasRow(Row):
    """Table row whose item access also accepts the deprecated column names."""

    def __getitem__(self, item):
        if isinstance(item, str):
            item = self._table._resolve_name(item, stacklevel=4)
        return super().__getitem__(item)

    def __setitem__(self, item, value):
        if isinstance(item, str):
            item = self._table._resolve_name(item, stacklevel=4)
        super().__setitem__(item, value)


class DeprecatedColumnQTable(QTable):
    """A QTable in which deprecated column names are read-through aliases of the new ones.

    The alias map lives on the instance (``deprecation_map``: old name -> new name) and is carried
    over to slices, copies, pickles and tables built from this one. Any access by an old name
    issues an :class:`~astropy.utils.exceptions.AstropyDeprecationWarning` and then acts on the
    new column. ``colnames`` lists only the new names.

    Build instances with :func:`make_deprecated_qtable` or :func:`add_deprecated_aliases`.

    Examples
    --------
    >>> import warnings
    >>> t = make_deprecated_qtable({'x_centroid': [1.0, 2.0]},
    ...                            deprecation_map={'xcentroid': 'x_centroid'})
    >>> t.colnames
    ['x_centroid']
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter('ignore')
    ...     float(t['xcentroid'][1])
    2.0
    """

    Row = _AliasRow
    deprecation_map = None
    _deprecation_since = None
    _deprecation_until = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        source = args[0] if args else kwargs.get("data")
        if isinstance(source, DeprecatedColumnQTable):
            self._copy_aliases_from(source)

    # -- alias bookkeeping -------------------------------------------------------------------
    def _copy_aliases_from(self, other):
        self.deprecation_map = dict(other.deprecation_map) if other.deprecation_map else None
        self._deprecation_since = other._deprecation_since
        self._deprecation_until = other._deprecation_until
        return self

    def _resolve_name(self, name, stacklevel=3):
        """Return the current name for ``name``, warning when it is a deprecated alias."""
        mapping = self.deprecation_map
        if not mapping or name not in mapping:
            return name
        new = mapping[name]
        since = f" in version {self._deprecation_since}" if self._deprecation_since else ""
        until = (
            f"version {self._deprecation_until}" if self._deprecation_until else "a future version"
        )
        warnings.warn(
            f"Column name {name!r} is deprecated{since} and will stop working in {until}; "
            f"read {new!r} instead. After updating your code, set "
            "crowdphot.future_column_names = True to get plain QTables without the old aliases.",
            AstropyDeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        return new

    def _resolve(self, names, stacklevel=4):
        if isinstance(names, str):
            return self._resolve_name(names, stacklevel=stacklevel)
        if isinstance(names, (list, tuple)):
            return [
                self._resolve_name(n, stacklevel=stacklevel) if isinstance(n, str) else n
                for n in names
            ]
        return names

    # -- name-based access -------------------------------------------------------------------
    def __contains__(self, name):
        if isinstance(name, str):
            return self._resolve_name(name, stacklevel=3) in self.colnames
        return name in self.colnames

    def __getitem__(self, item):
        if isinstance(item, (str, list, tuple)):
            item = self._resolve(item)
        out = super().__getitem__(item)
        if isinstance(out, DeprecatedColumnQTable) and out is not self:
            out._copy_aliases_from(self)
        return out

    def __setitem__(self, item, value):
        if isinstance(item, str):
            item = self._resolve(item)
        super().__setitem__(item, value)

    def __delitem__(self, item):
        if isinstance(item, (str, list, tuple)):
            item = self._resolve(item)
        super().__delitem__(item)

    def keep_columns(self, names):
        super().keep_columns(self._resolve(names))

    def remove_column(self, name):
        super().remove_column(self._resolve(name))

    def remove_columns(self, names):
        super().remove_columns(self._resolve(names))

    def rename_column(self, name, new_name):
        super().rename_column(self._resolve(name), new_name)

    def rename_columns(self, names, new_names):
        super().rename_columns(self._resolve(names), new_names)

    def replace_column(self, name, col, **kwargs):
        super().replace_column(self._resolve(name), col, **kwargs)

    def add_index(self, colnames, *args, **kwargs):
        super().add_index(self._resolve(colnames), *args, **kwargs)

    def remove_indices(self, colname):
        super().remove_indices(self._resolve(colname))

    def sort(self, keys=None, **kwargs):
        super().sort(self._resolve(keys), **kwargs)

    def group_by(self, keys):
        out = super().group_by(self._resolve(keys))
        if isinstance(out, DeprecatedColumnQTable):
            out._copy_aliases_from(self)
        return out

    # -- copies and pickles keep the aliases ----------------------------------------------------
    def copy(self, copy_data=True):
        out = super().copy(copy_data=copy_data)
        return out._copy_aliases_from(self)

    def _new_from_slice(self, slice_):
        return super()._new_from_slice(slice_)._copy_aliases_from(self)

    def __getstate__(self):
        aliases = (self.deprecation_map, self._deprecation_since, self._deprecation_until)
        return super().__getstate__(), aliases

    def __setstate__(self, state):
        base, (mapping, since, until) = state
        super().__setstate__(base)
        self.deprecation_map = mapping
        self._deprecation_since = since
        self._deprecation_until = until


def add_deprecated_aliases(table, deprecation_map, *, since="3.0", until="4.0"):
    """Return ``table`` as a :class:`DeprecatedColumnQTable` answering to old column names.

    The columns are shared with ``table`` (no data copy). When future column names are enabled
    (``crowdphot.future_column_names = True``) a plain QTable is returned instead.

    Parameters
    ----------
    table : `~astropy.table.Table`
        Table holding the new column names.
    deprecation_map : dict of str to str
        Maps each deprecated name to the column it now reads.
    since, until : str or None, optional
        Versions quoted in the warning message.

    Returns
    -------
    table : DeprecatedColumnQTable or `~astropy.table.QTable`

    Examples
    --------
    >>> from astropy.table import QTable
    >>> t = add_deprecated_aliases(QTable({'n_pixels': [3]}), {'npix': 'n_pixels'})
    >>> type(t).__name__
    'DeprecatedColumnQTable'
    """
    if not isinstance(deprecation_map, dict):
        raise TypeError(f"deprecation_map must be a dict, got {type(deprecation_map).__name__}")
    if future_column_names_enabled():
        return table if type(table) is QTable else QTable(table, copy=False)
    out = DeprecatedColumnQTable(table, copy=False)
    out.deprecation_map = dict(deprecation_map)
    out._deprecation_since = since
    out._deprecation_until = until
    return out


def make_deprecated_qtable(data=None, *, deprecation_map, since="3.0", until="4.0", **kwargs):
    """Build a new QTable (from ``data`` and ``kwargs`` as QTable does) with deprecated aliases.

    Parameters
    ----------
    data : dict, list or None, optional
        Column data under the *new* names; None gives an empty table to fill column by column.
    deprecation_map : dict of str to str
        Maps each deprecated name to the column it now reads.
    since, until : str or None, optional
        Versions quoted in the warning message.
    **kwargs
        Passed to the QTable constructor (``names``, ``meta``, ...).

    Returns
    -------
    table : DeprecatedColumnQTable or `~astropy.table.QTable`

    Examples
    --------
    >>> t = make_deprecated_qtable(deprecation_map={'pa': 'orientation'})
    >>> t['orientation'] = [10.0]
    >>> 'orientation' in t
    True
    """
    if not isinstance(deprecation_map, dict):
        raise TypeError(f"deprecation_map must be a dict, got {type(deprecation_map).__name__}")
    if future_column_names_enabled():
        return QTable(data, **kwargs)
    out = DeprecatedColumnQTable(data, **kwargs)
    out.deprecation_map = dict(deprecation_map)
    out._deprecation_since = since
    out._deprecation_until = until
    return out
