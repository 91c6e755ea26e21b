"""Sphinx configuration: numpydoc API reference, sphinx-gallery tutorials from examples/, furo theme."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the gallery examples run in this process: one thread unless the caller says otherwise (torch starts as
# many as cores, which oversubscribes a machine shared with other jobs; read when torch is imported)
os.environ.setdefault("OMP_NUM_THREADS", "1")

project = "trisolve"
author = "the trisolve developers"
copyright = "2026, the trisolve developers"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.json"]
html_theme = "furo"
html_title = "trisolve"
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_validation_checks = set()
numpydoc_xref_param_type = False
suppress_warnings = ["config.cache"]
nitpicky = False



def _tight_matplotlib_scraper(block, block_vars, gallery_conf, **kwargs):
    """sphinx-gallery's matplotlib scraper, saving figures without white margins."""
    from sphinx_gallery.scrapers import matplotlib_scraper

    return matplotlib_scraper(block, block_vars, gallery_conf, bbox_inches="tight", pad_inches=0.05, **kwargs)


sphinx_gallery_conf = {
    "image_scrapers": (_tight_matplotlib_scraper,),
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "abort_on_example_error": True,
}
