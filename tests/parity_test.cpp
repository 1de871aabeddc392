// PyTorch parity (written next).
