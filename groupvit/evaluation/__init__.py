"""Zero-shot evaluation: benchmark datasets, mIoU metrics and the evaluation loop."""
