"""What is neither the pipeline nor a benchmark: the PyTorch reference procedure, the model
summary and the weight-file importer. The pipeline never imports from here."""
