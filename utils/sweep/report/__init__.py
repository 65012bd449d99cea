"""What a study came to: its report, tables, figures and statistics (utils.sweep's top layer)."""
