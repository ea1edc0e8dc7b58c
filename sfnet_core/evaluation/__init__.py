"""Evaluation: the confusion matrix and its report (``metrics``), scoring a checkpoint or label
files (``scoring``), and the report as people read it (``report_text``). Uses inference; never
imports training."""
