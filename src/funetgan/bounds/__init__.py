"""Bounds on what inputs may ask for, checked before any work: the memory a setting or a file's
header implies, and settings values read from YAML with bounded depth and aliases."""
