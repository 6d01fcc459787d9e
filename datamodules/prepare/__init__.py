"""Dataset preparation: real corpora (HDTF, VoxCeleb2, AVSpeech) on disk -> WebDataset shards.

``listing`` finds the source items of a corpus, ``media`` decodes them at 25 fps / 16 kHz, ``faces``
tracks the face and its 68 landmarks, ``align`` cuts a stable aligned crop, ``runner`` drives the
process pool, and ``manifest`` records each source and the shards that hold its clips.
"""
