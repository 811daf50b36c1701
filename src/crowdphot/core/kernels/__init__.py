"""Compiled kernels, one implementation each, all C built at install time (``_native``).

``detect`` (finder convolution and peaks), ``overlap`` (circle/annulus pixel weights and sums),
``spline`` (blended bicubic ePSF evaluation), ``scatter`` (rendering), ``greedy`` (matching and
minimum-separation thinning), ``normal`` (the fitting engine's normal-matrix blocks), ``pairs``
(fixed-radius neighbour pairs and friends-of-friends groups). The C sources are in ``_src``;
``crowdphot.core.jit`` loads the extension and sets its thread count.
"""
