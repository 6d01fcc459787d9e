"""The README's result tables (``make results``) and the demo (``make demo``): scripts above the framework,
not installed with it, imported by nothing of it."""
