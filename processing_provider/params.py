"""What every parameter declaration shares, below the algorithms' base class and their shared code."""
from __future__ import annotations


def with_help(param, text: str):
    """``param`` with ``text`` as its help (the dialog's tooltip on the parameter).

    Labels stay short enough to be read whole in the parameter panel (QGIS does not wrap them);
    what a label used to say in brackets goes here and into the algorithm's help.
    """
    param.setHelp(text)
    return param
