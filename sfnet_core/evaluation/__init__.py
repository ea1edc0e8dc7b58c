"""Evaluation: the confusion matrix and its report (``metrics``), and evaluating a checkpoint or
label files (``evaluate``). Uses inference; never imports training."""
