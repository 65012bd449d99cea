"""What the analysis scripts share: a checkpoint's data, predictions and measurements
(tools.py, re-exported here), feature maps (features.py), runs on disk (runs.py), the results
table (report.py) and tool arguments and output paths (toolargs.py)."""
from utils.analysis.tools import (OutputsAsTuple, checkpoint_data_dir, checkpoint_loader, checkpoint_test_data,
                    confusion_figure, confusion_matrix, count_macs, count_parameters,
                    file_size_mb, predict_logits, time_latency, time_throughput)

__all__ = ["checkpoint_test_data", "checkpoint_data_dir", "checkpoint_loader", "predict_logits",
           "confusion_matrix", "confusion_figure", "count_parameters", "count_macs",
           "time_latency", "time_throughput", "OutputsAsTuple", "file_size_mb"]
