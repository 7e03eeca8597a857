"""``python -m face_segmentation_pytorch.label``: see :mod:`face_segmentation_pytorch.label.command`."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
