"""Baseline merge methods: one pure function per file, each registered under its name."""
