"""Readers (and converters) for weights saved by foreign frameworks.

- :mod:`.caffe`: ``.caffemodel`` files, read from the protobuf wire format.
"""
