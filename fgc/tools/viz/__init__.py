"""`fgc viz`: pictures of a plan. Where losses sit, how they replicate, where noise enters,
where gradients stop and which parameters learn how.

* :mod:`~fgc.tools.viz.facts`: what a drawing says about a plan (labels, live sites, what
  each loss trains), shared by both drawings;
* :mod:`~fgc.tools.viz.dot`: the Graphviz picture as DOT text (:func:`to_dot`);
* :mod:`~fgc.tools.viz.files`: :func:`render` to ``.dot``, ``.svg``, ``.png``, ``.pdf``;
* :mod:`~fgc.tools.viz.page`: the interactive page, one self-contained ``.html`` with every
  algorithm's view (:func:`write_page`).
"""

from fgc.tools.viz.dot import Html, html, quote, to_dot
from fgc.tools.viz.facts import BLOCKS_PER_ROW, describe_estimator, op_label, replication_text
from fgc.tools.viz.files import FORMATS, render
from fgc.tools.viz.page import page_data, page_html, write_page

__all__ = ["BLOCKS_PER_ROW", "FORMATS", "Html", "describe_estimator", "html", "op_label",
           "page_data", "page_html", "quote", "render", "replication_text", "to_dot",
           "write_page"]
