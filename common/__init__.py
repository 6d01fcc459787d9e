"""What every layer of seespeaker shares: the error base (``errors``), atomic file writes (``files``), image
conversions and grids (``images``), mp4 reading and writing (``media``) and the words of ``run.resume`` (``resume``). It
imports nothing of the project."""
