"""Network architectures, one module each, and their exact fast CPU kernels.

- :mod:`.fcn8s`: the Caffe-exact FCN-8s (VGG-16) of Nirkin et al. (2018).
- :mod:`.banded`, :mod:`.kernels`: the FCN-8s inference fast path (banded
  trunk, Winograd 3x3 convolutions, fc layers as one matrix product).
"""
