"""`make bench`: measured speed ratios (never run as tests). Each entry point calls
`colorizer.runtime.setup_process()` before torch loads, as the commands do."""
