"""Training time only (PyTorch): fine-tune the embedder on labelled question pairs, calibrate
its similarity threshold, and measure both on pairs it never trained on."""
