"""Scans: volume outputs in the scan's geometry, DICOM SEG / Parametric Map, the MOOD challenge layout."""
