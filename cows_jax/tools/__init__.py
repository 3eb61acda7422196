"""What is not the pipeline: benchmarks, the PyTorch reference procedure, the model summary and
the weight-file importer. The pipeline never imports from here."""
