"""What every layer of seespeaker shares: the error base (``errors``), atomic file writes (``files``), image
conversions and grids (``images``) and mp4 reading and writing (``media``). It imports nothing of the project."""
