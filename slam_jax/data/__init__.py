"""Data half: audio decoding, log-mel features, seqio tasks and the one-stream converter."""
