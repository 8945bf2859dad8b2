"""Turns MLflow runs into results tables and plots.

runs     load_runs / load_curves: tidy pandas frames from an MLflow store (ReportError)
stats    variant_table (seeds pooled, paired tests vs a baseline, Holm) and factor_table, each
         comparison with its verdict (`verdicts`: worse, better, equivalent within a margin, or
         undecided with the seeds that would decide it)
plots    matplotlib figures of both tables and of the learning curves
report   write_report and the `python -m analysis.report` / `lenet5-report` command
ablation.ipynb walks through the same steps.
"""
