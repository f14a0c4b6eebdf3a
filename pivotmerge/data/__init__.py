"""Data sources (one adapter each) and the dataset builder that writes them as HF datasets on disk."""
