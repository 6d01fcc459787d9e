"""Imported by the preparation pool's fork server: loads dlib's face models once, before any worker is
forked, so that every worker shares them (copy-on-write) instead of reading the 100 MB model itself."""
from datamodules.prepare import faces, process  # noqa: F401  (process: what the workers run)

faces.models()
faces.versions()
