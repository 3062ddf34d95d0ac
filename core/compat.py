"""Library differences between the Debian releases the plugin runs on, in one place.

- **affine** 3 (Debian sid, QGIS 3.44) deprecates ``*`` for composing transforms and for applying
  one to points (a PendingDeprecationWarning on every use: "Use `@` matmul instead of `*`"); affine
  2.4 (Debian 12 and 13) has no ``@``. :func:`compose` and :func:`apply` work with both, with the
  same arithmetic.
- **shapely** 2.2 (Debian sid) deprecates ``shapely.ops.transform`` (a DeprecationWarning on every
  use) for ``shapely.transform_coordseq``, which earlier shapely (1.8 in Debian 12, 2.1 in 13)
  does not have. :func:`transform_xy` calls whichever this shapely has.
"""
from __future__ import annotations

import operator


def compose(first, *more):
    """``first @ more[0] @ …``: affine transforms composed left to right (affine 2 wrote it ``*``)."""
    product = operator.matmul if hasattr(type(first), "__matmul__") else operator.mul
    for transform in more:
        first = product(first, transform)
    return first


def apply(transform, x, y):
    """``transform @ (x, y)`` for numbers or numpy arrays: affine's own arithmetic, in its order."""
    return x * transform.a + y * transform.b + transform.c, x * transform.d + y * transform.e + transform.f


def transform_xy(func, geometry):
    """``shapely.ops.transform(func, geometry)``: every coordinate through ``func(x, y) -> (x, y)``
    (arrays of x and y; a pyproj ``Transformer.transform`` fits). On shapely 2.2 and later, what
    ``ops.transform`` itself now calls, without its deprecation warning."""
    import shapely

    if hasattr(shapely, "transform_coordseq"):
        return shapely.transform_coordseq(geometry, func, include_z=None, interleaved=False)
    from shapely.ops import transform

    return transform(func, geometry)
