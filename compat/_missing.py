"""Stand-in for a photutils name that crowdphot does not provide (copied into the build).

The import rewrite binds every name it cannot resolve in crowdphot (a private photutils
attribute, or a public name outside crowdphot's scope) to a :class:`Missing` object, so a
test module still imports and only the tests that *use* the name fail. Attribute access and
calls chain to further stand-ins (so module-level setup does not break collection); any other
use raises :class:`MissingName`. Every touch is recorded, and the build's conftest turns a
test that touched a stand-in and still passed into a failure, so a stand-in never counts as a
pass.
"""

touched = set()


class MissingName(Exception):
    """A photutils name that crowdphot does not provide was used."""


def _fail(self, *args, **kwargs):
    touched.add(self._compat_name)
    raise MissingName(f"{self._compat_name} is not provided by crowdphot")


class Missing:
    def __init__(self, name):
        object.__setattr__(self, "_compat_name", name)
        touched.add(name)

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return Missing(f"{self._compat_name}.{attr}")

    def __call__(self, *args, **kwargs):
        return Missing(f"{self._compat_name}()")

    def __mro_entries__(self, bases):
        touched.add(self._compat_name)
        return (_MissingBase,)

    def __repr__(self):
        return f"<missing in crowdphot: {self._compat_name}>"

    __setattr__ = __getitem__ = __setitem__ = __iter__ = __len__ = __bool__ = _fail
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _fail
    __truediv__ = __rtruediv__ = __array__ = __float__ = __int__ = __index__ = _fail
    __enter__ = __exit__ = __neg__ = __pow__ = __matmul__ = _fail
    __hash__ = object.__hash__


class _MissingBase:
    """Base substituted for a missing base class: every test in the subclass fails."""

    def __getattr__(self, attr):
        touched.add(f"base of {type(self).__name__}")
        raise MissingName(f"base class of {type(self).__name__} is not provided by crowdphot")


def missing(name):
    return Missing(name)
