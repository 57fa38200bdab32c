"""The model outside Python: an ONNX graph checked against JAX, a bioimage.io model package, and
the ONNX Runtime backend of predict. Needs the `export` extra (pip install -e '.[export]').

  onnx_export.py        a model (config + variables) -> an ONNX graph and the JSON beside it
  onnx_backend.py       an exported graph as predict's segmenter (ONNX Runtime)
  bioimageio_package.py the graph as a bioimage.io model package (rdf.yaml, test tensors, ...)
"""
