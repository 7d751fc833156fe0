"""Evaluation: the fine-tuning tasks' evaluation loop (evaler.py), ASR error rates (asr.py), BLEU (bleu.py), GLUE
metrics (glue_metrics.py), cross-modal alignment probes (probes.py) and the `slam-eval` entry point."""
