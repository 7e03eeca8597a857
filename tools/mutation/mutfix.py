"""pytest plugin for the mutation run only: single-threaded OpenCV and torch,
so forked test processes cannot inherit a dead thread pool."""

import cv2
import torch

cv2.setNumThreads(0)
torch.set_num_threads(1)
