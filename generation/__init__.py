"""Speech -> portrait -> video -> mp4: the exported stages composed for ``seespeaker generate`` and evaluation.

Tensors flow between the steps (float, [-1, 1]); uint8 exists only where a PNG or an mp4 is written. A sampler
that belongs to one stage (the motion stage's frame rendering) stays with its stage in ``lightning_modules``.
"""
