"""Evaluation: `spinquant.eval.perplexity.perplexity` (fixed token windows) and
`spinquant.eval.harness.zeroshot` (lm-eval's zero-shot tasks, answered by our model)."""
