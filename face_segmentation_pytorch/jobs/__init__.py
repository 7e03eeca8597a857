"""Jobs and their engines, below the commands: the folder job (:mod:`.folder`,
its settings in :mod:`.settings`, the local engine in :mod:`.local`; Ray in
:mod:`face_segmentation_pytorch.pipeline.ray_engine`)."""
