"""Search over model outputs: `beam_search.py` (sequence-to-sequence beam search with a length penalty; beam 1 is
greedy) and `ctc.py` (CTC decoding)."""
