"""From files to masks: weights lookup and download, image reading, preprocessing,
inference, post-processing, rendering, face cropping and the :class:`FaceSegmenter`
that ties them together. The commands (``cli``, ``convert``, ``export``) sit on top."""
