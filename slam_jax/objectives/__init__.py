"""Pre-training objectives: pure functions of model outputs and targets, each returning (loss, metrics).

Losses are means over the positions they score (masked frames, masked tokens, pairs); metrics hold the loss,
accuracies and the counts behind them so they can be aggregated across steps and hosts.
"""
