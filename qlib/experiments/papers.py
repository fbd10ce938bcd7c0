"""Published numbers, for the "paper" rows beside our measurements (never our own results).

Q8BERT (Zafrir et al. 2019, arXiv 1910.06188), Table 1: BERT-base, mean of 5 runs, dev sets, FP32 baseline
and 8-bit QAT, as published in the authors' library documentation (nlp-architect). Metrics in percent: CoLA MCC,
MRPC and QQP F1, QNLI, RTE and SST-2 accuracy, STS-B Pearson, SQuAD v1.1 F1.
"""

Q8BERT_TABLE1 = {
    "cola": {"metric": "mcc", "fp32": 58.48, "qat": 58.48},
    "mrpc": {"metric": "f1", "fp32": 90.00, "qat": 89.56},
    "qnli": {"metric": "accuracy", "fp32": 90.30, "qat": 90.62},
    "qqp": {"metric": "f1", "fp32": 87.84, "qat": 87.96},
    "rte": {"metric": "accuracy", "fp32": 69.70, "qat": 68.78},
    "sst2": {"metric": "accuracy", "fp32": 92.36, "qat": 92.24},
    "stsb": {"metric": "pearson", "fp32": 89.62, "qat": 89.04},
    "squad": {"metric": "f1", "fp32": 88.46, "qat": 87.74},
}

QBERT_CLAIMS = {"weight_compression": 13.0, "max_accuracy_loss_percent": 2.3}
"""Q-BERT (Shen et al. 2020, arXiv 1909.05840): 13× weight compression at ultra-low (2/3-bit MP) precision
within 2.3 % accuracy loss."""

SURVEY_TABLE = {
    "Q8BERT": {"memory vs BERT": "25 %", "inference speed": "N/A", "accuracy": "very close"},
    "Q-BERT": {"memory vs BERT": "7.8 %", "inference speed": "N/A", "accuracy": "slightly worse"},
    "Quant-Noise": {"memory vs BERT": "5 %", "inference speed": "N/A", "accuracy": "worse"},
}
"""The comparison table of the survey this book starts from, as it prints it: memory relative to BERT, inference
speed (N/A: none of the three papers measured it) and accuracy against BERT, in words."""
