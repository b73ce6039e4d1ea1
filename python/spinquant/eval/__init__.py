"""Evaluation: `spinquant.eval.perplexity.perplexity` (fixed token windows) and
`spinquant.eval.zeroshot.zeroshot` (multiple-choice accuracy as lm-eval defines it)."""
