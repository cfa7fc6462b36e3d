"""The experiment pipeline: config in, stages, evaluation, results table out.

config        base_config (every default), smoke shrinking
specs         the ConfigDict read once into typed frozen specs
config_checks validation of the specs before anything compiles
context       task preparation, tokenizer, up-front data checks, progress
data_checks   fields, forms and lengths of the task data
sft_stage     models as data: build + SFT, or restore a previous run's
distill_stage one distillation run, its hooks and evaluation
evaluation    greedy accuracy and avg@k under a verifier; rollout reward
report        the results table
runner        run_experiment: the whole staged, resumable experiment
analysis      per-token statistics for notebooks
"""
